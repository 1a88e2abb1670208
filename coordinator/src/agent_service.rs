//! The agent-facing gRPC service: one bidirectional stream per agent. Proto
//! messages are converted here and handed to [`Core`].

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use futures::FutureExt;
use gantry_shared::{now_ms, proto, AgentName, EnvName, JobId};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info_span, warn, Instrument};

use crate::{
    audit::AuditEntry,
    core::Core,
    error::Error,
    fleet::{OutStream, Outbox, Sender},
    job::AgentRecord,
    store::StoreError,
};

/// Time an agent has to send `Register` after opening its stream: an
/// agent sends it at once, so this only ends streams that never will,
/// each holding a task and a connection's stream slot.
pub const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
        let peer = crate::auth::peer(&request);
        let identity = match self.core.authority {
            Some(_) => Some(self.certificate_identity(&request, &peer)?),
            None => None,
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Register within {}s of opening the stream; an agent's first message must be Register",
                    REGISTER_TIMEOUT.as_secs()
                ))
            })??
            .ok_or_else(|| Status::invalid_argument("the stream closed before Register"))?;
        let Some(proto::agent_message::Body::Register(reg)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message on the stream must be Register",
            ));
        };
        let (record, running) = registration(reg)?;
        if let Some(identity) = &identity {
            let checked = self.core.check_agent(identity, &record);
            let who = format!("agent:{}", identity.name);
            let target = format!("agent {} env {}", record.name, record.env);
            let detail = match &checked {
                Ok(()) => format!("certificate {}", identity.serial),
                Err(e) => e.to_string(),
            };
            self.core
                .audit_durably(AuditEntry::new(
                    who,
                    &peer,
                    "agent-connect",
                    target,
                    checked.is_ok(),
                    detail,
                ))
                .await;
            checked?;
        }
        let agent = record.name.clone();
        let sender = Sender {
            agent: record.name.clone(),
            env: record.env.clone(),
            certificate: identity.as_ref().map(|i| i.serial.clone()),
        };
        let (outbox, stream) = Outbox::new();
        let hello = proto::coordinator_message::Body::Registered(proto::Registered {
            heartbeat_interval_ms: self.core.config.heartbeat_secs.saturating_mul(1000),
            lease_ms: self.core.config.agent_lease_secs.saturating_mul(1000),
        });
        outbox.hello(Ok(proto::CoordinatorMessage { body: Some(hello) }));
        let closed = CancellationToken::new();
        let session = self
            .core
            .attach_agent(
                record,
                running,
                outbox.clone(),
                closed.clone(),
                identity.as_ref().map(|i| i.serial.as_str()),
            )
            .await?;

        let core = self.core.clone();
        let shutdown = self.shutdown.clone();
        let span = info_span!("agent", agent = %agent, session);
        // The reader ends with the stream, when the session is dropped, or at
        // shutdown, and then detaches the agent; it owns nothing else.
        tokio::spawn(
            async move {
                let from = Origin {
                    sender: &sender,
                    peer: &peer,
                    session,
                };
                read_events(&core, &from, inbound, &outbox, &shutdown, &closed).await;
                let _ = core.detach_agent(&agent, session).await;
            }
            .instrument(span),
        );
        // The stream ends when the session's outbox is dropped: on detach,
        // which the reader does at shutdown too.
        Ok(Response::new(stream))
    }

    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinResponse>, Status> {
        let peer = crate::auth::peer(&request);
        let addr = request.remote_addr();
        let req = request.into_inner();
        let claimed = gantry_shared::tls::JoinToken::parse(&req.token)
            .map(|t| format!("agent {} env {}", t.name, t.env))
            .unwrap_or_else(|_| "malformed token".into());
        let joined = self.core.join(&req.token, &req.csr_pem).await;
        let detail = match &joined {
            Ok(r) => format!("certificate issued to {} for {}", r.name, r.env),
            Err(e) => e.to_string(),
        };
        if joined.is_ok() || self.core.auth.failure_worth_auditing(addr) {
            let entry =
                AuditEntry::new("anonymous", peer, "enrol", claimed, joined.is_ok(), detail);
            self.core.audit_durably(entry).await;
        }
        Ok(Response::new(joined?))
    }
}

impl AgentService {
    /// The identity in the client certificate TLS verified; a stream
    /// without one is refused and audited.
    fn certificate_identity<T>(
        &self,
        request: &Request<T>,
        peer: &str,
    ) -> Result<crate::trust::AgentIdentity, Status> {
        let certs = request.peer_certs();
        let identity = match certs.as_ref().and_then(|c| c.first()) {
            Some(cert) => crate::trust::identity(cert).map_err(Error::Unauthenticated),
            None => Err(Error::Unauthenticated(
                "agents must present the client certificate from `gantry-agent join`".into(),
            )),
        };
        if let Err(e) = &identity {
            if self.core.auth.failure_worth_auditing(request.remote_addr()) {
                self.core.audit(AuditEntry::new(
                    "unknown",
                    peer,
                    "agent-connect",
                    "coordinator",
                    false,
                    e.to_string(),
                ));
            }
        }
        Ok(identity?)
    }
}

/// Events applied before their acknowledgements are flushed and sent: one
/// disk flush covers the whole batch, so a fast producer is not held to one
/// flush per line.
const ACK_BATCH: usize = 1024;

/// Refusals of events for jobs a session does not hold that are audited,
/// at most one per job: enough to show what a session tried, too few for
/// a hostile agent to fill the trail.
const MAX_AUDITED_REFUSALS: usize = 16;

