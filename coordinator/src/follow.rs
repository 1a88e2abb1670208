//! Following a job's log (`StreamJobLogs`, `FollowJobLogs`): the stored
//! lines from a sequence number, then its live lines until it ends. The
//! follower subscribes before reading the store, so no line falls between
//! the two; when it lags behind the live channel it goes back to the store,
//! so it never misses one either. A follow is a stream the gRPC response
//! owns, with no task of its own: when the client goes away, it is gone.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use gantry_shared::{proto, JobId};
use tokio::sync::broadcast::{error::RecvError, Receiver};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{core::Core, hub::LiveEvent, store::Run};

/// Lines read from the store at a time: enough to stream a finished job's
/// log quickly, little enough to keep memory flat for huge logs.
const STORE_LINES: u64 = 4096;

/// Runs a `FollowJobLogs` message gathers at most, of those that are ready
/// when the client is: none is held back to fill a message.
const MESSAGE_RUNS: usize = 64;

/// Bytes of lines per `FollowJobLogs` message at most, well under clients'
/// 4 MiB default message limit. A single larger run still goes whole: it
/// came from an agent in one message under the same limit.
const MESSAGE_BYTES: usize = 1 << 20;

/// The log of `job` from `from` on, in the runs it was stored in (each
/// encoded once, whoever follows); with `follow`, until the job ends or the
/// coordinator stops. It subscribes at once, before its first poll.
fn job_runs(
    core: Arc<Core>,
    job: JobId,
    from: u64,
    follow: bool,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Run, Status>> {
    let follower = Follower {
        live: Some(core.hub.subscribe(job)),
        phase: Phase::Resume,
        core,
        job,
        next: from,
        follow,
        shutdown,
    };
    futures::stream::unfold(follower, |mut follower| async move {
        let items = follower.step().await?;
        Some((futures::stream::iter(items), follower))
    })
    .flatten()
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

/// Where a follower is.
enum Phase {
    /// About to catch up from the store: whether the job has ended is
    /// read first.
    Resume,
    /// Reading the store; `ended` says whether the job had ended before
    /// this catch-up began.
    CatchUp {
        ended: bool,
    },
    /// Taking live runs from the job's channel.
    Live,
    Done,
}

impl Phase {
    /// A catch-up from now. Whether the job has ended is read *before* the
    /// store: its lines are all stored before it ends, so then the catch-up
    /// reads every one. (Read after, it could see an end whose last lines
    /// came in after the read.)
    async fn catch_up(core: &Core, job: JobId) -> Self {
        let ended = core
            .job(job)
            .await
            .map(|j| j.state.is_terminal())
            .unwrap_or(true);
        Phase::CatchUp { ended }
    }
}

/// One follower of one job.
struct Follower {
    core: Arc<Core>,
    job: JobId,
    /// The job's live channel; `None` only while being dropped.
    live: Option<Receiver<LiveEvent>>,
    phase: Phase,
    /// The seq of the next line to send.
    next: u64,
    follow: bool,
    shutdown: CancellationToken,
}

impl Follower {
    /// The next runs to send (or an error, which ends the stream); `None`
    /// once every one was sent.
    async fn step(&mut self) -> Option<Vec<Result<Run, Status>>> {
        loop {
            if self.shutdown.is_cancelled() && !matches!(self.phase, Phase::Done) {
                return Some(self.fail(shutting_down()));
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Resume => self.phase = Phase::catch_up(&self.core, self.job).await,
                Phase::CatchUp { ended } => {
                    let store = &self.core.store;
                    let runs = match store.log_runs(self.job, self.next, STORE_LINES).await {
                        Ok(runs) => runs,
                        Err(e) => return Some(self.fail(internal(e))),
                    };
                    if let Some(last) = runs.last() {
                        self.next = last.last + 1;
                        return Some(runs.into_iter().map(Ok).collect());
                    }
                    self.phase = match ended || !self.follow {
                        true => Phase::Done,
                        false => Phase::Live,
                    };
                }
                Phase::Live => {
                    let live = self.live.as_mut().expect("subscribed while following");
                    let event = tokio::select! {
                        _ = self.shutdown.cancelled() => continue,
                        event = live.recv() => event,
                    };
                    match event {
                        Ok(LiveEvent::Lines(run)) if run.last < self.next => {}
                        Ok(LiveEvent::Lines(run)) if run.first <= self.next => {
                            let run = match run.from_seq(self.next) {
                                Ok(run) => run,
                                Err(e) => return Some(self.fail(internal(e))),
                            };
                            self.next = run.last + 1;
                            return Some(vec![Ok(run)]);
                        }
                        // A gap (the store has what was missed), a lag or
                        // the end: back to the store.
                        Ok(LiveEvent::Lines(_) | LiveEvent::Ended) | Err(RecvError::Lagged(_)) => {
                            self.phase = Phase::Resume;
                        }
                        Err(RecvError::Closed) => {
                            self.live = Some(self.core.hub.subscribe(self.job));
                            self.phase = Phase::Resume;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream with `status`.
    fn fail(&mut self, status: Status) -> Vec<Result<Run, Status>> {
        self.phase = Phase::Done;
        vec![Err(status)]
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // Unsubscribed first, so that a channel nobody follows is forgotten.
        drop(self.live.take());
        self.core.hub.release(self.job);
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the coordinator is shutting down; follow again from the last line you saw")
}
