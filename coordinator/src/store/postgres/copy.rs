//! Copying a whole store in and out of Postgres (see [`crate::store::copy`]):
//! [`PgStore::import`] takes everything another store exports in one
//! transaction, and [`Export`] reads this one whole, in the same order as
//! sled's, so two copies of the same records compare equal.

use async_trait::async_trait;
use futures::future::try_join_all;
use gantry_shared::{AppName, EnvName, JobId};
use tokio_postgres::{types::ToSql, Transaction};
use tracing::info;

use super::{col, decode_job, int, trust::decode_cert, uint, PgStore};
use crate::{
    job::JobRecord,
    store::{
        copy::{describe_held, CopyError, Export, Moved, LOG_PAGE_LINES, RECORD_PAGE},
        IssuedCert, StoreError,
    },
};

/// One parameter of a pipelined statement.
type Param<'a> = &'a (dyn ToSql + Sync);

/// Every table the copy fills: locked against writers while it runs, so
/// the check that they are empty holds until it commits.
const LOCK: &str = "LOCK TABLE jobs, log_runs, log_tails, releases, agents, config_snapshots,
     audit, certs, cert_names, used_tokens IN EXCLUSIVE MODE";

/// What the database holds already, config snapshots aside.
const HELD: &str = "SELECT (SELECT count(*) FROM jobs),
     (SELECT coalesce(sum(last_seq - first_seq + 1), 0)::bigint FROM log_runs),
     (SELECT count(*) FROM releases), (SELECT count(*) FROM agents),
     (SELECT count(*) FROM audit), (SELECT count(*) FROM certs),
     (SELECT count(*) FROM used_tokens)";

/// The highest id the job id sequence has handed out.
const JOB_COUNTER: &str = "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
     FROM job_ids";

impl PgStore {
    /// Copies everything `from` holds into this database, which must hold
    /// no records (config snapshots aside: a coordinator writes them as it
    /// starts; they are replaced). One transaction, so on a refusal or any
    /// error nothing is changed and the copy can be run again. Records keep
    /// their keys (job ids, log seqs, audit seqs, release numbers), and
    /// ids handed out next continue after the highest `from` handed out.
    pub async fn import(&self, from: &dyn Export) -> Result<Moved, CopyError> {
        self.check()?;
        let mut slot = self.pool.get().await?;
        let tx = slot.client.transaction().await.map_err(StoreError::from)?;
        if let Some(held) = held(&tx).await? {
            // Dropping the transaction rolls it back.
            return Err(CopyError::NotEmpty(held));
        }
        let mut moved = Moved::default();
        let highest_job = copy_jobs(&tx, from, &mut moved).await?;
        moved.next_job_id = continue_job_ids(&tx, from, highest_job).await?;
        copy_logs(&tx, from, &mut moved).await?;
        copy_releases_and_agents(&tx, from, &mut moved).await?;
        copy_audit(&tx, from, &mut moved).await?;
        copy_trust(&tx, from, &mut moved).await?;
        tx.commit().await.map_err(StoreError::from)?;
        info!(
            jobs = moved.jobs,
            log_lines = moved.log_lines,
            audit_entries = moved.audit_entries,
            "copied a store into postgres"
        );
        Ok(moved)
    }
}

/// Locks every table the copy fills and names what they hold already
/// (config snapshots aside); `None` when they hold nothing.
async fn held(tx: &Transaction<'_>) -> Result<Option<String>, StoreError> {
    tx.batch_execute(LOCK).await?;
    let row = tx.query_one(HELD, &[]).await?;
    let kinds = [
        ("job", "jobs"),
        ("log line", "log lines"),
        ("release", "releases"),
        ("agent", "agents"),
        ("audit entry", "audit entries"),
        ("certificate", "certificates"),
        ("used join token", "used join tokens"),
    ];
    let mut held = Vec::new();
    for (i, (one, many)) in kinds.into_iter().enumerate() {
        held.push((one, many, col::<i64>(&row, i)?));
    }
    Ok(describe_held(&held))
}

