//! The agent-facing gRPC service: one bidirectional stream per agent. Proto
//! messages are converted here, to and from [`gantry_shared::messages`],
//! and what an agent says is handed to [`Core`] as domain types. A message
//! that does not convert is refused here, logged, and changes nothing.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::FutureExt;
use gantry_shared::{
    messages::{FromAgent, MessageError, Registration, ToAgent, PROTOCOL},
    now_ms, proto, JobId,
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info_span, warn, Instrument};

use crate::{
    audit::AuditEntry,
    core::Core,
    error::Error,
    fleet::{Outbox, Sender},
    job::AgentRecord,
    store::Durable,
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

/// The record of an agent's introduction, and the jobs it says it runs.
fn registration(reg: Registration) -> (AgentRecord, BTreeSet<JobId>) {
    let record = AgentRecord {
        name: reg.name,
        env: reg.env,
        labels: reg.labels,
        capacity: reg.capacity,
        version: reg.version,
        last_seen_ms: now_ms(),
    };
    (record, reg.running)
}

/// `msg` as the wire carries it.
/// The stream of what the coordinator says to one agent, on the wire.
pub type AttachStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<proto::CoordinatorMessage, Status>> + Send>,
>;

#[tonic::async_trait]
impl proto::agent_service_server::AgentService for AgentService {
    type AttachStream = AttachStream;

    async fn attach(
        &self,
        request: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<AttachStream>, Status> {
        let peer = crate::auth::peer(&request);
        let identity = match self.core.authority {
            Some(_) => {
                let identity = certificate_identity(&request);
                let remote = request.remote_addr();
                Some(self.audit_identity(identity, remote, &peer).await?)
            }
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
        let reg = match FromAgent::try_from(first) {
            Ok(FromAgent::Register(reg)) => reg,
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message on the stream must be Register",
                ))
            }
            Err(e) => return Err(Error::InvalidArgument(format!("Register refused: {e}")).into()),
        };
        if reg.protocol != PROTOCOL {
            // Its events would be misread, and acknowledged wrongly: it
            // keeps them spooled until it is upgraded.
            warn!(agent = %reg.name, env = %reg.env, version = %reg.version, protocol = reg.protocol, "agent of another protocol refused");
            return Err(Error::FailedPrecondition(format!(
                "agent {} (gantry-agent {}) speaks protocol {} of the agent stream; this coordinator \
                 (version {}) speaks protocol {PROTOCOL}: install the coordinator's version of \
                 gantry-agent on that server",
                reg.name,
                match reg.version.as_str() {
                    "" => "of unknown version",
                    v => v,
                },
                reg.protocol,
                env!("CARGO_PKG_VERSION"),
            ))
            .into());
        }
        let (record, running) = registration(reg);
        if let Some(identity) = &identity {
            let checked = self.core.check_agent(identity, &record).await;
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
        outbox.hello(ToAgent::Registered {
            heartbeat: Duration::from_secs(self.core.config.heartbeat_secs),
            lease: Duration::from_secs(self.core.config.agent_lease_secs),
            protocol: PROTOCOL,
        });
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
        // Converted to the wire here, and only here.
        let wire = stream.map(|msg| Ok(proto::CoordinatorMessage::from(msg)));
        Ok(Response::new(Box::pin(wire)))
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

/// The identity in the client certificate TLS verified; a stream without
/// one is refused.
fn certificate_identity<T>(request: &Request<T>) -> Result<crate::trust::AgentIdentity, Error> {
    let certs = request.peer_certs();
    match certs.as_ref().and_then(|c| c.first()) {
        Some(cert) => crate::trust::identity(cert).map_err(Error::Unauthenticated),
        None => Err(Error::Unauthenticated(
            "agents must present the client certificate from `gantry-agent join`".into(),
        )),
    }
}

impl AgentService {
    /// `identity`, or its refusal, audited (from `remote`).
    async fn audit_identity(
        &self,
        identity: Result<crate::trust::AgentIdentity, Error>,
        remote: Option<std::net::SocketAddr>,
        peer: &str,
    ) -> Result<crate::trust::AgentIdentity, Status> {
        if let Err(e) = &identity {
            if self.core.auth.failure_worth_auditing(remote) {
                self.core
                    .audit(AuditEntry::new(
                        "unknown",
                        peer,
                        "agent-connect",
                        "coordinator",
                        false,
                        e.to_string(),
                    ))
                    .await;
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

/// Applies what the agent sends, in batches: every run of lines of a batch
/// is stored and what its lines report applied, then once all of them are
/// durable (the store commits them together) each job's highest line seq
/// is acknowledged, so an acknowledged line is always on disk, and so is
/// the stage or end it reported.
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
        let mut acks: HashMap<JobId, u64> = HashMap::new();
        let mut durable = Vec::new();
        let mut beat = false;
        let mut open = true;
        let mut applied = 0;
        loop {
            match next {
                Some(Ok(msg)) => match handle(core, from, &mut refused, msg).await {
                    Some(Applied::Event(job, seq, written)) => {
                        let acked = acks.entry(job).or_default();
                        *acked = (*acked).max(seq);
                        durable.extend(written);
                    }
                    Some(Applied::Heartbeat) => beat = true,
                    // Not stored, so not acknowledged: end the session, and
                    // the agent resends from these lines when it reconnects.
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
            if let Err(e) = Durable::all(durable).await {
                error!(error = %e, "cannot write events to disk; not acknowledging them");
                return;
            }
            for (job, seq) in acks {
                if outbox.send(ToAgent::Ack { job, seq }).await.is_err() {
                    return;
                }
            }
        }
        // Answered after anything sent to this session before (a cancel
        // above all): the agent commits a release only on an answer.
        if beat && outbox.send(ToAgent::HeartbeatAnswer).await.is_err() {
            return;
        }
        if !open {
            return;
        }
    }
}

/// What applying a message asks of the reader.
enum Applied {
    /// Acknowledge the job's lines up to this seq, once what applying
    /// them wrote (if anything) is durable.
    Event(JobId, u64, Option<Durable>),
    /// Answer the heartbeat (it asked).
    Heartbeat,
    /// The store failed to take an event (disk full, I/O error).
    Unstored,
}

/// Applies one message. Refused lines are acknowledged too: resending
/// them cannot change the answer. Lines of a job the session does not
/// hold are audited (the first for each job, up to
/// [`MAX_AUDITED_REFUSALS`] jobs in `refused`).
async fn handle(
    core: &Core,
    from: &Origin<'_>,
    refused: &mut HashSet<JobId>,
    msg: proto::AgentMessage,
) -> Option<Applied> {
    let (agent, session) = (&from.sender.agent, from.session);
    match FromAgent::try_from(msg) {
        Ok(FromAgent::Job(event)) => {
            let (job, seq) = (event.job, event.seq());
            let mut written = None;
            match core.apply_event(from.sender, event).await {
                Err(Error::Store(e)) if e.is_failure() => {
                    error!(%job, seq, error = %e, "cannot store a job event; dropping the stream");
                    return Some(Applied::Unstored);
                }
                Err(e @ Error::Unavailable(_)) => {
                    error!(%job, seq, error = %e, "cannot apply a job event; dropping the stream");
                    return Some(Applied::Unstored);
                }
                Err(e @ Error::NotHolder(_)) => {
                    warn!(%job, seq, error = %e, "job event refused");
                    if refused.len() < MAX_AUDITED_REFUSALS && refused.insert(job) {
                        let certificate = from.sender.certificate.as_deref().unwrap_or("none");
                        core.audit(AuditEntry::new(
                            format!("agent:{agent}"),
                            from.peer,
                            "agent-event",
                            format!("job {job}"),
                            false,
                            format!("{e} (certificate {certificate}); refused, nothing changed"),
                        ))
                        .await;
                    }
                }
                Err(e) => warn!(%job, seq, error = %e, "job event refused"),
                Ok(durable) => written = Some(durable),
            }
            Some(Applied::Event(job, seq, written))
        }
        // Malformed: nothing applied, but acknowledged so the agent's spool
        // moves past it instead of sending it on every reconnect.
        Err(e @ MessageError::Event { job, seq, .. }) => {
            warn!(job, seq, error = %e, "malformed job event refused");
            JobId::new(job)
                .ok()
                .map(|job| Applied::Event(job, seq, None))
        }
        Err(e) => {
            warn!(error = %e, "malformed message from agent refused");
            None
        }
        Ok(FromAgent::Drain) => match core.drain_agent(agent, session).await {
            Ok(()) => None,
            Err(_) => Some(Applied::Unstored),
        },
        Ok(FromAgent::Heartbeat { answer: true }) => Some(Applied::Heartbeat),
        Ok(FromAgent::Heartbeat { answer: false }) => None,
        Ok(FromAgent::Output(output)) => {
            core.tails.deliver(agent, output);
            None
        }
        Ok(FromAgent::Register(_)) => {
            warn!("Register sent twice; ignored");
            None
        }
    }
}
