//! The connected agents and the jobs they hold: the in-memory side of
//! scheduling. Placement is decided here, in one function, from this state
//! alone; `core` persists what it decides.

use std::{
    collections::{BTreeSet, HashMap},
    time::Instant,
};

use gantry_shared::{messages::ToAgent, AgentName, AppName, EnvName, JobId};
use tokio::sync::mpsc;

use crate::job::{AgentRecord, JobRecord};

/// Messages queued to one agent's stream. Assignments and cancels are rare
/// and small; 64 is far beyond what a healthy agent leaves unread, and a full
/// queue marks the agent as unable to take more work rather than growing.
pub const AGENT_OUTBOX: usize = 64;

/// What an agent's stream sends: messages in a bounded queue, and cancels
/// in a lane of their own, unbounded and sent ahead of anything queued.
/// A cancel is therefore never dropped for want of room (a busy log
/// stream fills the queue with acknowledgements), and it always reaches
/// the agent before any heartbeat answer queued after it: the agent
/// commits a release only on such an answer (see `gantry_agent::lease`).
/// The messages are domain ones; the agent service converts them.
#[derive(Clone)]
pub struct Outbox {
    messages: mpsc::Sender<ToAgent>,
    cancels: mpsc::UnboundedSender<ToAgent>,
}

/// A message was not queued: no room, or the stream has ended.
#[derive(Debug)]
pub struct NotQueued;

/// The stream an [`Outbox`] feeds.
pub type OutStream = std::pin::Pin<Box<dyn futures::Stream<Item = ToAgent> + Send>>;

impl Outbox {
    /// A new outbox and the stream of what it sends.
    pub fn new() -> (Self, OutStream) {
        use futures::stream::{select_with_strategy, PollNext};
        use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
        let (messages, queued) = mpsc::channel(AGENT_OUTBOX);
        let (cancels, cancelled) = mpsc::unbounded_channel();
        let stream = select_with_strategy(
            UnboundedReceiverStream::new(cancelled),
            ReceiverStream::new(queued),
            |_: &mut ()| PollNext::Left,
        );
        (Self { messages, cancels }, Box::pin(stream))
    }

    /// Queues `message` unless the queue is full.
    pub fn try_send(&self, message: ToAgent) -> Result<(), NotQueued> {
        self.messages.try_send(message).map_err(|_| NotQueued)
    }

    /// Queues `message`, waiting for room.
    pub async fn send(&self, message: ToAgent) -> Result<(), NotQueued> {
        self.messages.send(message).await.map_err(|_| NotQueued)
    }

    /// Room left in the queue.
    pub fn capacity(&self) -> usize {
        self.messages.capacity()
    }

    /// Sends the session's first message, `Registered`: ahead of everything,
    /// cancels included, as the agent expects.
    pub fn hello(&self, message: ToAgent) {
        let _ = self.cancels.send(message);
    }

    /// Tells the agent to stop `job`, ahead of everything queued. If the
    /// stream closes first, the agent is told again when it reconnects
    /// (see `scheduler::agents`).
    pub fn cancel(&self, job: JobId) {
        let _ = self.cancels.send(ToAgent::Cancel(job));
    }
}

/// An agent with an open stream.
pub struct Session {
    /// Distinguishes this stream from an earlier one of the same agent.
    pub id: u64,
    /// What the agent said of itself.
    pub record: AgentRecord,
    /// Jobs it holds now.
    pub jobs: BTreeSet<JobId>,
    /// Where to push messages.
    pub outbox: Outbox,
    /// When it last said anything.
    pub last_seen: Instant,
    /// The agent is shutting down: place nothing on it.
    pub draining: bool,
    /// Fired when the session is dropped, so its reader stops at once.
    pub closed: tokio_util::sync::CancellationToken,
    /// The serial of the certificate it attached with (`None`: plaintext).
    pub certificate: Option<String>,
}

