//! The agent's link to the coordinator: it dials out (so it works behind
//! NAT), registers, holds one bidirectional stream, sends heartbeats and the
//! spooled events of its jobs, and takes the jobs pushed to it. When the
//! stream breaks it dials again with exponential backoff; jobs keep running
//! and their events wait in the spool.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use gantry_shared::{limits::MAX_GRPC_MESSAGE_BYTES, proto, JobId, JobState, Redactor};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};
use tracing::{info, warn};

use crate::{
    batch,
    job::{self, Job, JobHandle, Runtime},
    report::Reporter,
    spool::{Spool, SEND_BATCH},
    tail, AgentOptions,
};

/// First wait before dialling again; doubled on each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Longest wait between dials: a coordinator back from a restart is found
/// within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Messages queued towards one stream before the sender waits (HTTP/2 flow
/// control does the rest).
const STREAM_BUFFER: usize = 1024;

/// HTTP/2 ping interval: how soon a dead coordinator (or a dead network
/// path) is noticed and dialled again. Heartbeats tell the coordinator the
/// agent lives; pings tell the agent the coordinator does. Each ping costs
/// the coordinator a little for every agent, so not more often than this.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// Heartbeat interval used until the coordinator names its own.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// The jobs this agent runs now, with the handles that stop them.
pub type Running = Arc<Mutex<HashMap<JobId, JobHandle>>>;

/// Shared by every session of the agent's life.
pub struct Link {
    /// How to reach and introduce ourselves.
    pub options: AgentOptions,
    /// What jobs need from the host.
    pub runtime: Arc<Runtime>,
    /// Events of all jobs, waiting to be sent and acknowledged.
    pub spool: Spool,
    /// Jobs running now.
    pub running: Running,
    /// Owner of the job tasks.
    pub tasks: TaskTracker,
    /// Fired when the agent starts to shut down: take no more work.
    pub draining: CancellationToken,
    /// Container output being sent for `gantry logs --app --env`.
    pub tails: Arc<tail::Tails>,
}

/// Keeps a session with the coordinator open until `stop`.
pub async fn maintain(link: Arc<Link>, stop: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    while !stop.is_cancelled() {
        match session(&link, &stop, &mut backoff).await {
            Ok(()) => info!("stream to the coordinator closed"),
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn message(body: proto::agent_message::Body) -> proto::AgentMessage {
    proto::AgentMessage { body: Some(body) }
}

async fn session(
    link: &Arc<Link>,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let result = attached(link, stop, backoff).await;
    // Tails answer on this stream only; the coordinator asks again.
    link.tails.stop_all();
    result
}

async fn attached(
    link: &Arc<Link>,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let channel =
        crate::join::agent_endpoint(&link.options.coordinator, link.options.tls_dir.as_deref())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .connect()
            .await?;
    let mut client = proto::agent_service_client::AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);

    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let running_jobs = link
        .running
        .lock()
        .expect("running lock")
        .keys()
        .map(|j| j.get())
        .collect();
    let register = proto::Register {
        name: link.options.name.to_string(),
        env: link.options.env.to_string(),
        labels: link.options.labels.clone().into_iter().collect(),
        capacity: link.options.capacity,
        version: gantry_shared::VERSION.to_owned(),
        running_jobs,
    };
    tx.send(message(proto::agent_message::Body::Register(register)))
        .await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();

    let mut heartbeat = DEFAULT_HEARTBEAT;
    let lease = &link.runtime.lease;
    match inbound.message().await? {
        Some(proto::CoordinatorMessage {
            body: Some(proto::coordinator_message::Body::Registered(r)),
        }) => {
            heartbeat = Duration::from_millis(r.heartbeat_interval_ms.max(100));
            lease.set_length(Duration::from_millis(r.lease_ms));
        }
        // Never dropped, whatever came first.
        Some(other) => handle(link, other, &tx),
        None => return Ok(()),
    }
    lease.heard();
    info!(agent = %link.options.name, env = %link.options.env, "registered with the coordinator");
    *backoff = MIN_BACKOFF;
    link.spool.rewind();

    // The coordinator's messages are handled as they come, whatever the
    // sending below waits for: a cancel or a heartbeat's answer never
    // waits behind a backlog of log lines on a slow stream.
    let mut reader = {
        let (link, tx) = (link.clone(), tx.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            while let Some(msg) = inbound.message().await? {
                handle(&link, msg, &tx);
            }
            Ok::<_, tonic::Status>(())
        }))
    };
    let mut beat = tokio::time::interval(heartbeat);
    let mut drain_sent = false;
    loop {
        let batch = take_unsent(&link.spool).await?;
        let more = batch.len() == SEND_BATCH;
        for message in batch::job_events(batch) {
            if tx.send(message).await.is_err() {
                return Ok(());
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            read = &mut reader => return Ok(read??),
            _ = lease.asked() => {
                if tx.send(heartbeat_message(true)).await.is_err() {
                    return Ok(());
                }
            }
            _ = link.draining.cancelled(), if !drain_sent => {
                drain_sent = true;
                let _ = tx.send(message(proto::agent_message::Body::Drain(proto::Drain {}))).await;
            }
            _ = beat.tick() => {
                // An agent with jobs asks for an answer: it keeps the lease
                // under them known to be held (see `crate::lease`).
                let holds_jobs = !link.running.lock().expect("running lock").is_empty();
                if tx.send(heartbeat_message(holds_jobs)).await.is_err() {
                    return Ok(());
                }
            }
            _ = std::future::ready(()), if more => {}
            _ = link.spool.added() => {}
        }
    }
}

/// The next batch of spooled events, synced to disk off the runtime.
async fn take_unsent(spool: &Spool) -> std::io::Result<Vec<proto::JobEvent>> {
    if !spool.has_unsent() {
        return Ok(Vec::new());
    }
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || spool.take_unsent(SEND_BATCH))
        .await
        .map_err(std::io::Error::other)?
}

