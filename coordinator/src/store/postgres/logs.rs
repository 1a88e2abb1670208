//! Job logs in Postgres: runs of consecutive lines, one row each, keyed by
//! job and the run's last seq as in sled's logs tree, and one tail row per
//! job that every append locks, so appends to one job are applied one
//! after the other and each line is stored exactly once.

use bytes::Bytes;
use gantry_shared::{messages::LogLine, proto, JobId};
use tokio_postgres::{GenericClient, Statement};

use super::{col, int, pool::Slot, uint};
use crate::store::{append, Run, StoreError};

/// Locks `job`'s tail row (creating it at 0) and returns its last seq.
const LOCK_TAIL: &str = "INSERT INTO log_tails (job, last_seq) VALUES ($1, 0)
     ON CONFLICT (job) DO UPDATE SET last_seq = log_tails.last_seq
     RETURNING last_seq";

/// Stores a run and moves the tail to its end.
const INSERT_RUN: &str = "WITH run AS (
         INSERT INTO log_runs (job, last_seq, first_seq, batch) VALUES ($1, $2, $3, $4)
     )
     UPDATE log_tails SET last_seq = $2 WHERE job = $1";

/// The runs of a job holding seqs from $2 to $3.
const RUNS: &str = "SELECT first_seq, last_seq, batch FROM log_runs
     WHERE job = $1 AND last_seq >= $2 AND first_seq <= $3
     ORDER BY last_seq";

fn decode_error(job: JobId, e: prost::DecodeError) -> StoreError {
    StoreError::Decode {
        key: format!("log of job {job}"),
        message: e.to_string(),
    }
}

/// See [`crate::store::Store::append_logs`]: one transaction, under the
/// lock of the job's tail row.
pub(super) async fn append(
    slot: &mut Slot,
    epoch: i64,
    job: JobId,
    lines: Vec<LogLine>,
) -> Result<Option<Run>, StoreError> {
    let lines: Vec<proto::LogLine> = lines.into_iter().map(Into::into).collect();
    let id = int(job.get())?;
    let lock = slot.statement(LOCK_TAIL).await?;
    let insert = slot.statement(INSERT_RUN).await?;
    let runs_of = slot.statement(RUNS).await?;
    let tx = super::lease::begin(slot, epoch).await?;
    let last = uint(col(&tx.query_one(&lock, &[&id]).await?, 0)?)?;
    let (fresh, resent) = append::split(last, lines);
    if let Some(first) = resent.first() {
        let mut stored = Vec::new();
        for run in read(&tx, &runs_of, job, first.seq, resent.len() as u64).await? {
            stored.extend(run.lines().map_err(|e| decode_error(job, e))?);
        }
        append::check_resent(job, &resent, &stored)?;
    }
    if fresh.is_empty() {
        tx.rollback().await?;
        return Ok(None);
    }
    append::check_follows(job, last, &fresh)?;
    let run = Run::of(&fresh);
    let batch: &[u8] = run.encoded.as_ref();
    tx.execute(&insert, &[&id, &int(run.last)?, &int(run.first)?, &batch])
        .await?;
    tx.commit().await?;
    Ok(Some(run))
}

/// See [`crate::store::Store::log_runs`].
pub(super) async fn runs(
    slot: &mut Slot,
    job: JobId,
    from: u64,
    limit: u64,
) -> Result<Vec<Run>, StoreError> {
    let runs_of = slot.statement(RUNS).await?;
    read(&slot.client, &runs_of, job, from, limit).await
}

/// Runs of `job` from seq `from` on (the first cut to start there), until
/// they hold `limit` lines or more.
async fn read(
    client: &impl GenericClient,
    runs_of: &Statement,
    job: JobId,
    from: u64,
    limit: u64,
) -> Result<Vec<Run>, StoreError> {
    // A log starts at seq 1 and is gapless, so the lines wanted are those
    // from `start` to `start + limit - 1`, in the runs that touch them.
    let start = from.max(1);
    let end = start.saturating_add(limit.max(1) - 1).min(i64::MAX as u64);
    let rows = client
        .query(runs_of, &[&int(job.get())?, &int(start)?, &int(end)?])
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let batch: &[u8] = col(row, 2)?;
        let run = Run {
            first: uint(col(row, 0)?)?,
            last: uint(col(row, 1)?)?,
            encoded: Bytes::copy_from_slice(batch),
        };
        out.push(if run.first < start {
            run.from_seq(start).map_err(|e| decode_error(job, e))?
        } else {
            run
        });
    }
    Ok(out)
}