/// Copies every job record; returns the highest id.
async fn copy_jobs(
    tx: &Transaction<'_>,
    from: &dyn Export,
    moved: &mut Moved,
) -> Result<u64, StoreError> {
    let insert = tx
        .prepare("INSERT INTO jobs (id, app, env, ended, record) VALUES ($1, $2, $3, $4, $5)")
        .await?;
    let mut after = 0;
    loop {
        let page = from.jobs_after(after, RECORD_PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(after);
        };
        after = last.id.get();
        let rows = page
            .iter()
            .map(|job| {
                let record = serde_json::to_string(job).expect("job records serialize");
                Ok((
                    int(job.id.get())?,
                    job.app.as_str(),
                    job.env.as_str(),
                    job.state.is_terminal(),
                    record,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        try_join_all(rows.iter().map(|(id, app, env, ended, record)| {
            tx.execute_raw(&insert, [id as Param, app, env, ended, record])
        }))
        .await?;
        moved.jobs += page.len() as u64;
    }
}

/// Moves the job id sequence past every id handed out, in the source or
/// here; returns the id it hands out next. (ALTER SEQUENCE is
/// transactional, unlike setval: a copy rolled back leaves it as it was.)
async fn continue_job_ids(
    tx: &Transaction<'_>,
    from: &dyn Export,
    highest_job: u64,
) -> Result<u64, StoreError> {
    let here = uint(col(&tx.query_one(JOB_COUNTER, &[]).await?, 0)?)?;
    let highest = from.job_counter().await?.max(highest_job).max(here);
    let next = highest + 1;
    tx.batch_execute(&format!(
        "ALTER SEQUENCE job_ids RESTART WITH {}",
        int(next)?
    ))
    .await?;
    Ok(next)
}

/// Copies every job's log, run by run as stored, and its tail.
async fn copy_logs(
    tx: &Transaction<'_>,
    from: &dyn Export,
    moved: &mut Moved,
) -> Result<(), StoreError> {
    let insert_run = tx
        .prepare("INSERT INTO log_runs (job, last_seq, first_seq, batch) VALUES ($1, $2, $3, $4)")
        .await?;
    let insert_tail = tx
        .prepare("INSERT INTO log_tails (job, last_seq) VALUES ($1, $2)")
        .await?;
    for job in from.logged_jobs().await? {
        let id = int(job.get())?;
        let mut last = 0;
        loop {
            let runs = from.log_runs(job, last + 1, LOG_PAGE_LINES).await?;
            if runs.is_empty() {
                break;
            }
            let mut rows = Vec::with_capacity(runs.len());
            for run in &runs {
                if run.first != last + 1 {
                    return Err(StoreError::Decode {
                        key: format!("log of job {job}"),
                        message: format!("lines after seq {last} start at {}", run.first),
                    });
                }
                last = run.last;
                moved.log_lines += run.lines_count();
                rows.push((int(run.last)?, int(run.first)?, &run.encoded[..]));
            }
            try_join_all(rows.iter().map(|(end, start, batch)| {
                tx.execute_raw(&insert_run, [&id as Param, end, start, batch])
            }))
            .await?;
        }
        if last > 0 {
            tx.execute(&insert_tail, &[&id, &int(last)?]).await?;
            moved.logged_jobs += 1;
        }
    }
    Ok(())
}

/// Copies every release of every (app, env), and every agent seen.
async fn copy_releases_and_agents(
    tx: &Transaction<'_>,
    from: &dyn Export,
    moved: &mut Moved,
) -> Result<(), StoreError> {
    let insert = tx
        .prepare("INSERT INTO releases (app, env, number, record) VALUES ($1, $2, $3, $4)")
        .await?;
    for (app, env) in from.release_streams().await? {
        let releases = from.releases(&app, &env, None).await?;
        let rows = releases
            .iter()
            .map(|r| {
                let record = serde_json::to_string(r).expect("release records serialize");
                Ok((r.app.as_str(), r.env.as_str(), int(r.number)?, record))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        try_join_all(rows.iter().map(|(app, env, number, record)| {
            tx.execute_raw(&insert, [app as Param, env, number, record])
        }))
        .await?;
        moved.releases += releases.len() as u64;
    }
    let insert = tx
        .prepare("INSERT INTO agents (name, record) VALUES ($1, $2)")
        .await?;
    let agents = from.agents().await?;
    let rows: Vec<_> = agents
        .iter()
        .map(|a| {
            let record = serde_json::to_string(a).expect("agent records serialize");
            (a.name.as_str(), record)
        })
        .collect();
    try_join_all(
        rows.iter()
            .map(|(name, record)| tx.execute_raw(&insert, [name as Param, record])),
    )
    .await?;
    moved.agents = agents.len() as u64;
    let upsert = tx
        .prepare(
            "INSERT INTO config_snapshots (key, dump) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET dump = EXCLUDED.dump",
        )
        .await?;
    for (key, dump) in from.config_snapshots().await? {
        tx.execute(&upsert, &[&key, &dump]).await?;
        moved.config_snapshots += 1;
    }
    Ok(())
}

/// Copies the audit trail under its own seqs, and moves the trail's
/// numbering past them.
async fn copy_audit(
    tx: &Transaction<'_>,
    from: &dyn Export,
    moved: &mut Moved,
) -> Result<(), StoreError> {
    let insert = tx
        .prepare("INSERT INTO audit (seq, record) OVERRIDING SYSTEM VALUE VALUES ($1, $2)")
        .await?;
    let mut highest = 0;
    let mut before = None;
    loop {
        // Newest first: the first entry read is the highest seq.
        let (entries, more) = from.audit(before, RECORD_PAGE).await?;
        let Some(oldest) = entries.last() else {
            break;
        };
        before = Some(oldest.seq);
        highest = highest.max(entries[0].seq);
        let rows = entries
            .iter()
            .map(|e| {
                let record = serde_json::to_string(e).expect("audit entries serialize");
                Ok((int(e.seq)?, record))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        try_join_all(
            rows.iter()
                .map(|(seq, record)| tx.execute_raw(&insert, [seq as Param, record])),
        )
        .await?;
        moved.audit_entries += entries.len() as u64;
        if !more {
            break;
        }
    }
    if highest > 0 {
        let restart = format!(
            "ALTER TABLE audit ALTER COLUMN seq RESTART WITH {}",
            int(highest + 1)?
        );
        tx.batch_execute(&restart).await?;
    }
    Ok(())
}

/// Copies the certificates (with the names they lock) and the redeemed
/// join tokens.
async fn copy_trust(
    tx: &Transaction<'_>,
    from: &dyn Export,
    moved: &mut Moved,
) -> Result<(), StoreError> {
    let insert = tx
        .prepare(
            "INSERT INTO certs (serial, name, env, issued_ms, revoked_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    let name = tx
        .prepare("INSERT INTO cert_names (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .await?;
    let certs = from.all_certs().await?;
    let rows: Vec<_> = certs
        .iter()
        .map(|c| {
            (
                &c.serial,
                c.name.as_str(),
                c.env.as_str(),
                c.issued_ms,
                c.revoked_ms,
            )
        })
        .collect();
    try_join_all(rows.iter().map(|(serial, name, env, issued, revoked)| {
        tx.execute_raw(&insert, [serial as Param, name, env, issued, revoked])
    }))
    .await?;
    let mut names: Vec<&str> = certs.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    try_join_all(names.iter().map(|n| tx.execute_raw(&name, [n as Param]))).await?;
    moved.certs = certs.len() as u64;
    moved.revoked_certs = certs.iter().filter(|c| c.revoked_ms.is_some()).count() as u64;
    let insert = tx
        .prepare("INSERT INTO used_tokens (nonce, used_ms) VALUES ($1, $2)")
        .await?;
    let tokens = from.used_tokens().await?;
    try_join_all(
        tokens
            .iter()
            .map(|(nonce, used)| tx.execute_raw(&insert, [nonce as Param, used])),
    )
    .await?;
    moved.used_tokens = tokens.len() as u64;
    Ok(())
}

#[async_trait]
impl Export for PgStore {
    async fn job_counter(&self) -> Result<u64, StoreError> {
        let rows = self.query(JOB_COUNTER, &[]).await?;
        uint(col(&rows[0], 0)?)
    }

    async fn jobs_after(&self, after: u64, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self
            .query(
                "SELECT id, record FROM jobs WHERE id > $1 ORDER BY id LIMIT $2",
                &[&int(after)?, &int(limit as u64)?],
            )
            .await?;
        rows.iter().map(decode_job).collect()
    }

    async fn logged_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        let rows = self
            .query(
                "SELECT job FROM log_tails WHERE last_seq > 0 ORDER BY job",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| JobId::new(uint(col(row, 0)?)?).map_err(|e| StoreError::Engine(Box::new(e))))
            .collect()
    }

    async fn release_streams(&self) -> Result<Vec<(AppName, EnvName)>, StoreError> {
        let rows = self
            .query(
                "SELECT app, env FROM releases GROUP BY app, env
                 ORDER BY app COLLATE \"C\", env COLLATE \"C\"",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let bad = |e: gantry_shared::NameError| StoreError::Decode {
                    key: "releases".into(),
                    message: e.to_string(),
                };
                Ok((
                    AppName::new(col::<String>(row, 0)?).map_err(bad)?,
                    EnvName::new(col::<String>(row, 1)?).map_err(bad)?,
                ))
            })
            .collect()
    }

    async fn config_snapshots(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .query(
                "SELECT key, dump FROM config_snapshots ORDER BY key COLLATE \"C\"",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((col(row, 0)?, col(row, 1)?)))
            .collect()
    }

    async fn all_certs(&self) -> Result<Vec<IssuedCert>, StoreError> {
        let rows = self
            .query(
                "SELECT serial, name, env, issued_ms, revoked_ms FROM certs
                 ORDER BY serial COLLATE \"C\"",
                &[],
            )
            .await?;
        rows.iter().map(decode_cert).collect()
    }

    async fn used_tokens(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .query(
                "SELECT nonce, used_ms FROM used_tokens ORDER BY nonce COLLATE \"C\"",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((col(row, 0)?, col(row, 1)?)))
            .collect()
    }
}
