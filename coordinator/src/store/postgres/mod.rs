//! The store in Postgres, for coordinators that run on a database their
//! team already operates. Each write is one committed statement or
//! transaction: when it returns it is applied and durable (Postgres has
//! flushed its WAL at commit), so its [`Durable`] is already resolved.
//! The schema is versioned in `coordinator/migrations/` ([`migrate`]).

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use async_trait::async_trait;
use gantry_shared::{messages::LogLine, AgentName, AppName, EnvName, JobId};
use tokio_postgres::{types::ToSql, Config, Row};
use tracing::info;

mod lease;
mod logs;
mod migrate;
mod pool;
#[cfg(any(test, feature = "testdb"))]
pub mod testdb;
mod tls;
#[cfg(test)]
mod tls_tests;
mod trust;

use super::{Durable, Election, IssuedCert, JobQuery, Refusal, Run, Store, StoreError};
use crate::{
    audit::AuditEntry,
    job::{AgentRecord, JobRecord},
    release::ReleaseRecord,
};

/// How many connections a store keeps: the scheduler, the agents' log
/// appends and operators' reads each get one without queueing behind
/// the others, while a standby and a leader together stay far below
/// Postgres's default of 100 connections.
const POOL_SIZE: usize = 4;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Engine(Box::new(e))
    }
}

/// `n` as Postgres's BIGINT.
fn int(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|e| StoreError::Engine(Box::new(e)))
}

/// A BIGINT read back as the unsigned number it was written from.
fn uint(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|e| StoreError::Engine(Box::new(e)))
}

/// Column `i` of `row`.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    Ok(row.try_get(i)?)
}

