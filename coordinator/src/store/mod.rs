//! Durable state in sled: jobs, every log line of every job, agents seen, and
//! a snapshot of the configured apps and environments. This is the only module
//! that knows the storage engine, so it could be changed without touching
//! the rest.

use std::path::Path;

use bytes::Bytes;
use gantry_shared::{messages::LogLine, proto, AgentName, AppName, EnvName, JobId};
use prost::Message;

mod trust;

pub use trust::{IssuedCert, Refusal};

use crate::{
    hub::Run,
    job::{AgentRecord, JobRecord},
    release::ReleaseRecord,
};

/// Storage failures. They map to `Internal`: the caller did nothing wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (disk full, corruption, ...).
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// Another process (a coordinator still stopping) holds the database.
    #[error("the database in {0} is held by another process")]
    Locked(String),
    /// The blocking task doing the store's work panicked or was dropped.
    #[error("storage task failed: {0}")]
    Task(String),
    /// Lines that would leave a gap in a job's log.
    #[error("lines of job {job} must follow seq {after}, but start at {got}")]
    Gap {
        /// The job.
        job: JobId,
        /// Its last stored seq.
        after: u64,
        /// The first new seq offered.
        got: u64,
    },
    /// A line sent again under a stored seq but with other content: the
    /// sender numbered two lines alike, and the stored one is kept.
    #[error(
        "line {seq} of job {job} is stored with other content; the batch is refused \
         (the agent numbered two lines alike)"
    )]
    Conflict {
        /// The job.
        job: JobId,
        /// The first seq whose line differs.
        seq: u64,
    },
    /// A stored record could not be decoded (written by another version?).
    #[error("stored record {key} cannot be decoded: {message}")]
    Decode {
        /// Which record.
        key: String,
        /// Why.
        message: String,
    },
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Job id (big-endian) -> JSON [`JobRecord`].
    jobs: sled::Tree,
    /// Job id ++ last seq of the chunk (both big-endian) -> encoded
    /// [`proto::LogBatch`] of consecutive lines: one write per batch an
    /// agent sends, and a range scan returns one job's lines in order.
    logs: sled::Tree,
    /// The last stored seq of each job written since opening, so appends
    /// need not read it back.
    log_tails: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<JobId, u64>>>,
    /// Agent name -> JSON [`AgentRecord`].
    agents: sled::Tree,
    /// app NUL env NUL number (big-endian) -> JSON [`ReleaseRecord`], so a
    /// prefix scan returns one (app, env)'s releases in order.
    releases: sled::Tree,
    /// "apps" / "environments" -> a readable dump of the configured values;
    /// "next_job_id" -> the job id counter.
    config: sled::Tree,
    /// Audit seq (big-endian) -> JSON [`crate::audit::AuditEntry`]; only
    /// ever appended to.
    audit: sled::Tree,
    audit_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// Certificate serial (hex) -> JSON [`trust::IssuedCert`].
    certs: sled::Tree,
    /// Held by every change to `certs`, so an enrolment's check of the
    /// name's other certificates and its insert are one step.
    cert_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// Nonce of each join token redeemed -> when (ms, big-endian).
    used_tokens: sled::Tree,
}