/// Who sends a session's events: what its certificate (or, in plaintext,
/// its registration) says it is. A job's events count only from the
/// sender that holds the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Sender {
    /// The agent's name.
    pub agent: AgentName,
    /// Its environment.
    pub env: EnvName,
    /// The serial of its certificate (`None`: plaintext).
    pub certificate: Option<String>,
}

impl Sender {
    /// Whether this sender is the holder that `agent`, `env` and
    /// `certificate` describe. A holder recorded without a certificate (by
    /// a coordinator before this check existed, or in plaintext) is known
    /// by its name and environment alone.
    pub fn is(&self, agent: &AgentName, env: &EnvName, certificate: Option<&str>) -> bool {
        &self.agent == agent
            && &self.env == env
            && certificate.is_none_or(|c| self.certificate.as_deref() == Some(c))
    }
}

/// An active (assigned or running) job's placement.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The app it deploys.
    pub app: AppName,
    /// The environment it deploys to.
    pub env: EnvName,
    /// The agent holding it.
    pub agent: AgentName,
    /// The serial of the certificate that agent's session attached with.
    pub certificate: Option<String>,
}

impl Placement {
    /// `job` held by `agent`'s session of `certificate`.
    pub fn of(job: &JobRecord, agent: AgentName, certificate: Option<String>) -> Self {
        Self {
            app: job.app.clone(),
            env: job.env.clone(),
            agent,
            certificate,
        }
    }

    /// Whether `sender` is the session that holds this job.
    pub fn held_by(&self, sender: &Sender) -> bool {
        sender.is(&self.agent, &self.env, self.certificate.as_deref())
    }
}

/// What the placement pass decided for one queued job.
pub enum Decision {
    /// Give it to this agent.
    Assign(AgentName),
    /// Leave it queued, for this reason.
    Wait(String),
}

/// Connected agents, queued jobs and active jobs.
#[derive(Default)]
pub struct Fleet {
    /// Agents with an open stream.
    pub sessions: HashMap<AgentName, Session>,
    /// Source of session ids.
    pub next_session: u64,
    /// Jobs waiting for an agent, oldest first.
    pub queued: BTreeSet<JobId>,
    /// Jobs on an agent.
    pub active: HashMap<JobId, Placement>,
    /// Agents holding active jobs whose stream is closed, and since when.
    pub lost_since: HashMap<AgentName, Instant>,
}

impl Fleet {
    /// Where `job` should go now.
    pub fn decide(&self, job: &JobRecord) -> Decision {
        if let Some((other, _)) = self
            .active
            .iter()
            .find(|(id, p)| **id != job.id && p.app == job.app && p.env == job.env)
        {
            return Decision::Wait(format!(
                "waiting for job {other}, which is deploying {} to {}",
                job.app, job.env
            ));
        }
        let in_env: Vec<&Session> = self
            .sessions
            .values()
            .filter(|s| s.record.env == job.env && !s.draining)
            .collect();
        if in_env.is_empty() {
            return Decision::Wait(format!("no agent connected for env {}", job.env));
        }
        match in_env
            .iter()
            .filter(|s| (s.jobs.len() as u32) < s.record.capacity && s.outbox.capacity() > 0)
            .min_by_key(|s| (s.jobs.len(), s.record.name.clone()))
        {
            Some(session) => Decision::Assign(session.record.name.clone()),
            None => Decision::Wait(format!(
                "all {} agent(s) of env {} are busy",
                in_env.len(),
                job.env
            )),
        }
    }

    /// Active jobs held by `agent`.
    pub fn jobs_of(&self, agent: &AgentName) -> Vec<JobId> {
        self.active
            .iter()
            .filter(|(_, p)| &p.agent == agent)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forgets an active job wherever it was.
    pub fn release(&mut self, job: JobId) -> Option<Placement> {
        let placement = self.active.remove(&job)?;
        if let Some(session) = self.sessions.get_mut(&placement.agent) {
            session.jobs.remove(&job);
        }
        if self.jobs_of(&placement.agent).is_empty() {
            self.lost_since.remove(&placement.agent);
        }
        Some(placement)
    }
}
