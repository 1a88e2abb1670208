//! What sled gives up to be copied into another store (see
//! [`crate::store::copy`]): its trees read whole, in key order.

use async_trait::async_trait;
use gantry_shared::{AppName, EnvName, JobId};

use super::{decode_job, SledStore, JOB_COUNTER};
use crate::{
    job::JobRecord,
    store::{copy::Export, IssuedCert, StoreError},
};

/// The error of a key in the releases tree that is not app NUL env NUL
/// number.
fn bad_release_key(key: &[u8], message: String) -> StoreError {
    StoreError::Decode {
        key: format!("release key {}", String::from_utf8_lossy(key)),
        message,
    }
}

/// The (app, env) of a key of the releases tree.
fn release_stream(key: &[u8]) -> Result<(AppName, EnvName), StoreError> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let (Some(app), Some(env), Some(_number)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad_release_key(key, "not app NUL env NUL number".into()));
    };
    let text = |part: &[u8]| {
        String::from_utf8(part.to_vec()).map_err(|e| bad_release_key(key, e.to_string()))
    };
    let app = AppName::new(text(app)?).map_err(|e| bad_release_key(key, e.to_string()))?;
    let env = EnvName::new(text(env)?).map_err(|e| bad_release_key(key, e.to_string()))?;
    Ok((app, env))
}

#[async_trait]
impl Export for SledStore {
    async fn job_counter(&self) -> Result<u64, StoreError> {
        Ok(match self.config.get(JOB_COUNTER)? {
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| StoreError::Decode {
                    key: JOB_COUNTER.into(),
                    message: format!("{} bytes, not 8", bytes.len()),
                })?)
            }
            None => 0,
        })
    }

    async fn jobs_after(&self, after: u64, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.jobs
            .range(first.to_be_bytes()..)
            .take(limit)
            .map(|entry| {
                let (key, bytes) = entry?;
                decode_job(&format!("job key {key:?}"), &bytes)
            })
            .collect()
    }

    async fn logged_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        self.logs.jobs()
    }

    async fn release_streams(&self) -> Result<Vec<(AppName, EnvName)>, StoreError> {
        // Keys are app NUL env NUL number: one stream's keys are adjacent.
        let mut out: Vec<(AppName, EnvName)> = Vec::new();
        for entry in self.releases.iter() {
            let (key, _) = entry?;
            let stream = release_stream(&key)?;
            if out.last() != Some(&stream) {
                out.push(stream);
            }
        }
        Ok(out)
    }

    async fn config_snapshots(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.config.iter() {
            let (key, value) = entry?;
            if &*key == JOB_COUNTER.as_bytes() {
                continue;
            }
            let key = String::from_utf8_lossy(&key).into_owned();
            let dump = String::from_utf8(value.to_vec()).map_err(|e| StoreError::Decode {
                key: format!("config snapshot {key}"),
                message: e.to_string(),
            })?;
            out.push((key, dump));
        }
        Ok(out)
    }

    async fn all_certs(&self) -> Result<Vec<IssuedCert>, StoreError> {
        self.trust.all_certs()
    }

    async fn used_tokens(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.trust.used_tokens()
    }
}
