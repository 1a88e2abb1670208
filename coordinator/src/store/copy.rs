//! Copying a whole store into another: `gantry-coordinator migrate` moves
//! a sled data directory into Postgres, so a team that started on one box
//! keeps its history when it grows.
//!
//! A store that can be copied from implements [`Export`]: beside what the
//! [`Store`] trait reads, it enumerates what the coordinator itself never
//! lists (every release stream, every certificate, the redeemed join
//! tokens, the config snapshots, the job id counter). The destination,
//! [`PgStore::import`], takes everything in one transaction: a copy that
//! fails half-way, or is refused, leaves the database as it was, so it can
//! simply be run again.

use std::{fmt, path::Path};

use async_trait::async_trait;
use gantry_shared::{AppName, EnvName, JobId};

use super::{postgres::PgStore, sled::SledStore, IssuedCert, Store, StoreError};
use crate::job::JobRecord;

/// What a store gives up to be copied, beside what [`Store`] reads. Every
/// list is in a fixed order (by key, byte-wise), so two stores holding the
/// same records export the same lists.
#[async_trait]
pub trait Export: Store {
    /// The highest job id ever handed out (0 when none was), which may be
    /// above the highest stored job's: a copy's ids continue after it.
    async fn job_counter(&self) -> Result<u64, StoreError>;

    /// Up to `limit` jobs with ids above `after`, by id.
    async fn jobs_after(&self, after: u64, limit: usize) -> Result<Vec<JobRecord>, StoreError>;

    /// Every job with a log, by id (a log may outlive its job's record).
    async fn logged_jobs(&self) -> Result<Vec<JobId>, StoreError>;

    /// Every (app, env) with a release, in order.
    async fn release_streams(&self) -> Result<Vec<(AppName, EnvName)>, StoreError>;

    /// Every config snapshot: (key, dump), by key.
    async fn config_snapshots(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Every certificate issued, revoked or not, by serial.
    async fn all_certs(&self) -> Result<Vec<IssuedCert>, StoreError>;

    /// The nonce of every join token redeemed and when (ms), by nonce.
    async fn used_tokens(&self) -> Result<Vec<(String, i64)>, StoreError>;
}

/// Why a copy did not happen. Nothing was changed in either store.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source directory holds no sled database.
    #[error(
        "{0} holds no sled database (no file {0}/conf): give the coordinator's data_dir \
         with --from-sled DIR"
    )]
    NoSource(String),
    /// A running coordinator holds the source.
    #[error(
        "the sled database in {0} is held by a running coordinator: stop it first \
         (migrate copies a database nobody writes to), then run migrate again"
    )]
    SourceInUse(String),
    /// The destination holds records already.
    #[error(
        "the destination already holds {0}: migrate copies only into a database no \
         coordinator has kept records in (create a new, empty database, or drop this one's \
         tables), so nothing was copied"
    )]
    NotEmpty(String),
    /// Reading or writing failed (or a stored record could not be decoded).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many records of each kind a copy moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moved {
    /// Job records.
    pub jobs: u64,
    /// Log lines, of all jobs.
    pub log_lines: u64,
    /// Jobs those lines belong to.
    pub logged_jobs: u64,
    /// Releases, of every (app, env).
    pub releases: u64,
    /// Agents seen.
    pub agents: u64,
    /// Config snapshots.
    pub config_snapshots: u64,
    /// Audit entries, with their seqs.
    pub audit_entries: u64,
    /// Certificates issued ...
    pub certs: u64,
    /// ... of which revoked.
    pub revoked_certs: u64,
    /// Redeemed join tokens.
    pub used_tokens: u64,
    /// The id the destination hands out next.
    pub next_job_id: u64,
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("jobs", self.jobs.to_string()),
            (
                "log lines",
                format!("{} (of {} jobs)", self.log_lines, self.logged_jobs),
            ),
            ("releases", self.releases.to_string()),
            ("agents", self.agents.to_string()),
            ("config snapshots", self.config_snapshots.to_string()),
            ("audit entries", self.audit_entries.to_string()),
            (
                "certificates",
                format!("{} ({} revoked)", self.certs, self.revoked_certs),
            ),
            ("used join tokens", self.used_tokens.to_string()),
        ];
        for (kind, count) in rows {
            writeln!(f, "  {kind:<17} {count}")?;
        }
        write!(f, "the next job id is {}", self.next_job_id)
    }
}

/// Opens the sled database in `dir` to copy from, refusing a directory
/// that holds none (opening would create one) or one a coordinator holds.
pub fn open_sled_source(dir: &Path) -> Result<SledStore, CopyError> {
    if !dir.join("conf").is_file() {
        return Err(CopyError::NoSource(dir.display().to_string()));
    }
    SledStore::open(dir).map_err(|e| match e {
        StoreError::Locked(dir) => CopyError::SourceInUse(dir),
        e => CopyError::Store(e),
    })
}

/// Copies everything `from` holds into `to`, which must hold no records
/// (config snapshots aside: a coordinator writes them as it starts, and
/// they are replaced). One transaction: on any error `to` is unchanged.
pub async fn copy_into_postgres(from: &dyn Export, to: &PgStore) -> Result<Moved, CopyError> {
    to.import(from).await
}

/// How many lines one read of a log asks for (a few MB of a busy build's
/// output), so a long log is copied in pages and never held whole.
pub(crate) const LOG_PAGE_LINES: u64 = 50_000;

/// How many jobs or audit entries one read asks for.
pub(crate) const RECORD_PAGE: usize = 1_000;

/// The records `held` counts as (one, many, count), named for a refusal
/// ("3 jobs, 1 agent"); `None` when it counts none.
pub(crate) fn describe_held(held: &[(&str, &str, i64)]) -> Option<String> {
    let named: Vec<String> = held
        .iter()
        .filter(|(_, _, count)| *count > 0)
        .map(|(one, many, count)| format!("{count} {}", if *count == 1 { one } else { many }))
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
}

#[cfg(test)]
mod tests;
