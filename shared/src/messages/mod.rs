//! What agents and the coordinator say to each other, as domain types.
//!
//! The proto messages of `gantry.v1.AgentService` stop at the two edges that
//! speak them: the coordinator's agent service and the agent's connection.
//! Each converts what it receives with `TryFrom` (a peer's values are
//! checked here, once, and a bad one is a [`MessageError`] that names it)
//! and what it sends with `From`. Everything behind the edges (the agent's
//! job, reporter, spool and batching; the coordinator's core and store)
//! works with the types of this module, whose values are known to be valid.

mod assignment;
mod wire;

use std::{collections::BTreeMap, collections::BTreeSet, time::Duration};

use prost::encoding;

pub use assignment::{AppSpec, Assignment, BranchCommit, BranchSet, ImageSource};

use crate::{AgentName, EnvName, JobId, JobState, NameError, Stage};

/// The version of the agent stream's protocol that this build speaks: 2
/// since every event is a line of the job's log (one seq per job). Agents
/// and coordinators of different versions refuse each other, each naming
/// what to upgrade, rather than misread the other's events: an agent
/// keeps its spool until it reaches a coordinator of its own protocol.
pub const PROTOCOL: u32 = 2;

/// A message from the coordinator to an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum ToAgent {
    /// The answer to [`FromAgent::Register`].
    Registered {
        /// How often the agent sends a heartbeat.
        heartbeat: Duration,
        /// The agent's lease ([`Duration::ZERO`]: the coordinator holds none).
        lease: Duration,
        /// The coordinator's [`PROTOCOL`] (0: one from before it was sent).
        protocol: u32,
    },
    /// Work to do now (boxed: an assignment is much larger than the rest).
    Assign(Box<Assignment>),
    /// Stop a job and clean up what it created.
    Cancel(JobId),
    /// The coordinator has durably stored and applied `job`'s lines up
    /// to `seq`.
    Ack {
        /// The job.
        job: JobId,
        /// The highest line seq stored and applied.
        seq: u64,
    },
    /// Send a running container's output.
    Tail(TailRequest),
    /// Stop sending the output of this tail request.
    StopTail(u64),
    /// The answer to a heartbeat that asked for one.
    HeartbeatAnswer,
}

/// A message from an agent to the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum FromAgent {
    /// The first message of every stream.
    Register(Registration),
    /// The agent lives; `answer` asks the coordinator to say it still
    /// holds the session.
    Heartbeat {
        /// Whether an answer is wanted.
        answer: bool,
    },
    /// Lines of a job the agent holds, with its stages and end.
    Job(JobEvent),
    /// The agent is shutting down: place nothing new on it.
    Drain,
    /// Output of a running container, answering a [`TailRequest`].
    Output(ContainerOutput),
}

/// An agent introducing itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its name.
    pub name: AgentName,
    /// The environment it deploys to.
    pub env: EnvName,
    /// Free-form labels, shown by `gantry agents`.
    pub labels: BTreeMap<String, String>,
    /// How many jobs it runs at once.
    pub capacity: u32,
    /// Its version.
    pub version: String,
    /// Jobs it still works on (after a reconnect).
    pub running: BTreeSet<JobId>,
    /// The agent's [`PROTOCOL`] (0: one from before it was sent).
    pub protocol: u32,
}

/// A run of a job's log: the job's one event stream on its servers. A
/// stage change is a line that [opens](LogLine::opens_stage) the stage,
/// and the end of a server's part rides the last line of its run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// The job.
    pub job: JobId,
    /// Consecutive lines of the job's log, in seq order; never empty.
    pub lines: Vec<LogLine>,
    /// The server's part of the job ended with the last of `lines`.
    pub finished: Option<Finished>,
}

impl JobEvent {
    /// One line of `job`'s log, ending the server's part if `finished`.
    pub fn line(job: JobId, line: LogLine, finished: Option<Finished>) -> Self {
        Self {
            job,
            lines: vec![line],
            finished,
        }
    }

    /// The seq of its last line: what acknowledging it names.
    pub fn seq(&self) -> u64 {
        self.lines.last().map_or(0, |l| l.seq)
    }

    /// The seq of its first line.
    pub fn first_seq(&self) -> u64 {
        self.lines.first().map_or(0, |l| l.seq)
    }

    /// About how many bytes the event takes encoded: what the spool counts
    /// against its bound.
    pub fn size(&self) -> usize {
        let lines: usize = self.lines.iter().map(LogLine::field_len).sum();
        let done = self.finished.as_ref().map_or(0, |done| {
            done.summary.len() + done.url.len() + done.image.len() + done.container.len() + 10
        });
        lines + done + 2 * 11
    }
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// A process's or container's standard output.
    Stdout,
    /// A process's or container's standard error.
    Stderr,
    /// A line Gantry wrote itself.
    System,
}

