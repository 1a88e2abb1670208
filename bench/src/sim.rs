//! A simulated agent: speaks the real agent protocol over a real gRPC stream
//! but does no work. On an assignment it records when it arrived and, if
//! told to, streams log lines for the job and finishes it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use gantry_shared::proto::{self, agent_message::Body as Up, coordinator_message::Body as Down};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;

/// What an assigned job should do.
#[derive(Clone, Copy)]
pub enum Work {
    /// Finish at once.
    Nothing,
    /// Send `lines` lines of `bytes` bytes, paced at `per_sec` (0: as fast
    /// as possible); with `held`, only once the bench releases the job
    /// ([`Arrivals::release`]).
    Lines {
        lines: u64,
        bytes: usize,
        per_sec: u64,
        held: bool,
    },
}

/// Shared by the bench and its agents: when each job's assignment arrived,
/// and when the coordinator acknowledged its end.
#[derive(Default)]
pub struct Arrivals {
    /// Job id -> arrival time.
    pub at: Mutex<HashMap<u64, Instant>>,
    /// Job id -> the seq of its last line (the one carrying its end), once
    /// the agent sent it.
    last_event: Mutex<HashMap<u64, u64>>,
    /// Job id -> when the coordinator acknowledged its last line.
    stored: Mutex<HashMap<u64, Instant>>,
    /// Job id -> when the bench let a held job start its lines.
    released: Mutex<HashMap<u64, Instant>>,
    /// Wakes waiters on every arrival and every stored end.
    pub notify: Notify,
}

impl Arrivals {
    /// Waits until `job` was assigned; returns when.
    pub async fn wait(&self, job: u64) -> Instant {
        self.wait_in(&self.at, job).await
    }

    /// Waits until the coordinator acknowledged `job`'s end to its agent,
    /// which it does once the end and every line before it are stored;
    /// returns when. The agent's own connection tells, so no reader's
    /// polling weighs on the run or delays the answer.
    pub async fn stored(&self, job: u64) -> Instant {
        self.wait_in(&self.stored, job).await
    }

    /// Lets held job `job` send its lines; returns when.
    pub fn release(&self, job: u64) -> Instant {
        let at = *self
            .released
            .lock()
            .expect("arrivals lock")
            .entry(job)
            .or_insert_with(Instant::now);
        self.notify.notify_waiters();
        at
    }

    async fn wait_in(&self, map: &Mutex<HashMap<u64, Instant>>, job: u64) -> Instant {
        loop {
            let notified = self.notify.notified();
            if let Some(at) = map.lock().expect("arrivals lock").get(&job) {
                return *at;
            }
            notified.await;
        }
    }

    /// The coordinator acknowledged `job`'s lines up to `seq`.
    fn acked(&self, job: u64, seq: u64) {
        let last = self
            .last_event
            .lock()
            .expect("arrivals lock")
            .get(&job)
            .copied();
        if last.is_some_and(|last| seq >= last) {
            self.stored
                .lock()
                .expect("arrivals lock")
                .entry(job)
                .or_insert_with(Instant::now);
            self.notify.notify_waiters();
        }
    }
}

fn up(body: Up) -> proto::AgentMessage {
    proto::AgentMessage { body: Some(body) }
}

fn event(
    job: u64,
    lines: Vec<proto::LogLine>,
    finished: Option<proto::JobFinished>,
) -> proto::AgentMessage {
    up(Up::JobEvent(proto::JobEvent {
        job_id: job,
        lines: Some(lines.into()),
        finished,
    }))
}

