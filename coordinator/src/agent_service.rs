//! The agent-facing gRPC service: one bidirectional stream per agent. Proto
//! messages are converted here and handed to [`Core`].

use std::{collections::BTreeSet, pin::Pin, sync::Arc};

use futures::Stream;
use gantry_shared::{now_ms, proto, AgentName, EnvName, JobId};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info_span, warn, Instrument};

use crate::{core::Core, error::Error, fleet::AGENT_OUTBOX, job::AgentRecord};

/// The `gantry.v1.AgentService` implementation.
pub struct AgentService {
    core: Arc<Core>,
    shutdown: CancellationToken,
}

impl AgentService {
    /// Serves agents from `core` until `shutdown` fires.
    pub fn new(core: Arc<Core>, shutdown: CancellationToken) -> Self {
        Self { core, shutdown }
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<proto::CoordinatorMessage, Status>> + Send>>;

/// Validates an agent's introduction at the edge.
fn registration(reg: proto::Register) -> Result<(AgentRecord, BTreeSet<JobId>), Error> {
    let record = AgentRecord {
        name: AgentName::new(reg.name)?,
        env: EnvName::new(reg.env)?,
        labels: reg.labels.into_iter().collect(),
        capacity: reg.capacity,
        version: reg.version,
        last_seen_ms: now_ms(),
    };
    let running = reg
        .running_jobs
        .into_iter()
        .map(JobId::new)
        .collect::<Result<_, _>>()?;
    Ok((record, running))
}

#[tonic::async_trait]
impl proto::agent_service_server::AgentService for AgentService {
    type AttachStream = OutStream;

    async fn attach(
        &self,
        request: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream closed before Register"))?;
        let Some(proto::agent_message::Body::Register(reg)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message on the stream must be Register",
            ));
        };
        let (record, running) = registration(reg)?;
        let agent = record.name.clone();
        let (outbox, rx) = mpsc::channel(AGENT_OUTBOX);
        let hello = proto::coordinator_message::Body::Registered(proto::Registered {
            heartbeat_interval_ms: self.core.config.heartbeat_secs * 1000,
        });
        outbox
            .try_send(Ok(proto::CoordinatorMessage { body: Some(hello) }))
            .expect("a new outbox has room");
        let session = self.core.attach_agent(record, running, outbox)?;

        let core = self.core.clone();
        let shutdown = self.shutdown.clone();
        let span = info_span!("agent", agent = %agent, session);
        // The reader ends with the stream (or at shutdown) and detaches the
        // agent; it owns nothing else, so it needs no other owner.
        tokio::spawn(
            async move {
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        msg = inbound.next() => msg,
                    };
                    match msg {
                        Some(Ok(msg)) => {
                            core.touch(&agent, session);
                            handle(&core, &agent, msg);
                        }
                        Some(Err(status)) => {
                            debug!(%status, "agent stream failed");
                            break;
                        }
                        None => break,
                    }
                }
                core.detach_agent(&agent, session);
            }
            .instrument(span),
        );
        // The stream ends when the session's outbox is dropped: on detach,
        // which the reader does at shutdown too.
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn handle(core: &Core, agent: &AgentName, msg: proto::AgentMessage) {
    match msg.body {
        Some(proto::agent_message::Body::JobEvent(event)) => {
            let job = event.job_id;
            if let Err(e) = core.apply_event(agent, event) {
                warn!(job, error = %e, "job event refused");
            }
        }
        Some(proto::agent_message::Body::Heartbeat(_)) => {}
        Some(proto::agent_message::Body::Register(_)) => warn!("Register sent twice; ignored"),
        None => warn!("empty message from agent; ignored"),
    }
}
