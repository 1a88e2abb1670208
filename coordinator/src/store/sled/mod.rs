//! The embedded store, in sled: one directory, no server. Its reads and
//! writes work in sled's page cache and are quick; only flushes wait for
//! the disk, and they run on the store's own thread ([`commit`]).

use std::path::Path;

use async_trait::async_trait;
use gantry_shared::{messages::LogLine, AgentName, AppName, EnvName, JobId};

mod commit;
mod export;
mod logs;
mod trust;

use super::{Durable, IssuedCert, JobQuery, Refusal, Run, Store, StoreError};
use crate::{
    audit::AuditEntry,
    job::{AgentRecord, JobRecord},
    release::ReleaseRecord,
};

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(Box::new(e))
    }
}

/// The database and its trees.
pub struct SledStore {
    /// Job id (big-endian) -> JSON [`JobRecord`].
    jobs: sled::Tree,
    /// The logs, one tree of runs (see [`logs`]).
    logs: logs::Logs,
    /// Agent name -> JSON [`AgentRecord`].
    agents: sled::Tree,
    /// app NUL env NUL number (big-endian) -> JSON [`ReleaseRecord`], so a
    /// prefix scan returns one (app, env)'s releases in order.
    releases: sled::Tree,
    /// "apps" / "environments" -> a readable dump of the configured values;
    /// "next_job_id" -> the job id counter.
    config: sled::Tree,
    /// The audit trail, certificates and redeemed join tokens.
    trust: trust::Trust,
    /// Flushes what is written.
    commit: commit::Committer,
}

/// The key of the job id counter in the config tree.
const JOB_COUNTER: &str = "next_job_id";

fn release_prefix(app: &AppName, env: &EnvName) -> Vec<u8> {
    // Names never contain NUL, so the prefix of one (app, env) is never the
    // prefix of another's.
    format!("{app}\0{env}\0").into_bytes()
}

fn decode_json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

fn decode_job(key: &str, bytes: &[u8]) -> Result<JobRecord, StoreError> {
    crate::job::legacy::decode(bytes).map_err(|e| StoreError::Decode {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir).map_err(|e| match e {
            // sled says so only in its message.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked(dir.display().to_string())
            }
            e => StoreError::from(e),
        })?;
        Ok(Self {
            jobs: db.open_tree("jobs")?,
            logs: logs::Logs::open(&db)?,
            agents: db.open_tree("agents")?,
            releases: db.open_tree("releases")?,
            config: db.open_tree("config")?,
            trust: trust::Trust::open(&db)?,
            commit: commit::Committer::start(db).map_err(|e| StoreError::Engine(Box::new(e)))?,
        })
    }

    /// Applies `write` (unless a commit failed) and returns its durability.
    fn write<T>(
        &self,
        write: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<(T, Durable), StoreError> {
        self.commit.check()?;
        let value = write()?;
        Ok((value, self.commit.written()))
    }

    fn insert(
        &self,
        tree: &sled::Tree,
        key: impl AsRef<[u8]>,
        value: Vec<u8>,
    ) -> Result<Durable, StoreError> {
        let (_, durable) = self.write(|| Ok(tree.insert(key.as_ref(), value)?))?;
        Ok(durable)
    }
}