fn log_key(job: JobId, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&job.get().to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn log_decode_error(job: JobId, e: prost::DecodeError) -> StoreError {
    StoreError::Decode {
        key: format!("log of job {job}"),
        message: e.to_string(),
    }
}

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

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir).map_err(|e| match e {
            // sled says so only in its message.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked(dir.display().to_string())
            }
            e => StoreError::Sled(e),
        })?;
        Ok(Self {
            jobs: db.open_tree("jobs")?,
            logs: db.open_tree("logs")?,
            agents: db.open_tree("agents")?,
            releases: db.open_tree("releases")?,
            log_tails: Default::default(),
            config: db.open_tree("config")?,
            audit: db.open_tree("audit")?,
            audit_lock: Default::default(),
            certs: db.open_tree("certs")?,
            cert_lock: Default::default(),
            used_tokens: db.open_tree("used_tokens")?,
            db,
        })
    }

    /// A new job id, never handed out before (persisted across restarts).
    pub fn next_job_id(&self) -> Result<JobId, StoreError> {
        // sled's own generate_id jumps by a million after a restart; operators
        // read these numbers, so keep a plain counter instead.
        let next = self.config.update_and_fetch("next_job_id", |old| {
            let n = old.map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        let bytes = next.expect("update_and_fetch always stores a value");
        let id = u64::from_be_bytes(bytes.as_ref().try_into().expect("counter is 8 bytes"));
        Ok(JobId::new(id).expect("the counter starts at 1"))
    }

    /// Writes a job record (insert or replace).
    pub fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job).expect("job records serialize");
        self.jobs.insert(job.id.get().to_be_bytes(), bytes)?;
        Ok(())
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        match self.jobs.get(id.get().to_be_bytes())? {
            Some(bytes) => Ok(Some(decode_job(&format!("job {id}"), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = Result<JobRecord, StoreError>> {
        self.jobs.iter().map(|entry| {
            let (key, bytes) = entry?;
            decode_job(&format!("job key {key:?}"), &bytes)
        })
    }

    /// Appends `lines` (consecutive, in seq order) to `job`'s log, leaving
    /// out those already stored; returns the new ones as one run, if any. A
    /// job's log is append-only and gapless, so lines resent after a
    /// reconnect are recognised by their seq and each line is stored exactly
    /// once. A batch that would leave a gap, or that repeats a stored seq
    /// with other content, is refused and changes nothing. Lines are kept
    /// as their `gantry.v1.LogLine` encoding, the form followers are sent.
    pub fn append_logs(&self, job: JobId, lines: Vec<LogLine>) -> Result<Option<Run>, StoreError> {
        let lines: Vec<proto::LogLine> = lines.into_iter().map(Into::into).collect();
        let mut tails = self.log_tails.lock().expect("log tails lock");
        let last = match tails.get(&job) {
            Some(last) => *last,
            None => self.stored_last_seq(job)?,
        };
        let (fresh, resent): (Vec<proto::LogLine>, Vec<proto::LogLine>) =
            lines.into_iter().partition(|l| l.seq > last);
        if let Some(first) = resent.first() {
            let stored = self.logs(job, first.seq, resent.len())?;
            let differs = resent
                .iter()
                .find(|line| stored.iter().any(|s| s.seq == line.seq && s != *line));
            if let Some(line) = differs {
                return Err(StoreError::Conflict { job, seq: line.seq });
            }
        }
        if fresh.is_empty() {
            return Ok(None);
        }
        let contiguous = fresh
            .iter()
            .enumerate()
            .all(|(i, l)| l.seq == last + 1 + i as u64);
        if !contiguous {
            return Err(StoreError::Gap {
                job,
                after: last,
                got: fresh[0].seq,
            });
        }
        let run = Run::of(&fresh);
        self.logs
            .insert(log_key(job, run.last), run.encoded.as_ref())?;
        tails.insert(job, run.last);
        Ok(Some(run))
    }

    /// Up to about `limit` stored lines of `job` with seq >= `from`, in order.
    pub fn logs(
        &self,
        job: JobId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<proto::LogLine>, StoreError> {
        let mut out = Vec::new();
        for run in self.log_runs(job, from, limit as u64)? {
            out.extend(run.lines().map_err(|e| log_decode_error(job, e))?);
        }
        Ok(out)
    }

    /// Stored runs of `job` from seq `from` on, in order, as stored (the
    /// first one cut to start at `from`), until they hold `limit` lines or
    /// more.
    pub fn log_runs(&self, job: JobId, from: u64, limit: u64) -> Result<Vec<Run>, StoreError> {
        // Runs are keyed by their last seq: the first run holding `from` is
        // the first whose key is >= it. The log is gapless, so a run starts
        // just after the one before; only the first one is decoded, to
        // learn where it starts.
        let range = log_key(job, from)..=log_key(job, u64::MAX);
        let mut out: Vec<Run> = Vec::new();
        let mut count = 0;
        for entry in self.logs.range(range) {
            let (key, bytes) = entry?;
            let last = u64::from_be_bytes(key[8..16].try_into().expect("log keys are 16 bytes"));
            let encoded = Bytes::copy_from_slice(&bytes);
            let run = match out.last() {
                Some(before) => Run {
                    first: before.last + 1,
                    last,
                    encoded,
                },
                None => {
                    let lines = proto::LogBatch::decode(encoded)
                        .map_err(|e| log_decode_error(job, e))?
                        .lines;
                    let lines: Vec<_> = lines.into_iter().filter(|l| l.seq >= from).collect();
                    if lines.is_empty() {
                        continue;
                    }
                    Run::of(&lines)
                }
            };
            count += run.lines_count();
            out.push(run);
            if count >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The highest stored seq of `job` (0 when it has no lines).
    pub fn last_seq(&self, job: JobId) -> Result<u64, StoreError> {
        if let Some(last) = self.log_tails.lock().expect("log tails lock").get(&job) {
            return Ok(*last);
        }
        self.stored_last_seq(job)
    }

    fn stored_last_seq(&self, job: JobId) -> Result<u64, StoreError> {
        let range = log_key(job, 0)..=log_key(job, u64::MAX);
        Ok(match self.logs.range(range).next_back() {
            Some(entry) => {
                let (key, _) = entry?;
                u64::from_be_bytes(key[8..16].try_into().expect("log keys are 16 bytes"))
            }
            None => 0,
        })
    }

    /// Writes an agent record.
    pub fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(agent).expect("agent records serialize");
        self.agents.insert(agent.name.as_str(), bytes)?;
        Ok(())
    }

    /// One agent.
    pub fn agent(&self, name: &AgentName) -> Result<Option<AgentRecord>, StoreError> {
        match self.agents.get(name.as_str())? {
            Some(bytes) => Ok(Some(decode_json(&format!("agent {name}"), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every agent ever seen, by name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents
            .iter()
            .map(|entry| {
                let (key, bytes) = entry?;
                decode_json(&String::from_utf8_lossy(&key), &bytes)
            })
            .collect()
    }

    /// Writes a release record.
    pub fn put_release(&self, release: &ReleaseRecord) -> Result<(), StoreError> {
        let mut key = release_prefix(&release.app, &release.env);
        key.extend_from_slice(&release.number.to_be_bytes());
        let bytes = serde_json::to_vec(release).expect("release records serialize");
        self.releases.insert(key, bytes)?;
        Ok(())
    }

    /// The releases of (app, env), newest first.
    pub fn releases(&self, app: &AppName, env: &EnvName) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.releases
            .scan_prefix(release_prefix(app, env))
            .rev()
            .map(|entry| {
                let (_, bytes) = entry?;
                decode_json(&format!("release of {app} in {env}"), &bytes)
            })
            .collect()
    }

    /// The newest release of (app, env).
    pub fn current_release(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<ReleaseRecord>, StoreError> {
        match self
            .releases
            .scan_prefix(release_prefix(app, env))
            .next_back()
        {
            Some(entry) => {
                let (_, bytes) = entry?;
                Ok(Some(decode_json(
                    &format!("release of {app} in {env}"),
                    &bytes,
                )?))
            }
            None => Ok(None),
        }
    }

    /// Records the configured apps and environments (a readable dump, for the record).
    pub fn put_config_snapshot(&self, key: &str, json: Vec<u8>) -> Result<(), StoreError> {
        self.config.insert(key, json)?;
        Ok(())
    }

    /// Flushes everything to disk; call after state changes that must survive
    /// a crash (it blocks, so it runs on the blocking pool).
    pub async fn flush(&self) -> Result<(), StoreError> {
        // sled's own flush on the blocking pool: under load some of its
        // `flush_async` calls were seen not to finish for minutes.
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.flush_blocking()).await {
            Ok(flushed) => flushed,
            Err(e) => Err(StoreError::Task(e.to_string())),
        }
    }

    /// Flushes everything to disk, blocking the calling thread until it
    /// is done: for the blocking pool (see [`crate::Core::audit_durably`]).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