/// Connects one simulated agent through `endpoint` (plain, or TLS with the
/// agent's certificate) and serves it until the stream ends.
pub async fn agent(
    endpoint: tonic::transport::Endpoint,
    env: &str,
    name: String,
    work: Work,
    arrivals: Arc<Arrivals>,
) -> anyhow::Result<()> {
    // The agent's own channel settings, pings included.
    let channel = endpoint
        .http2_keep_alive_interval(gantry_agent::connection::KEEPALIVE)
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut client = proto::agent_service_client::AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(1024);
    let register = proto::Register {
        name,
        env: env.into(),
        capacity: 1,
        version: "bench".into(),
        protocol: gantry_shared::messages::PROTOCOL,
        ..Default::default()
    };
    tx.send(up(Up::Register(register))).await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    // As the agent does: heartbeats at the interval the coordinator names.
    let mut every = std::time::Duration::from_secs(5);
    if let Some(proto::CoordinatorMessage {
        body: Some(Down::Registered(r)),
    }) = inbound.message().await?
    {
        every = std::time::Duration::from_millis(r.heartbeat_interval_ms.max(100));
    }
    let beats = tx.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if beats
                .send(up(Up::Heartbeat(proto::Heartbeat::default())))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let _stop_beating = AbortOnDrop(heartbeat);
    while let Some(msg) = inbound.message().await? {
        let spec = match msg.body {
            Some(Down::Assign(spec)) => spec,
            Some(Down::Ack(ack)) => {
                arrivals.acked(ack.job_id, ack.seq);
                continue;
            }
            _ => continue,
        };
        let job = spec.job_id;
        arrivals
            .at
            .lock()
            .expect("arrivals lock")
            .insert(job, Instant::now());
        arrivals.notify.notify_waiters();
        let (tx, arrivals) = (tx.clone(), arrivals.clone());
        tokio::spawn(async move { run_job(job, work, tx, &arrivals).await });
    }
    Ok(())
}

/// Sends `job`'s log: its first line opens the build stage and its last
/// carries the job's end, as the agent's would (a job with no work sends
/// one line that does both).
async fn run_job(job: u64, work: Work, tx: mpsc::Sender<proto::AgentMessage>, arrivals: &Arrivals) {
    let (lines, bytes, per_sec) = match work {
        Work::Nothing => (1, 0, 0),
        Work::Lines {
            lines,
            bytes,
            per_sec,
            held,
        } => {
            if held {
                arrivals.wait_in(&arrivals.released, job).await;
            }
            (lines.max(1), bytes, per_sec)
        }
    };
    // As the agent does: the lines waiting to be sent go as one batch
    // (up to its send batch). Paced, the lines due go out every
    // millisecond (tokio's timer resolution), as a program's output
    // waits in the agent for its next send.
    let mut pace = (per_sec > 0).then(|| {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    let started = Instant::now();
    let mut n = 0;
    while n < lines {
        let due = match pace.as_mut() {
            Some(pace) => {
                pace.tick().await;
                let due = started.elapsed().as_micros() as u64 * per_sec / 1_000_000;
                due.clamp(n + 1, lines)
            }
            None => lines,
        };
        while n < due {
            let mut batch: Vec<_> = (n + 1..=due.min(n + BATCH as u64))
                .map(|seq| line(seq, bytes))
                .collect();
            n += batch.len() as u64;
            batch[0].opens_stage = batch[0].seq == 1;
            let finished = (n == lines).then(|| {
                arrivals
                    .last_event
                    .lock()
                    .expect("arrivals lock")
                    .insert(job, n);
                proto::JobFinished {
                    state: proto::JobState::Succeeded as i32,
                    summary: "bench".into(),
                    ..Default::default()
                }
            });
            if tx.send(event(job, batch, finished)).await.is_err() {
                return;
            }
        }
    }
}

/// Line `seq` of `bytes` bytes, carrying its send time (µs since the Unix
/// epoch, so that a follower in another process can tell its lag).
fn line(seq: u64, bytes: usize) -> proto::LogLine {
    let mut text = format!("{} ", unix_micros());
    text.extend(std::iter::repeat_n('x', bytes.saturating_sub(text.len())));
    proto::LogLine {
        seq,
        text,
        stage: proto::Stage::Build as i32,
        stream: proto::LogStream::Stdout as i32,
        ..Default::default()
    }
}

/// Now, in µs since the Unix epoch.
pub fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// Lines per message when the producer is faster than the stream: the
/// agent's own send batch.
const BATCH: usize = gantry_agent::spool::SEND_BATCH;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