/// One line of a job's log or a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position in the job's log, from 1 with no gaps (0 in a container's
    /// output, which is not numbered).
    pub seq: u64,
    /// When the agent saw it, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The stage that produced it (none before the first, and in a
    /// container's output).
    pub stage: Option<Stage>,
    /// Which output it came from; `None` when the sender did not say
    /// (Gantry's agent always does; simpler clients, such as the
    /// benchmark's, may not).
    pub stream: Option<LogStream>,
    /// The text, without its newline.
    pub text: String,
    /// The job entered [`LogLine::stage`] at this line: how an agent
    /// reports a stage change (never set on a stored line, nor in a
    /// container's output).
    pub opens_stage: bool,
}

impl LogLine {
    /// Exactly the bytes prost encodes this line's `gantry.v1.LogLine` in
    /// (fields at their default are left out, as prost does), so messages
    /// can be cut to size without encoding them first.
    pub fn encoded_len(&self) -> usize {
        let mut len = 0;
        if self.seq != 0 {
            len += encoding::uint64::encoded_len(1, &self.seq);
        }
        if self.timestamp_ms != 0 {
            len += encoding::int64::encoded_len(2, &self.timestamp_ms);
        }
        if let Some(stage) = self.stage {
            len += encoding::int32::encoded_len(3, &(stage.to_proto() as i32));
        }
        if let Some(stream) = self.stream {
            let stream = crate::proto::LogStream::from(stream) as i32;
            len += encoding::int32::encoded_len(4, &stream);
        }
        if !self.text.is_empty() {
            len += encoding::string::encoded_len(5, &self.text);
        }
        if self.opens_stage {
            len += encoding::bool::encoded_len(6, &true);
        }
        len
    }

    /// What the line adds to a message's repeated lines field (field 1 of a
    /// `LogBatch`, field 2 of a `ContainerOutput`: both one-byte keys).
    pub fn field_len(&self) -> usize {
        let len = self.encoded_len();
        encoding::key_len(1) + encoding::encoded_len_varint(len as u64) + len
    }
}

/// How a job ended on its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Succeeded, failed or cancelled (nothing else ends a job on an agent).
    pub state: JobState,
    /// One line for people: why it failed, or what now serves.
    pub summary: String,
    /// Where the new release answers (on success).
    pub url: String,
    /// The image built.
    pub image: String,
    /// The container now serving (on success).
    pub container: String,
}

impl Finished {
    /// Whether an agent may end a job in `state`.
    pub fn can_end_in(state: JobState) -> bool {
        matches!(
            state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A request for a running container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRequest {
    /// Names the answers.
    pub request_id: u64,
    /// The app whose container is read.
    pub app: crate::AppName,
    /// Recent lines to send first.
    pub tail: u32,
    /// Keep sending new lines until stopped.
    pub follow: bool,
}

/// Lines of a container's output, answering a [`TailRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerOutput {
    /// The request answered.
    pub request_id: u64,
    /// The lines, in order.
    pub lines: Vec<LogLine>,
    /// Nothing more comes for this request.
    pub end: bool,
    /// Why there is no output, if there is none.
    pub error: Option<String>,
}

/// Why a message from a peer was refused; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A message, or a field that must be set, is empty.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A name or id is malformed.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A field holds a value the protocol does not allow.
    #[error("{field} is invalid: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A job event that cannot be applied, named so it can still be
    /// acknowledged: resending it cannot make it valid.
    #[error("the lines to {seq} of job {job} are refused: {why}")]
    Event {
        /// The job, as sent.
        job: u64,
        /// The seq of the event's last line, as sent (0 if it has none).
        seq: u64,
        /// Why.
        why: Box<MessageError>,
    },
    /// A tail request that cannot be served, named so the agent can
    /// answer it (the operator waiting on it then learns why).
    #[error("tail request {request_id} is refused: {why}")]
    Tail {
        /// The request.
        request_id: u64,
        /// Why.
        why: String,
    },
    /// An assignment that cannot be run, named so the agent can report
    /// the job failed. Its text never holds the job's secrets.
    #[error("job {job} cannot be run: {why}")]
    Assignment {
        /// The job.
        job: JobId,
        /// Where the job's log goes on (see [`Assignment::first_seq`]).
        first_seq: u64,
        /// Why, with the job's secrets replaced.
        why: String,
    },
}

impl MessageError {
    fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            why: why.into(),
        }
    }
}