fn decode_json<T: serde::de::DeserializeOwned>(key: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Decode {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

fn decode_job(row: &Row) -> Result<JobRecord, StoreError> {
    let id: i64 = col(row, 0)?;
    let text: &str = col(row, 1)?;
    crate::job::legacy::decode(text.as_bytes()).map_err(|e| StoreError::Decode {
        key: format!("job {id}"),
        message: e.to_string(),
    })
}

/// The store: a few connections to one database.
pub struct PgStore {
    pool: pool::Pool,
    /// Set by [`Store::close`]: writes after it are refused.
    closed: AtomicBool,
    /// The epoch writes are fenced by (see [`lease`]).
    fence: lease::Fence,
}

impl PgStore {
    /// Connects to the database `url` names (`postgres://user@host/db`,
    /// or `host=... dbname=...`), as the user with `password` if given,
    /// and brings its schema up to date. TLS as the URL's `sslmode` says,
    /// with no CA to check the server's certificate against.
    pub async fn open(url: &str, password: Option<&str>) -> Result<Self, StoreError> {
        Self::open_with_ca(url, password, None).await
    }

    /// As [`PgStore::open`], checking the server's certificate against
    /// the CA in the PEM file `ca` if given (`sslmode=verify-full` unless
    /// the URL names another mode).
    pub async fn open_with_ca(
        url: &str,
        password: Option<&str>,
        ca: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let (config, tls) = tls::configure(url, password, ca)?;
        Self::start(config, tls).await
    }

    /// As [`PgStore::open`], with the connection already configured.
    pub async fn connect(mut config: Config) -> Result<Self, StoreError> {
        let tls = tls::Tls::of(&mut config)?;
        Self::start(config, tls).await
    }

    async fn start(config: Config, tls: tls::Tls) -> Result<Self, StoreError> {
        let pool = pool::Pool::open(config, tls, POOL_SIZE).await?;
        migrate::run(&mut pool.get().await?.client).await?;
        info!(connections = POOL_SIZE, "opened the postgres store");
        Ok(Self {
            pool,
            closed: AtomicBool::new(false),
            fence: lease::Fence::default(),
        })
    }

    /// Refuses writes once the store is closed.
    fn check(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Commit("the store is closed".into()));
        }
        Ok(())
    }

    /// A connection to write on and the epoch to fence the writes by:
    /// refused once the store is closed, or while it does not lead.
    async fn writer(&self) -> Result<(tokio::sync::MutexGuard<'_, pool::Slot>, i64), StoreError> {
        self.check()?;
        let epoch = self.fence.epoch()?;
        Ok((self.pool.get().await?, epoch))
    }

    /// Runs one write statement, fenced; it is committed when this
    /// returns.
    async fn write(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Durable, StoreError> {
        let (mut slot, epoch) = self.writer().await?;
        let statement = slot.statement(sql).await?;
        let tx = lease::begin(&mut slot, epoch).await?;
        tx.execute(&statement, params).await?;
        tx.commit().await?;
        Ok(Durable::done())
    }

    /// Runs one query.
    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut slot = self.pool.get().await?;
        let statement = slot.statement(sql).await?;
        Ok(slot.client.query(&statement, params).await?)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn next_job_id(&self) -> Result<JobId, StoreError> {
        // A sequence never hands a number out twice, even across a crash.
        self.check()?;
        self.fence.epoch()?;
        let rows = self.query("SELECT nextval('job_ids')", &[]).await?;
        let id: i64 = col(&rows[0], 0)?;
        JobId::new(uint(id)?).map_err(|e| StoreError::Engine(Box::new(e)))
    }

    async fn put_job(&self, job: &JobRecord) -> Result<Durable, StoreError> {
        let record = serde_json::to_string(job).expect("job records serialize");
        self.write(
            "INSERT INTO jobs (id, app, env, ended, record) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET app = EXCLUDED.app, env = EXCLUDED.env,
                 ended = EXCLUDED.ended, record = EXCLUDED.record",
            &[
                &int(job.id.get())?,
                &job.app.as_str(),
                &job.env.as_str(),
                &job.state.is_terminal(),
                &record,
            ],
        )
        .await
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let rows = self
            .query(
                "SELECT id, record FROM jobs WHERE id = $1",
                &[&int(id.get())?],
            )
            .await?;
        rows.first().map(decode_job).transpose()
    }

    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError> {
        let limit = query.limit.map(|l| int(l as u64)).transpose()?;
        let rows = self
            .query(
                "SELECT id, record FROM jobs
                 WHERE ($1::text IS NULL OR app = $1) AND ($2::text IS NULL OR env = $2)
                     AND NOT ($3 AND ended)
                 ORDER BY id DESC LIMIT $4",
                &[
                    &query.app.as_ref().map(|a| a.as_str()),
                    &query.env.as_ref().map(|e| e.as_str()),
                    &query.unended,
                    &limit,
                ],
            )
            .await?;
        rows.iter().map(decode_job).collect()
    }

    async fn append_logs(
        &self,
        job: JobId,
        lines: Vec<LogLine>,
    ) -> Result<(Option<Run>, Durable), StoreError> {
        let (mut slot, epoch) = self.writer().await?;
        let run = logs::append(&mut slot, epoch, job, lines).await?;
        Ok((run, Durable::done()))
    }

    async fn log_runs(&self, job: JobId, from: u64, limit: u64) -> Result<Vec<Run>, StoreError> {
        logs::runs(&mut *self.pool.get().await?, job, from, limit).await
    }

    async fn last_seq(&self, job: JobId) -> Result<u64, StoreError> {
        let rows = self
            .query(
                "SELECT last_seq FROM log_tails WHERE job = $1",
                &[&int(job.get())?],
            )
            .await?;
        rows.first().map_or(Ok(0), |row| uint(col(row, 0)?))
    }

    async fn put_agent(&self, agent: &AgentRecord) -> Result<Durable, StoreError> {
        let record = serde_json::to_string(agent).expect("agent records serialize");
        self.write(
            "INSERT INTO agents (name, record) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
            &[&agent.name.as_str(), &record],
        )
        .await
    }

    async fn agent(&self, name: &AgentName) -> Result<Option<AgentRecord>, StoreError> {
        let rows = self
            .query(
                "SELECT record FROM agents WHERE name = $1",
                &[&name.as_str()],
            )
            .await?;
        rows.first()
            .map(|row| decode_json(&format!("agent {name}"), col(row, 0)?))
            .transpose()
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = self
            .query("SELECT name, record FROM agents ORDER BY name", &[])
            .await?;
        rows.iter()
            .map(|row| decode_json(&format!("agent {}", col::<&str>(row, 0)?), col(row, 1)?))
            .collect()
    }

    async fn put_release(&self, release: &ReleaseRecord) -> Result<Durable, StoreError> {
        let record = serde_json::to_string(release).expect("release records serialize");
        self.write(
            "INSERT INTO releases (app, env, number, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (app, env, number) DO UPDATE SET record = EXCLUDED.record",
            &[
                &release.app.as_str(),
                &release.env.as_str(),
                &int(release.number)?,
                &record,
            ],
        )
        .await
    }

    async fn releases(
        &self,
        app: &AppName,
        env: &EnvName,
        limit: Option<usize>,
    ) -> Result<Vec<ReleaseRecord>, StoreError> {
        let limit = limit.map(|l| int(l as u64)).transpose()?;
        let rows = self
            .query(
                "SELECT record FROM releases WHERE app = $1 AND env = $2
                 ORDER BY number DESC LIMIT $3",
                &[&app.as_str(), &env.as_str(), &limit],
            )
            .await?;
        rows.iter()
            .map(|row| decode_json(&format!("release of {app} in {env}"), col(row, 0)?))
            .collect()
    }

    async fn put_config_snapshot(&self, key: &str, dump: String) -> Result<Durable, StoreError> {
        self.write(
            "INSERT INTO config_snapshots (key, dump) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET dump = EXCLUDED.dump",
            &[&key, &dump],
        )
        .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(u64, Durable), StoreError> {
        let (mut slot, epoch) = self.writer().await?;
        trust::append_audit(&mut slot, epoch, entry).await
    }

    async fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, bool), StoreError> {
        trust::audit(&mut *self.pool.get().await?, before, limit).await
    }

    async fn enrol(
        &self,
        cert: &IssuedCert,
        nonce: &str,
    ) -> Result<(Result<Vec<IssuedCert>, Refusal>, Durable), StoreError> {
        let (mut slot, epoch) = self.writer().await?;
        let outcome = trust::enrol(&mut slot, epoch, cert, nonce).await?;
        Ok((outcome, Durable::done()))
    }

    async fn cert(&self, serial: &str) -> Result<Option<IssuedCert>, StoreError> {
        trust::cert(&mut *self.pool.get().await?, serial).await
    }

    async fn certs_of(&self, name: &AgentName) -> Result<Vec<IssuedCert>, StoreError> {
        trust::certs_of(&mut *self.pool.get().await?, name).await
    }

    async fn revoke_certs(
        &self,
        name: &AgentName,
        now_ms: i64,
    ) -> Result<(Vec<IssuedCert>, Durable), StoreError> {
        let (mut slot, epoch) = self.writer().await?;
        let revoked = trust::revoke(&mut slot, epoch, name, now_ms).await?;
        Ok((revoked, Durable::done()))
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Every write was committed when it returned; only refuse more.
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn election(&self) -> Option<&dyn Election> {
        Some(self)
    }
}

/// Copying a whole store in and out ([`PgStore::import`], `migrate`).
mod copy;
