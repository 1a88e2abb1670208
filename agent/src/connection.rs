//! The agent's link to the coordinator: it dials out (so it works behind
//! NAT), registers, holds one bidirectional stream, sends heartbeats and the
//! events of its jobs, and takes the jobs pushed to it. When the stream
//! breaks it dials again with exponential backoff; jobs keep running.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use gantry_shared::{limits::MAX_GRPC_MESSAGE_BYTES, proto, JobId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::{
    job::{self, Job, Runtime},
    report::Reporter,
    AgentOptions,
};

/// First wait before dialling again; doubled on each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Longest wait between dials: a coordinator back from a restart is found
/// within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Messages queued towards one stream before the sender waits (HTTP/2 flow
/// control does the rest).
const STREAM_BUFFER: usize = 256;

/// Heartbeat interval used until the coordinator names its own.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// The jobs this agent runs now, with the tokens that cancel them.
pub type Running = Arc<Mutex<HashMap<JobId, CancellationToken>>>;

/// Shared by every session of the agent's life.
pub struct Link {
    /// How to reach and introduce ourselves.
    pub options: AgentOptions,
    /// What jobs need from the host.
    pub runtime: Arc<Runtime>,
    /// Events of all jobs, waiting to be sent.
    pub outbox: mpsc::Receiver<proto::AgentMessage>,
    /// Where jobs put their events.
    pub outbox_tx: mpsc::Sender<proto::AgentMessage>,
    /// Jobs running now.
    pub running: Running,
    /// Owner of the job tasks.
    pub tasks: TaskTracker,
    /// A message taken from the outbox whose stream broke before it was sent.
    pub carry: Option<proto::AgentMessage>,
}

/// Keeps a session with the coordinator open until `shutdown`.
pub async fn maintain(link: &mut Link, shutdown: &CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    while !shutdown.is_cancelled() {
        match session(link, shutdown, &mut backoff).await {
            Ok(()) => info!("stream to the coordinator closed"),
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(
    link: &mut Link,
    shutdown: &CancellationToken,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(link.options.coordinator.clone())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
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
    tx.send(proto::AgentMessage {
        body: Some(proto::agent_message::Body::Register(register)),
    })
    .await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();

    let mut heartbeat = DEFAULT_HEARTBEAT;
    if let Some(proto::CoordinatorMessage {
        body: Some(proto::coordinator_message::Body::Registered(r)),
    }) = inbound.message().await?
    {
        heartbeat = Duration::from_millis(r.heartbeat_interval_ms.max(100));
    }
    info!(agent = %link.options.name, env = %link.options.env, "registered with the coordinator");
    *backoff = MIN_BACKOFF;

    let mut beat = tokio::time::interval(heartbeat);
    loop {
        if let Some(msg) = link.carry.take() {
            if let Err(unsent) = tx.send(msg).await {
                link.carry = Some(unsent.0);
                return Ok(());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = inbound.message() => match msg? {
                Some(msg) => handle(link, msg),
                None => return Ok(()),
            },
            _ = beat.tick() => {
                let msg = proto::AgentMessage { body: Some(proto::agent_message::Body::Heartbeat(proto::Heartbeat {})) };
                if tx.send(msg).await.is_err() {
                    return Ok(());
                }
            }
            Some(msg) = link.outbox.recv() => link.carry = Some(msg),
        }
    }
}

fn handle(link: &Link, msg: proto::CoordinatorMessage) {
    match msg.body {
        Some(proto::coordinator_message::Body::Assign(spec)) => start_job(link, spec),
        Some(proto::coordinator_message::Body::Cancel(c)) => {
            let found = JobId::new(c.job_id)
                .ok()
                .and_then(|id| link.running.lock().expect("running lock").get(&id).cloned());
            match found {
                Some(token) => {
                    info!(job = c.job_id, "cancelling job");
                    token.cancel();
                }
                None => warn!(job = c.job_id, "cancel for a job this agent does not run"),
            }
        }
        Some(proto::coordinator_message::Body::Registered(_)) | None => {}
    }
}

fn start_job(link: &Link, spec: proto::JobSpec) {
    let Ok(id) = JobId::new(spec.job_id) else {
        warn!("assignment without a job id; ignored");
        return;
    };
    let report = Reporter::new(id, link.outbox_tx.clone());
    let job = match Job::from_proto(spec) {
        Ok(job) => job,
        Err(why) => {
            warn!(job = %id, %why, "refusing a malformed job");
            link.tasks.spawn(async move {
                report
                    .finish(
                        gantry_shared::JobState::Failed,
                        format!("the agent refused the job: {why}"),
                        None,
                    )
                    .await;
            });
            return;
        }
    };
    let token = CancellationToken::new();
    {
        let mut running = link.running.lock().expect("running lock");
        if running.contains_key(&id) {
            warn!(job = %id, "job assigned twice; ignored");
            return;
        }
        running.insert(id, token.clone());
    }
    let runtime = link.runtime.clone();
    let running = link.running.clone();
    link.tasks.spawn(async move {
        job::run(runtime, job, report, token).await;
        running.lock().expect("running lock").remove(&id);
    });
}
