//! The agent's link to the coordinator: it dials out (so it works behind
//! NAT), registers, holds one bidirectional stream, sends heartbeats and the
//! spooled events of its jobs, and takes the jobs pushed to it. When the
//! stream breaks it dials again, going through the list of coordinators to
//! the one that leads, with exponential backoff once none takes it; jobs
//! keep running and their events wait in the spool.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use gantry_shared::{
    leader::leader_of,
    limits::MAX_GRPC_MESSAGE_BYTES,
    messages::{
        Assignment, ContainerOutput, FromAgent, JobEvent, MessageError, Registration, ToAgent,
        PROTOCOL,
    },
    proto,
    url::{CoordinatorList, Round},
    JobId, JobState, Redactor,
};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};
use tracing::{info, warn};

use crate::{
    assignment::Job,
    batch,
    job::{self, JobHandle},
    report::Reporter,
    runtime::Runtime,
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
    /// The coordinators to look for the leader among, parsed from
    /// `options.coordinator`.
    pub coordinators: CoordinatorList,
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

/// A session ended because the coordinator stopped answering heartbeats
/// for a lease (see [`crate::lease::Lease::silent`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "no word from the coordinator for a lease ({}s) though asked every heartbeat; dialling again",
    .0.as_secs()
)]
struct Silent(Duration);