/// The session a reader applies events from.
struct Origin<'a> {
    /// Who the session's certificate says it is.
    sender: &'a Sender,
    /// Its address, for the audit trail.
    peer: &'a str,
    /// Its id.
    session: u64,
}

/// Applies what the agent sends, in batches: every event of a batch is
/// applied, the store is flushed once, and then each job's highest seq is
/// acknowledged, so an acknowledged event is always on disk.
async fn read_events(
    core: &Core,
    from: &Origin<'_>,
    mut inbound: Streaming<proto::AgentMessage>,
    outbox: &Outbox,
    shutdown: &CancellationToken,
    closed: &CancellationToken,
) {
    let (agent, session) = (&from.sender.agent, from.session);
    let mut refused = HashSet::new();
    loop {
        let mut next = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = closed.cancelled() => return,
            msg = inbound.next() => msg,
        };
        // Any message is a sign of life; once per batch is enough.
        if core.touch(agent, session).await.is_err() {
            return;
        }
        let mut acks: HashMap<u64, u64> = HashMap::new();
        let mut beat = false;
        let mut open = true;
        let mut applied = 0;
        loop {
            match next {
                Some(Ok(msg)) => match handle(core, from, &mut refused, msg).await {
                    Some(Applied::Event(job, seq)) => {
                        let acked = acks.entry(job).or_default();
                        *acked = (*acked).max(seq);
                    }
                    Some(Applied::Heartbeat) => beat = true,
                    // Not stored, so not acknowledged: end the session, and
                    // the agent resends from this event when it reconnects.
                    Some(Applied::Unstored) => {
                        open = false;
                        break;
                    }
                    None => {}
                },
                Some(Err(status)) => {
                    debug!(%status, "agent stream failed");
                    open = false;
                    break;
                }
                None => {
                    open = false;
                    break;
                }
            }
            applied += 1;
            // Take another message only if it is already here and the batch has room.
            if applied == ACK_BATCH {
                break;
            }
            match inbound.next().now_or_never() {
                Some(msg) => next = msg,
                None => break,
            }
        }
        if !acks.is_empty() {
            if let Err(e) = core.store.flush().await {
                warn!(error = %e, "cannot flush events; not acknowledging them");
                return;
            }
            for (job_id, seq) in acks {
                let ack = proto::coordinator_message::Body::Ack(proto::Ack { job_id, seq });
                if outbox
                    .send(Ok(proto::CoordinatorMessage { body: Some(ack) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        // Answered after anything sent to this session before (a cancel
        // above all): the agent commits a release only on an answer.
        if beat {
            let answer =
                proto::coordinator_message::Body::Heartbeat(proto::Heartbeat { answer: false });
            if outbox
                .send(Ok(proto::CoordinatorMessage { body: Some(answer) }))
                .await
                .is_err()
            {
                return;
            }
        }
        if !open {
            return;
        }
    }
}

/// What applying a message asks of the reader.
enum Applied {
    /// Acknowledge the job's events up to this seq.
    Event(u64, u64),
    /// Answer the heartbeat (it asked).
    Heartbeat,
    /// The store failed to take an event (disk full, I/O error).
    Unstored,
}

/// Applies one message. Refused events are acknowledged too: resending
/// them cannot change the answer. An event for a job the session does
/// not hold is audited (the first for each job, up to
/// [`MAX_AUDITED_REFUSALS`] jobs in `refused`).
async fn handle(
    core: &Core,
    from: &Origin<'_>,
    refused: &mut HashSet<u64>,
    msg: proto::AgentMessage,
) -> Option<Applied> {
    let (agent, session) = (&from.sender.agent, from.session);
    match msg.body {
        Some(proto::agent_message::Body::JobEvent(event)) => {
            let (job, seq) = (event.job_id, event.seq);
            match core.apply_event(from.sender, event).await {
                Err(Error::Store(e @ (StoreError::Sled(_) | StoreError::Task(_)))) => {
                    error!(job, seq, error = %e, "cannot store a job event; dropping the stream");
                    return Some(Applied::Unstored);
                }
                Err(e @ Error::Unavailable(_)) => {
                    error!(job, seq, error = %e, "cannot apply a job event; dropping the stream");
                    return Some(Applied::Unstored);
                }
                Err(e @ Error::NotHolder(_)) => {
                    warn!(job, seq, error = %e, "job event refused");
                    if refused.len() < MAX_AUDITED_REFUSALS && refused.insert(job) {
                        let certificate = from.sender.certificate.as_deref().unwrap_or("none");
                        core.audit(AuditEntry::new(
                            format!("agent:{agent}"),
                            from.peer,
                            "agent-event",
                            format!("job {job}"),
                            false,
                            format!("{e} (certificate {certificate}); refused, nothing changed"),
                        ));
                    }
                }
                Err(e) => warn!(job, seq, error = %e, "job event refused"),
                Ok(()) => {}
            }
            Some(Applied::Event(job, seq))
        }
        Some(proto::agent_message::Body::Drain(_)) => {
            match core.drain_agent(agent, session).await {
                Ok(()) => None,
                Err(_) => Some(Applied::Unstored),
            }
        }
        Some(proto::agent_message::Body::Heartbeat(beat)) if beat.answer => {
            Some(Applied::Heartbeat)
        }
        Some(proto::agent_message::Body::Heartbeat(_)) => None,
        Some(proto::agent_message::Body::Output(output)) => {
            core.tails.deliver(agent, output);
            None
        }
        Some(proto::agent_message::Body::Register(_)) => {
            warn!("Register sent twice; ignored");
            None
        }
        None => {
            warn!("empty message from agent; ignored");
            None
        }
    }
}
