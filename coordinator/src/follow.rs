//! Following a job's log (`StreamJobLogs`, `FollowJobLogs`): the stored
//! lines from a sequence number, then its live lines until it ends. The
//! follower subscribes before reading the store, so no line falls between
//! the two; when it lags behind the live channel it goes back to the store,
//! so it never misses one either.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use gantry_shared::{proto, JobId};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    core::Core,
    hub::{LiveEvent, Run},
};

/// Lines read from the store at a time: enough to stream a finished job's
/// log quickly, little enough to keep memory flat for huge logs.
const STORE_LINES: u64 = 4096;

/// Runs buffered towards one client (an agent sends up to a few hundred
/// lines per run); a slow client fills this and then only its own task
/// waits.
const CLIENT_RUNS: usize = 16;

/// Runs a `FollowJobLogs` message gathers at most, of those that are ready
/// when the client is: none is held back to fill a message.
const MESSAGE_RUNS: usize = 64;

/// Bytes of lines per `FollowJobLogs` message at most, well under clients'
/// 4 MiB default message limit. A single larger run still goes whole: it
/// came from an agent in one message under the same limit.
const MESSAGE_BYTES: usize = 1 << 20;

/// The log of `job` from `from` on, in the runs it was stored in (each
/// encoded once, whoever follows); with `follow`, until the job ends.
fn job_runs(
    core: Arc<Core>,
    job: JobId,
    from: u64,
    follow: bool,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<Run, Status>> {
    let (tx, rx) = mpsc::channel(CLIENT_RUNS);
    // The task ends when the job ends, the client goes away (send fails) or
    // the coordinator shuts down; the stream it feeds is its owner.
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down; follow again from the last line you saw"))).await;
            }
            _ = pump(&core, job, from, follow, &tx) => {}
        }
        core.hub.release(job);
    });
    ReceiverStream::new(rx)
}

/// The log of `job` from `from` on, a line per message (`StreamJobLogs`).
pub fn job_logs(
    core: Arc<Core>,
    job: JobId,
    from: u64,
    follow: bool,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<proto::LogLine, Status>> {
    job_runs(core, job, from, follow, shutdown).flat_map(|item| {
        let items: Vec<_> = match item.and_then(|run| run.lines().map_err(internal)) {
            Ok(lines) => lines.into_iter().map(Ok).collect(),
            Err(status) => vec![Err(status)],
        };
        futures::stream::iter(items)
    })
}

/// The same log as [`job_logs`], in messages of the runs that are ready,
/// sent as they were encoded once (`FollowJobLogs`).
pub fn job_log_batches(
    core: Arc<Core>,
    job: JobId,
    from: u64,
    follow: bool,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<proto::LogBatch, Status>> {
    job_runs(core, job, from, follow, shutdown)
        .ready_chunks(MESSAGE_RUNS)
        .flat_map(|chunk| futures::stream::iter(messages(chunk)))
}

/// Ready runs gathered into messages of at most [`MESSAGE_BYTES`]; runs
/// before an error still go out, then the error.
fn messages(chunk: Vec<Result<Run, Status>>) -> Vec<Result<proto::LogBatch, Status>> {
    let mut out = Vec::new();
    let mut batch = proto::LogBatch::default();
    let mut bytes = 0;
    for item in chunk {
        match item {
            Ok(run) => {
                if bytes > 0 && bytes + run.encoded.len() > MESSAGE_BYTES {
                    out.push(Ok(std::mem::take(&mut batch)));
                    bytes = 0;
                }
                bytes += run.encoded.len();
                batch.encoded.push(run.encoded);
            }
            Err(status) => {
                if bytes > 0 {
                    out.push(Ok(std::mem::take(&mut batch)));
                    bytes = 0;
                }
                out.push(Err(status));
            }
        }
    }
    if bytes > 0 {
        out.push(Ok(batch));
    }
    out
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("reading the stored log: {e}"))
}

async fn pump(
    core: &Core,
    job: JobId,
    from: u64,
    follow: bool,
    tx: &mpsc::Sender<Result<Run, Status>>,
) {
    let mut live = core.hub.subscribe(job);
    let mut next = from;
    loop {
        // Whether the job had ended *before* this catch-up: its lines are all
        // stored before it ends, so then the catch-up reads every one. (Read
        // after the catch-up, it could see an end whose last lines came in
        // after the read.)
        let ended = core.job(job).map(|j| j.state.is_terminal()).unwrap_or(true);
        // Catch up from the store.
        loop {
            let runs = match core.store.log_runs(job, next, STORE_LINES) {
                Ok(runs) => runs,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            if runs.is_empty() {
                break;
            }
            for run in runs {
                next = run.last + 1;
                if tx.send(Ok(run)).await.is_err() {
                    return;
                }
            }
        }
        if ended || !follow {
            return;
        }
        // Follow live runs until a gap, a lag or the end sends us back.
        loop {
            match live.recv().await {
                Ok(LiveEvent::Lines(run)) => {
                    if run.last < next {
                        continue;
                    }
                    if run.first > next {
                        // A gap: the store has what was missed.
                        break;
                    }
                    let run = match run.from_seq(next) {
                        Ok(run) => run,
                        Err(e) => {
                            let _ = tx.send(Err(internal(e))).await;
                            return;
                        }
                    };
                    next = run.last + 1;
                    if tx.send(Ok(run)).await.is_err() {
                        return;
                    }
                }
                Ok(LiveEvent::Ended) | Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => {
                    live = core.hub.subscribe(job);
                    break;
                }
            }
        }
    }
}
