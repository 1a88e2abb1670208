//! Everything the coordinator keeps, behind one trait: jobs, their logs,
//! releases (each with its environment's branch set), agents seen, the
//! audit trail, enrolment nonces, certificates and their revocations.
//!
//! [`Store`] says what is kept and what each write promises; the engines
//! implement it ([`sled::SledStore`], embedded, the default;
//! [`postgres::PgStore`], for a database the team operates). Nothing
//! outside this module knows an engine.
//!
//! A write returns once it is applied: every read after it sees it. It
//! returns a [`Durable`] that resolves once the write would survive a
//! crash, so a caller acknowledges only what is on disk, while the engine
//! commits many writes at once (the scheduler does not wait for the disk
//! between two deploys, and a batch of an agent's log lines shares one
//! commit with everything written beside it).

use std::{future::Future, pin::Pin, sync::Arc, task::Poll, time::Duration};

use async_trait::async_trait;
use futures::future::BoxFuture;
use gantry_shared::{messages::LogLine, AgentName, AppName, EnvName, JobId};

pub mod copy;
pub mod postgres;
mod records;
mod run;
pub mod sled;

pub use records::{IssuedCert, JobQuery, Refusal};
pub(crate) use run::append;
pub use run::Run;

use crate::{
    audit::AuditEntry,
    job::{AgentRecord, JobRecord},
    release::ReleaseRecord,
};

/// The store the coordinator's parts share.
pub type SharedStore = Arc<dyn Store>;

/// A boxed error of an engine, kept as the source.
pub type EngineError = Box<dyn std::error::Error + Send + Sync>;

/// Storage failures. They map to `Internal`: the caller did nothing wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (disk full, I/O error, corruption, ...).
    #[error("storage error: {0}")]
    Engine(#[source] EngineError),
    /// A commit failed, so writes since the last one may be lost; the
    /// store takes no more (see [`Durable`]).
    #[error("storage error: a commit failed: {0}")]
    Commit(String),
    /// Another process (a coordinator still stopping) holds the database.
    #[error("the database in {0} is held by another process")]
    Locked(String),
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
    /// A write by a coordinator that does not lead: it is a standby, or
    /// stopped leading.
    #[error("this coordinator does not lead, so it writes nothing")]
    NotLeader,
    /// A write by a leader that another has replaced (its lease ran out
    /// while it was paused or cut off): nothing was written.
    #[error("epoch {epoch} no longer leads (another coordinator took over, epoch {newest}); nothing was written")]
    Fenced {
        /// The epoch this coordinator led in.
        epoch: u64,
        /// The newest epoch.
        newest: u64,
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

impl StoreError {
    /// Whether the store itself failed, as opposed to refusing what it
    /// was given (a gap or a conflict in a log): after such a failure what
    /// was offered is not stored and may be offered again.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Engine(_)
                | StoreError::Commit(_)
                | StoreError::Locked(_)
                | StoreError::NotLeader
                | StoreError::Fenced { .. }
        )
    }
}