fn heartbeat_message(answer: bool) -> proto::AgentMessage {
    message(proto::agent_message::Body::Heartbeat(proto::Heartbeat {
        answer,
    }))
}

fn handle(link: &Link, msg: proto::CoordinatorMessage, tx: &mpsc::Sender<proto::AgentMessage>) {
    if let Some(proto::coordinator_message::Body::Heartbeat(_)) = msg.body {
        link.runtime.lease.answered();
        return;
    }
    link.runtime.lease.heard();
    match msg.body {
        Some(proto::coordinator_message::Body::Tail(ask)) => {
            let stop = link.tails.start(ask.request_id);
            let (runtime, tails, tx) = (link.runtime.clone(), link.tails.clone(), tx.clone());
            // Owned through `tails`: stopped by StopTail or when the session ends.
            tokio::spawn(async move { tail::run(&runtime, &tails, ask, tx, stop).await });
        }
        Some(proto::coordinator_message::Body::StopTail(stop)) => link.tails.stop(stop.request_id),
        Some(proto::coordinator_message::Body::Ack(ack)) => {
            if let Ok(job) = JobId::new(ack.job_id) {
                link.spool.ack(job, ack.seq);
            }
        }
        Some(proto::coordinator_message::Body::Assign(spec)) => start_job(link, spec),
        Some(proto::coordinator_message::Body::Cancel(c)) => {
            let found = JobId::new(c.job_id)
                .ok()
                .and_then(|id| link.running.lock().expect("running lock").get(&id).cloned());
            match found {
                Some(handle) => {
                    info!(job = c.job_id, "cancelling job");
                    handle.stop(JobState::Cancelled, "cancelled by operator");
                }
                None => warn!(job = c.job_id, "cancel for a job this agent does not run"),
            }
        }
        Some(proto::coordinator_message::Body::Registered(_))
        | Some(proto::coordinator_message::Body::Heartbeat(_))
        | None => {}
    }
}

fn start_job(link: &Link, spec: proto::JobSpec) {
    let Ok(id) = JobId::new(spec.job_id) else {
        warn!("assignment without a job id; ignored");
        return;
    };
    let secrets = Redactor::new(spec.secrets.values().cloned());
    let report =
        Reporter::starting_at(id, link.spool.clone(), spec.first_seq.max(1)).redacting(secrets);
    let refuse = |why: String| {
        warn!(job = %id, %why, "refusing a job");
        let report = report.clone();
        link.tasks.spawn(async move {
            report
                .finish(
                    JobState::Failed,
                    format!("the agent refused the job: {why}"),
                    None,
                )
                .await;
        });
    };
    if link.draining.is_cancelled() {
        return refuse("it is shutting down".into());
    }
    let job = match Job::from_proto(spec) {
        Ok(job) => job,
        Err(why) => return refuse(why),
    };
    let handle = JobHandle::default();
    {
        let mut running = link.running.lock().expect("running lock");
        if running.contains_key(&id) {
            warn!(job = %id, "job assigned twice; ignored");
            return;
        }
        running.insert(id, handle.clone());
    }
    let runtime = link.runtime.clone();
    let running = link.running.clone();
    link.tasks.spawn(async move {
        job::run(runtime, job, report, handle).await;
        running.lock().expect("running lock").remove(&id);
    });
}