#[async_trait]
impl Store for SledStore {
    async fn next_job_id(&self) -> Result<JobId, StoreError> {
        // sled's own generate_id jumps by a million after a restart;
        // operators read these numbers, so keep a plain counter instead.
        // It asks for no commit of its own: an id is first seen in its
        // job's record, and the commit that makes the record durable
        // holds the counter too.
        self.commit.check()?;
        let next = self.config.update_and_fetch(JOB_COUNTER, |old| {
            let n = old.map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        let bytes = next.expect("update_and_fetch always stores a value");
        let id = u64::from_be_bytes(bytes.as_ref().try_into().expect("counter is 8 bytes"));
        Ok(JobId::new(id).expect("the counter starts at 1"))
    }

    async fn put_job(&self, job: &JobRecord) -> Result<Durable, StoreError> {
        let bytes = serde_json::to_vec(job).expect("job records serialize");
        self.insert(&self.jobs, job.id.get().to_be_bytes(), bytes)
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        match self.jobs.get(id.get().to_be_bytes())? {
            Some(bytes) => Ok(Some(decode_job(&format!("job {id}"), &bytes)?)),
            None => Ok(None),
        }
    }

    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.jobs.iter().rev() {
            if query.limit.is_some_and(|limit| out.len() >= limit) {
                break;
            }
            let (key, bytes) = entry?;
            let job = decode_job(&format!("job key {key:?}"), &bytes)?;
            if query.wants(&job) {
                out.push(job);
            }
        }
        Ok(out)
    }

    async fn append_logs(
        &self,
        job: JobId,
        lines: Vec<LogLine>,
    ) -> Result<(Option<Run>, Durable), StoreError> {
        self.write(|| self.logs.append(job, lines))
    }

    async fn log_runs(&self, job: JobId, from: u64, limit: u64) -> Result<Vec<Run>, StoreError> {
        self.logs.runs(job, from, limit)
    }

    async fn last_seq(&self, job: JobId) -> Result<u64, StoreError> {
        self.logs.last_seq(job)
    }

    async fn put_agent(&self, agent: &AgentRecord) -> Result<Durable, StoreError> {
        let bytes = serde_json::to_vec(agent).expect("agent records serialize");
        self.insert(&self.agents, agent.name.as_str(), bytes)
    }

    async fn agent(&self, name: &AgentName) -> Result<Option<AgentRecord>, StoreError> {
        match self.agents.get(name.as_str())? {
            Some(bytes) => Ok(Some(decode_json(&format!("agent {name}"), &bytes)?)),
            None => Ok(None),
        }
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents
            .iter()
            .map(|entry| {
                let (key, bytes) = entry?;
                decode_json(&String::from_utf8_lossy(&key), &bytes)
            })
            .collect()
    }

    async fn put_release(&self, release: &ReleaseRecord) -> Result<Durable, StoreError> {
        let mut key = release_prefix(&release.app, &release.env);
        key.extend_from_slice(&release.number.to_be_bytes());
        let bytes = serde_json::to_vec(release).expect("release records serialize");
        self.insert(&self.releases, key, bytes)
    }

    async fn releases(
        &self,
        app: &AppName,
        env: &EnvName,
        limit: Option<usize>,
    ) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.releases
            .scan_prefix(release_prefix(app, env))
            .rev()
            .take(limit.unwrap_or(usize::MAX))
            .map(|entry| {
                let (_, bytes) = entry?;
                decode_json(&format!("release of {app} in {env}"), &bytes)
            })
            .collect()
    }

    async fn put_config_snapshot(&self, key: &str, dump: String) -> Result<Durable, StoreError> {
        self.insert(&self.config, key, dump.into_bytes())
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(u64, Durable), StoreError> {
        self.write(|| self.trust.append_audit(entry))
    }

    async fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, bool), StoreError> {
        self.trust.audit(before, limit)
    }

    async fn enrol(
        &self,
        cert: &IssuedCert,
        nonce: &str,
    ) -> Result<(Result<Vec<IssuedCert>, Refusal>, Durable), StoreError> {
        self.write(|| self.trust.enrol(cert, nonce))
    }

    async fn cert(&self, serial: &str) -> Result<Option<IssuedCert>, StoreError> {
        self.trust.cert(serial)
    }

    async fn certs_of(&self, name: &AgentName) -> Result<Vec<IssuedCert>, StoreError> {
        self.trust.certs_of(name)
    }

    async fn revoke_certs(
        &self,
        name: &AgentName,
        now_ms: i64,
    ) -> Result<(Vec<IssuedCert>, Durable), StoreError> {
        self.write(|| self.trust.revoke_certs(name, now_ms))
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.commit.close().await
    }
}