/// Resolves once a write is durable. Dropping it neither undoes nor
/// cancels the write; it only stops waiting. An error means the commit
/// failed and the write may be lost.
#[must_use = "a write is acknowledged only once it is durable"]
pub struct Durable(BoxFuture<'static, Result<(), StoreError>>);

impl Durable {
    /// Resolves when `commit` does.
    pub fn new(commit: impl Future<Output = Result<(), StoreError>> + Send + 'static) -> Self {
        Self(Box::pin(commit))
    }

    /// Already durable (nothing was written).
    pub fn done() -> Self {
        Self::new(std::future::ready(Ok(())))
    }

    /// Resolves once all of `writes` are durable, or at the first failure.
    pub fn all(writes: Vec<Durable>) -> Self {
        Self::new(async move {
            for write in writes {
                write.await?;
            }
            Ok(())
        })
    }
}

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// What the coordinator keeps. Writes are applied in the order they are
/// called and return a [`Durable`]; reads see every write applied before
/// them.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A new job id, never handed out before. It is durable with the next
    /// write that is (the job's record), so across a crash an id is never
    /// handed out again once a record under it was acknowledged.
    async fn next_job_id(&self) -> Result<JobId, StoreError>;

    /// Writes a job record (insert or replace).
    async fn put_job(&self, job: &JobRecord) -> Result<Durable, StoreError>;

    /// One job.
    async fn job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError>;

    /// The jobs `query` asks for, newest first.
    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError>;

    /// Appends `lines` (consecutive, in seq order) to `job`'s log, leaving
    /// out those already stored; returns the new ones as one run, if any.
    /// A job's log is append-only and gapless, so lines resent after a
    /// reconnect are recognised by their seq and each line is stored
    /// exactly once. A batch that would leave a gap, or that repeats a
    /// stored seq with other content, is refused and changes nothing.
    async fn append_logs(
        &self,
        job: JobId,
        lines: Vec<LogLine>,
    ) -> Result<(Option<Run>, Durable), StoreError>;

    /// Stored runs of `job` from seq `from` on, in order (the first one
    /// cut to start at `from`), until they hold `limit` lines or more.
    async fn log_runs(&self, job: JobId, from: u64, limit: u64) -> Result<Vec<Run>, StoreError>;

    /// The highest stored seq of `job` (0 when it has no lines).
    async fn last_seq(&self, job: JobId) -> Result<u64, StoreError>;

    /// Writes an agent record.
    async fn put_agent(&self, agent: &AgentRecord) -> Result<Durable, StoreError>;

    /// One agent.
    async fn agent(&self, name: &AgentName) -> Result<Option<AgentRecord>, StoreError>;

    /// Every agent ever seen, by name.
    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Writes a release record (insert or replace, by app, env and number).
    async fn put_release(&self, release: &ReleaseRecord) -> Result<Durable, StoreError>;

    /// Up to `limit` releases of (app, env), newest first (all when `None`).
    async fn releases(
        &self,
        app: &AppName,
        env: &EnvName,
        limit: Option<usize>,
    ) -> Result<Vec<ReleaseRecord>, StoreError>;

    /// The newest release of (app, env).
    async fn current_release(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<ReleaseRecord>, StoreError> {
        Ok(self.releases(app, env, Some(1)).await?.pop())
    }

    /// Records a readable dump of the configured apps or environments
    /// under `key`, for whoever reads the database later.
    async fn put_config_snapshot(&self, key: &str, dump: String) -> Result<Durable, StoreError>;

    /// Appends `entry` to the audit trail, numbering it; returns its seq.
    async fn append_audit(&self, entry: AuditEntry) -> Result<(u64, Durable), StoreError>;

    /// The newest `limit` audit entries older than `before` (all when
    /// `None`), newest first, and whether older ones remain.
    async fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, bool), StoreError>;

    /// Records `cert`, issued for a join token with `nonce`, as one step
    /// with the checks that allow it: the name holds no unrevoked
    /// certificate of another environment, and the token was not redeemed
    /// before. Then the token is marked used, the name's earlier
    /// certificates (of the same environment: a reinstalled host) are
    /// revoked and returned, and `cert` is stored. Of concurrent
    /// enrolments of one name in two environments only one passes.
    async fn enrol(
        &self,
        cert: &IssuedCert,
        nonce: &str,
    ) -> Result<(Result<Vec<IssuedCert>, Refusal>, Durable), StoreError>;

    /// The certificate with `serial`, if this coordinator issued it.
    async fn cert(&self, serial: &str) -> Result<Option<IssuedCert>, StoreError>;

    /// Every certificate issued to `name`.
    async fn certs_of(&self, name: &AgentName) -> Result<Vec<IssuedCert>, StoreError>;

    /// Revokes every unrevoked certificate of `name`; returns them.
    async fn revoke_certs(
        &self,
        name: &AgentName,
        now_ms: i64,
    ) -> Result<(Vec<IssuedCert>, Durable), StoreError>;

    /// Makes every write durable and stops taking commits: the last call
    /// on a store, when the coordinator stops.
    async fn close(&self) -> Result<(), StoreError>;

    /// The election of a leader among the coordinators sharing this
    /// store, if several can (Postgres). `None`: the store is one
    /// process's own (sled's lock), so its coordinator always leads.
    fn election(&self) -> Option<&dyn Election> {
        None
    }
}

/// One leader at a time among coordinators sharing a store, by a lease
/// with an epoch. Taking the lead fences the store: from then on its
/// writes are applied only while its epoch is the newest, so a leader
/// that was paused past its lease, and replaced, writes nothing more
/// (each write fails with [`StoreError::Fenced`]). Before it leads, and
/// after it resigns or is replaced, the store refuses every write with
/// [`StoreError::NotLeader`].
#[async_trait]
pub trait Election: Send + Sync {
    /// Takes the lead for `ttl` if no one holds an unexpired lease;
    /// returns the new epoch.
    async fn try_lead(&self, me: &Candidate, ttl: Duration) -> Result<Option<u64>, StoreError>;

    /// Extends the lease of `epoch` by `ttl` from now; false when another
    /// coordinator leads (the store is then no longer fenced for writes).
    async fn renew(&self, epoch: u64, ttl: Duration) -> Result<bool, StoreError>;

    /// Who leads, or led last.
    async fn leader(&self) -> Result<Option<Leader>, StoreError>;

    /// Ends the lease of `epoch` at once (a coordinator that stops), so a
    /// standby takes over without waiting for it to run out; the store
    /// takes no more writes. False when `epoch`'s lease had already run
    /// out or passed to another.
    async fn resign(&self, epoch: u64) -> Result<bool, StoreError>;
}

/// A coordinator that may lead.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Unique to this process (a host name and a random part), so a
    /// coordinator started again is a new holder.
    pub holder: String,
    /// Where clients reach it (`advertise_url`).
    pub url: String,
}

/// The leader, as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its epoch.
    pub epoch: u64,
    /// Its [`Candidate::holder`].
    pub holder: String,
    /// Its [`Candidate::url`].
    pub url: String,
    /// Whether its lease is still running.
    pub live: bool,
}

#[cfg(test)]
mod tests;
