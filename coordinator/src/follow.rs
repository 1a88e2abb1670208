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

use crate::{core::Core, hub::LiveEvent};

/// Lines read from the store per batch: large enough to stream a finished
/// job's log quickly, small enough to keep memory flat for huge logs.
const STORE_BATCH: usize = 1024;

/// Lines buffered towards one client; a slow client fills this and then
/// only its own task waits.
const CLIENT_BUFFER: usize = 256;

/// The log of `job` from `from` on; with `follow`, until the job ends.
pub fn job_logs(
    core: Arc<Core>,
    job: JobId,
    from: u64,
    follow: bool,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<proto::LogLine, Status>> {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
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

/// Lines per `FollowJobLogs` message at most: the lines already waiting
/// when the client is ready go together, none is held back to fill one.
const RUN_LINES: usize = 512;

/// The same log as [`job_logs`], in runs of the lines that are ready.
pub fn job_log_batches(
    core: Arc<Core>,
    job: JobId,
    from: u64,
    follow: bool,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<proto::LogBatch, Status>> {
    job_logs(core, job, from, follow, shutdown)
        .ready_chunks(RUN_LINES)
        .flat_map(|chunk| {
            // Lines before an error still go out, then the error.
            let mut items = Vec::new();
            let mut lines = Vec::new();
            for item in chunk {
                match item {
                    Ok(line) => lines.push(line),
                    Err(status) => {
                        if !lines.is_empty() {
                            items.push(Ok(proto::LogBatch {
                                lines: std::mem::take(&mut lines),
                            }));
                        }
                        items.push(Err(status));
                    }
                }
            }
            if !lines.is_empty() {
                items.push(Ok(proto::LogBatch { lines }));
            }
            futures::stream::iter(items)
        })
}

async fn pump(
    core: &Core,
    job: JobId,
    from: u64,
    follow: bool,
    tx: &mpsc::Sender<Result<proto::LogLine, Status>>,
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
            let lines = match core.store.logs(job, next, STORE_BATCH) {
                Ok(lines) => lines,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            let full = lines.len() >= STORE_BATCH;
            for line in lines {
                next = line.seq + 1;
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        if ended || !follow {
            return;
        }
        // Follow live lines until a gap, a lag or the end sends us back.
        'live: loop {
            match live.recv().await {
                Ok(LiveEvent::Lines(lines)) => {
                    let from = next;
                    for line in lines.iter().filter(|l| l.seq >= from) {
                        if line.seq != next {
                            // A gap: the store has what was missed.
                            break 'live;
                        }
                        next += 1;
                        if tx.send(Ok(line.clone())).await.is_err() {
                            return;
                        }
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