/// Keeps a session with the leading coordinator open until `stop`.
///
/// Each (re)connect is a [`Round`] over the list: the coordinator that
/// served last first, then the others in order. A standby's refusal that
/// names the leader sends the agent there at once; a refusal without one,
/// or a coordinator that does not answer, moves it to the next. Only a
/// round in which every coordinator failed is followed by a backoff.
pub async fn maintain(link: Arc<Link>, stop: CancellationToken) {
    let mut coordinators = link.coordinators.clone();
    let mut last_good = 0;
    let mut backoff = MIN_BACKOFF;
    while !stop.is_cancelled() {
        let mut round = Round::new(coordinators.len(), last_good);
        let mut leader = None;
        let mut failures: Vec<(String, anyhow::Error)> = Vec::new();
        let mut served = false;
        while let Some(index) = round.next(leader.take()) {
            if stop.is_cancelled() {
                return;
            }
            let url = coordinators.url(index).to_owned();
            let mut registered = false;
            let result = session(&link, &stop, &url, &mut registered).await;
            if registered {
                last_good = index;
                if result.as_ref().is_err_and(|e| e.is::<Silent>()) {
                    // It went silent with its connection open (paused, or
                    // cut off): another one may lead now, so it comes last.
                    last_good = (index + 1) % coordinators.len();
                }
                backoff = MIN_BACKOFF;
                served = true;
                match result {
                    Ok(()) => info!(coordinator = %url, "stream to the coordinator closed"),
                    Err(e) => warn!(
                        coordinator = %url,
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "coordinator unreachable"
                    ),
                }
                break;
            }
            let Err(e) = result else {
                // Closed before it answered the registration: try the next.
                failures.push((url, anyhow::anyhow!("closed the stream before registering")));
                continue;
            };
            let status = e.downcast_ref::<tonic::Status>();
            if let Some(named) = status.and_then(leader_of) {
                // A standby names the leader; one outside the list is
                // tried too (it is verified like any other coordinator).
                leader = coordinators.learn(&named).filter(|&at| at != index);
                if leader.is_some() {
                    info!(standby = %url, leader = %named, "a standby named the leader; going there");
                }
            }
            if coordinators.len() > 1 {
                info!(coordinator = %url, error = %e, "coordinator refused or unreachable; trying the next");
            }
            failures.push((url, e));
        }
        let retry_in_ms = backoff.as_millis() as u64;
        match failures.as_slice() {
            _ if served => {}
            [(_, e)] if coordinators.len() == 1 => {
                warn!(error = %e, retry_in_ms, "coordinator unreachable")
            }
            all => {
                let errors: Vec<String> =
                    all.iter().map(|(url, e)| format!("{url}: {e}")).collect();
                warn!(errors = %errors.join("; "), retry_in_ms, "no coordinator of the list took the agent")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One session with the coordinator at `url`; `registered` says whether
/// it took the registration (so another coordinator need not be tried).
async fn session(
    link: &Arc<Link>,
    stop: &CancellationToken,
    url: &str,
    registered: &mut bool,
) -> anyhow::Result<()> {
    let result = attached(link, stop, url, registered).await;
    // Tails answer on this stream only; the coordinator asks again.
    link.tails.stop_all();
    result
}

async fn attached(
    link: &Arc<Link>,
    stop: &CancellationToken,
    url: &str,
    registered: &mut bool,
) -> anyhow::Result<()> {
    let channel = crate::join::agent_endpoint(url, link.options.tls_dir.as_deref())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut client = proto::agent_service_client::AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);

    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let running = link
        .running
        .lock()
        .expect("running lock")
        .keys()
        .copied()
        .collect();
    let register = Registration {
        name: link.options.name.clone(),
        env: link.options.env.clone(),
        labels: link.options.labels.clone(),
        capacity: link.options.capacity,
        version: gantry_shared::VERSION.to_owned(),
        running,
        protocol: PROTOCOL,
    };
    tx.send(FromAgent::Register(register)).await?;
    // Everything sent becomes proto here, and only here.
    let outbound = ReceiverStream::new(rx).map(proto::AgentMessage::from);
    let mut inbound = client.attach(outbound).await?.into_inner();

    let mut heartbeat = DEFAULT_HEARTBEAT;
    let lease = &link.runtime.lease;
    match inbound.message().await?.map(ToAgent::try_from) {
        Some(Ok(ToAgent::Registered { protocol, .. })) if protocol != PROTOCOL => {
            // Its acknowledgements would be misread: nothing is sent, and
            // the spool keeps everything until the coordinator is upgraded.
            anyhow::bail!(
                "the coordinator speaks protocol {protocol} of the agent stream and this agent \
                 (gantry-agent {}) speaks {PROTOCOL}: upgrade the coordinator to this version",
                gantry_shared::VERSION
            );
        }
        Some(Ok(ToAgent::Registered {
            heartbeat: interval,
            lease: length,
            ..
        })) => {
            heartbeat = interval.max(Duration::from_millis(100));
            lease.set_length(length);
        }
        // Never dropped, whatever came first.
        Some(other) => handle(link, other, &tx),
        None => return Ok(()),
    }
    lease.heard();
    info!(agent = %link.options.name, env = %link.options.env, coordinator = %url, "registered with the coordinator");
    *registered = true;
    link.spool.rewind();

    // The coordinator's messages are handled as they come, whatever the
    // sending below waits for: a cancel or a heartbeat's answer never
    // waits behind a backlog of log lines on a slow stream.
    let mut reader = {
        let (link, tx) = (link.clone(), tx.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            while let Some(msg) = inbound.message().await? {
                handle(&link, ToAgent::try_from(msg), &tx);
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
                let _ = tx.send(FromAgent::Drain).await;
            }
            _ = beat.tick() => {
                // Every heartbeat asks for an answer: it keeps the lease
                // under the agent's jobs known to be held (see
                // `crate::lease`), and a coordinator that stops answering
                // is found within a lease.
                if tx.send(heartbeat_message(true)).await.is_err() {
                    return Ok(());
                }
            }
            _ = lease.silent() => {
                return Err(Silent(lease.patience().unwrap_or_default() / 2).into())
            }
            _ = std::future::ready(()), if more => {}
            _ = link.spool.added() => {}
        }
    }
}

/// The next batch of spooled events, synced to disk off the runtime.
async fn take_unsent(spool: &Spool) -> std::io::Result<Vec<JobEvent>> {
    if !spool.has_unsent() {
        return Ok(Vec::new());
    }
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || spool.take_unsent(SEND_BATCH))
        .await
        .map_err(std::io::Error::other)?
}

fn heartbeat_message(answer: bool) -> FromAgent {
    FromAgent::Heartbeat { answer }
}

/// Acts on what the coordinator sent, as converted at the edge.
fn handle(link: &Link, msg: Result<ToAgent, MessageError>, tx: &mpsc::Sender<FromAgent>) {
    if let Ok(ToAgent::HeartbeatAnswer) = msg {
        link.runtime.lease.answered();
        return;
    }
    // Any message, even one refused below, says the coordinator is there.
    link.runtime.lease.heard();
    match msg {
        Ok(ToAgent::Tail(ask)) => {
            let stop = link.tails.start(ask.request_id);
            let (runtime, tails, tx) = (link.runtime.clone(), link.tails.clone(), tx.clone());
            // Owned through `tails`: stopped by StopTail or when the session ends.
            tokio::spawn(async move { tail::run(&runtime, &tails, ask, tx, stop).await });
        }
        Ok(ToAgent::StopTail(request)) => link.tails.stop(request),
        Ok(ToAgent::Ack { job, seq }) => link.spool.ack(job, seq),
        Ok(ToAgent::Assign(assignment)) => start_job(link, *assignment),
        Ok(ToAgent::Cancel(id)) => {
            let found = link.running.lock().expect("running lock").get(&id).cloned();
            match found {
                Some(handle) => {
                    info!(job = %id, "cancelling job");
                    handle.stop(JobState::Cancelled, "cancelled by operator");
                }
                None => warn!(job = %id, "cancel for a job this agent does not run"),
            }
        }
        Ok(ToAgent::Registered { .. } | ToAgent::HeartbeatAnswer) => {}
        Err(MessageError::Assignment {
            job,
            first_seq,
            why,
        }) => refuse(link, job, first_seq, Redactor::default(), why),
        Err(MessageError::Tail { request_id, why }) => {
            warn!(request_id, %why, "refusing a tail request");
            let answer = ContainerOutput {
                request_id,
                lines: Vec::new(),
                end: true,
                error: Some(format!("the agent refused the request: {why}")),
            };
            // Dropped only if the session's queue is full or closed; the
            // coordinator's tail then ends with the session.
            let _ = tx.try_send(FromAgent::Output(answer));
        }
        Err(e) => warn!(error = %e, "ignoring a message from the coordinator"),
    }
}

fn start_job(link: &Link, assignment: Assignment) {
    let (id, first_seq) = (assignment.job, assignment.first_seq);
    let secrets = Redactor::new(assignment.secrets.values().cloned());
    if link.draining.is_cancelled() {
        return refuse(link, id, first_seq, secrets, "it is shutting down".into());
    }
    let report = Reporter::starting_at(id, link.spool.clone(), first_seq).redacting(secrets);
    let job = Job::from(assignment);
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

/// Reports job `id` failed without running it, saying `why`.
fn refuse(link: &Link, id: JobId, first_seq: u64, secrets: Redactor, why: String) {
    warn!(job = %id, %why, "refusing a job");
    let report = Reporter::starting_at(id, link.spool.clone(), first_seq).redacting(secrets);
    link.tasks.spawn(async move {
        let why = format!("the agent refused the job: {why}");
        report.finish(JobState::Failed, why, None).await;
    });
}
