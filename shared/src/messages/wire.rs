//! Conversions between the messages of this module and `gantry.v1`'s:
//! fallible from the wire (a peer's values are checked), plain to it.

use std::time::Duration;

use super::{
    ContainerOutput, Finished, FromAgent, JobEvent, LogLine, LogStream, MessageError, Registration,
    TailRequest, ToAgent,
};
use crate::{proto, AgentName, AppName, EnvName, JobId, JobState, Stage};

use proto::{agent_message::Body as AgentBody, coordinator_message::Body as CoordinatorBody};

impl From<LogStream> for proto::LogStream {
    fn from(stream: LogStream) -> Self {
        match stream {
            LogStream::Stdout => proto::LogStream::Stdout,
            LogStream::Stderr => proto::LogStream::Stderr,
            LogStream::System => proto::LogStream::System,
        }
    }
}

fn stream_from(value: i32) -> Result<Option<LogStream>, MessageError> {
    match proto::LogStream::try_from(value) {
        Ok(proto::LogStream::Unspecified) => Ok(None),
        Ok(proto::LogStream::Stdout) => Ok(Some(LogStream::Stdout)),
        Ok(proto::LogStream::Stderr) => Ok(Some(LogStream::Stderr)),
        Ok(proto::LogStream::System) => Ok(Some(LogStream::System)),
        Err(_) => Err(MessageError::invalid(
            "the line's stream",
            format!("{value} is not stdout, stderr or system"),
        )),
    }
}

/// A stage that may be unset (a line before the first stage).
fn optional_stage(value: i32) -> Result<Option<Stage>, MessageError> {
    match value {
        0 => Ok(None),
        v => Stage::from_proto(v)
            .map(Some)
            .ok_or_else(|| MessageError::invalid("stage", format!("{v} is not a stage"))),
    }
}

impl TryFrom<proto::LogLine> for LogLine {
    type Error = MessageError;

    fn try_from(line: proto::LogLine) -> Result<Self, MessageError> {
        Ok(Self {
            seq: line.seq,
            timestamp_ms: line.timestamp_ms,
            stage: optional_stage(line.stage)?,
            stream: stream_from(line.stream)?,
            text: line.text,
            opens_stage: line.opens_stage,
        })
    }
}

impl From<LogLine> for proto::LogLine {
    fn from(line: LogLine) -> Self {
        Self {
            seq: line.seq,
            timestamp_ms: line.timestamp_ms,
            stage: line
                .stage
                .map_or(proto::Stage::Unspecified, Stage::to_proto) as i32,
            stream: line
                .stream
                .map_or(proto::LogStream::Unspecified, proto::LogStream::from)
                as i32,
            text: line.text,
            opens_stage: line.opens_stage,
        }
    }
}

fn lines_from(lines: Vec<proto::LogLine>) -> Result<Vec<LogLine>, MessageError> {
    lines.into_iter().map(LogLine::try_from).collect()
}

impl TryFrom<proto::JobFinished> for Finished {
    type Error = MessageError;

    fn try_from(done: proto::JobFinished) -> Result<Self, MessageError> {
        let state = JobState::from_proto(done.state)
            .filter(|s| Finished::can_end_in(*s))
            .ok_or_else(|| {
                MessageError::invalid(
                    "the job's end state",
                    format!("a job cannot end on an agent in state {}", done.state),
                )
            })?;
        Ok(Self {
            state,
            summary: done.summary,
            url: done.url,
            image: done.image,
            container: done.container,
        })
    }
}

impl From<Finished> for proto::JobFinished {
    fn from(done: Finished) -> Self {
        Self {
            state: done.state.to_proto() as i32,
            summary: done.summary,
            url: done.url,
            image: done.image,
            container: done.container,
        }
    }
}

/// Checks a job's run of lines: numbered from 1, consecutive, and a line
/// that opens a stage names it.
fn job_lines(lines: Vec<proto::LogLine>) -> Result<Vec<LogLine>, MessageError> {
    if lines.is_empty() {
        return Err(MessageError::Missing("the event's lines"));
    }
    let lines = lines_from(lines)?;
    if lines[0].seq == 0 {
        return Err(MessageError::invalid("seq", "lines are numbered from 1"));
    }
    if let Some(pair) = lines.windows(2).find(|p| p[1].seq != p[0].seq + 1) {
        return Err(MessageError::invalid(
            "seq",
            format!("line {} follows line {}", pair[1].seq, pair[0].seq),
        ));
    }
    if lines.iter().any(|l| l.opens_stage && l.stage.is_none()) {
        return Err(MessageError::Missing("the stage a line opens"));
    }
    Ok(lines)
}

impl TryFrom<proto::JobEvent> for JobEvent {
    type Error = MessageError;

    /// Checks an event; a refused one is [`MessageError::Event`], naming
    /// the job and the seq of its last line as sent.
    fn try_from(event: proto::JobEvent) -> Result<Self, MessageError> {
        let job = event.job_id;
        let lines = event.lines.map(|batch| batch.lines).unwrap_or_default();
        let seq = lines.last().map_or(0, |l| l.seq);
        let checked = || -> Result<Self, MessageError> {
            Ok(Self {
                job: JobId::new(job)?,
                lines: job_lines(lines)?,
                finished: event.finished.map(Finished::try_from).transpose()?,
            })
        };
        checked().map_err(|why| MessageError::Event {
            job,
            seq,
            why: Box::new(why),
        })
    }
}

impl From<JobEvent> for proto::JobEvent {
    fn from(event: JobEvent) -> Self {
        let lines: Vec<proto::LogLine> = event.lines.into_iter().map(Into::into).collect();
        Self {
            job_id: event.job.get(),
            lines: Some(lines.into()),
            finished: event.finished.map(Into::into),
        }
    }
}

impl TryFrom<proto::Register> for Registration {
    type Error = MessageError;

    fn try_from(reg: proto::Register) -> Result<Self, MessageError> {
        Ok(Self {
            name: AgentName::new(reg.name)?,
            env: EnvName::new(reg.env)?,
            labels: reg.labels.into_iter().collect(),
            capacity: reg.capacity,
            version: reg.version,
            running: reg
                .running_jobs
                .into_iter()
                .map(JobId::new)
                .collect::<Result<_, _>>()?,
            protocol: reg.protocol,
        })
    }
}

impl From<Registration> for proto::Register {
    fn from(reg: Registration) -> Self {
        Self {
            name: reg.name.into(),
            env: reg.env.into(),
            labels: reg.labels.into_iter().collect(),
            capacity: reg.capacity,
            version: reg.version,
            running_jobs: reg.running.into_iter().map(JobId::get).collect(),
            protocol: reg.protocol,
        }
    }
}

impl TryFrom<proto::ContainerOutput> for ContainerOutput {
    type Error = MessageError;

    fn try_from(out: proto::ContainerOutput) -> Result<Self, MessageError> {
        Ok(Self {
            request_id: out.request_id,
            lines: lines_from(out.lines)?,
            end: out.end,
            error: (!out.error.is_empty()).then_some(out.error),
        })
    }
}

impl From<ContainerOutput> for proto::ContainerOutput {
    fn from(out: ContainerOutput) -> Self {
        Self {
            request_id: out.request_id,
            lines: out.lines.into_iter().map(Into::into).collect(),
            end: out.end,
            error: out.error.unwrap_or_default(),
        }
    }
}

impl TryFrom<proto::AgentMessage> for FromAgent {
    type Error = MessageError;

    fn try_from(msg: proto::AgentMessage) -> Result<Self, MessageError> {
        Ok(
            match msg
                .body
                .ok_or(MessageError::Missing("the message's body"))?
            {
                AgentBody::Register(reg) => FromAgent::Register(reg.try_into()?),
                AgentBody::Heartbeat(beat) => FromAgent::Heartbeat {
                    answer: beat.answer,
                },
                AgentBody::JobEvent(event) => FromAgent::Job(event.try_into()?),
                AgentBody::Drain(_) => FromAgent::Drain,
                AgentBody::Output(out) => FromAgent::Output(out.try_into()?),
            },
        )
    }
}

impl From<FromAgent> for proto::AgentMessage {
    fn from(msg: FromAgent) -> Self {
        let body = match msg {
            FromAgent::Register(reg) => AgentBody::Register(reg.into()),
            FromAgent::Heartbeat { answer } => AgentBody::Heartbeat(proto::Heartbeat { answer }),
            FromAgent::Job(event) => AgentBody::JobEvent(event.into()),
            FromAgent::Drain => AgentBody::Drain(proto::Drain {}),
            FromAgent::Output(out) => AgentBody::Output(out.into()),
        };
        Self { body: Some(body) }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TryFrom<proto::CoordinatorMessage> for ToAgent {
    type Error = MessageError;

    fn try_from(msg: proto::CoordinatorMessage) -> Result<Self, MessageError> {
        Ok(
            match msg
                .body
                .ok_or(MessageError::Missing("the message's body"))?
            {
                CoordinatorBody::Registered(r) => ToAgent::Registered {
                    heartbeat: Duration::from_millis(r.heartbeat_interval_ms),
                    lease: Duration::from_millis(r.lease_ms),
                    protocol: r.protocol,
                },
                CoordinatorBody::Assign(spec) => ToAgent::Assign(Box::new(spec.try_into()?)),
                CoordinatorBody::Cancel(c) => ToAgent::Cancel(JobId::new(c.job_id)?),
                CoordinatorBody::Ack(ack) => ToAgent::Ack {
                    job: JobId::new(ack.job_id)?,
                    seq: ack.seq,
                },
                CoordinatorBody::Tail(ask) => ToAgent::Tail(TailRequest {
                    request_id: ask.request_id,
                    app: AppName::new(ask.app).map_err(|e| MessageError::Tail {
                        request_id: ask.request_id,
                        why: e.to_string(),
                    })?,
                    tail: ask.tail,
                    follow: ask.follow,
                }),
                CoordinatorBody::StopTail(stop) => ToAgent::StopTail(stop.request_id),
                CoordinatorBody::Heartbeat(_) => ToAgent::HeartbeatAnswer,
            },
        )
    }
}

impl From<ToAgent> for proto::CoordinatorMessage {
    fn from(msg: ToAgent) -> Self {
        let body = match msg {
            ToAgent::Registered {
                heartbeat,
                lease,
                protocol,
            } => CoordinatorBody::Registered(proto::Registered {
                heartbeat_interval_ms: millis(heartbeat),
                lease_ms: millis(lease),
                protocol,
            }),
            ToAgent::Assign(a) => CoordinatorBody::Assign((*a).into()),
            ToAgent::Cancel(job) => CoordinatorBody::Cancel(proto::CancelJob { job_id: job.get() }),
            ToAgent::Ack { job, seq } => CoordinatorBody::Ack(proto::Ack {
                job_id: job.get(),
                seq,
            }),
            ToAgent::Tail(t) => CoordinatorBody::Tail(proto::TailContainer {
                request_id: t.request_id,
                app: t.app.into(),
                tail: t.tail,
                follow: t.follow,
            }),
            ToAgent::StopTail(request_id) => {
                CoordinatorBody::StopTail(proto::StopTail { request_id })
            }
            ToAgent::HeartbeatAnswer => {
                CoordinatorBody::Heartbeat(proto::Heartbeat { answer: false })
            }
        };
        Self { body: Some(body) }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn line(seq: u64, text: &str) -> LogLine {
        LogLine {
            seq,
            timestamp_ms: 1_700_000_000_000,
            stage: Some(Stage::Build),
            stream: Some(LogStream::Stderr),
            text: text.into(),
            opens_stage: false,
        }
    }

    #[test]
    fn encoded_len_is_prost_s() {
        let mut lines = vec![line(1, "x"), line(u64::MAX, &"é".repeat(5000))];
        lines.push(LogLine {
            seq: 0,
            timestamp_ms: 0,
            stage: None,
            stream: None,
            text: String::new(),
            opens_stage: false,
        });
        lines.push(LogLine {
            timestamp_ms: -1,
            opens_stage: true,
            ..line(7, "neg")
        });
        for l in lines {
            assert_eq!(
                l.encoded_len(),
                proto::LogLine::from(l.clone()).encoded_len()
            );
        }
    }

    #[test]
    fn a_job_event_goes_and_comes_back_unchanged() {
        let done = Finished {
            state: JobState::Failed,
            summary: "exit 1".into(),
            url: String::new(),
            image: "shop:dev-1".into(),
            container: String::new(),
        };
        let opening = LogLine {
            opens_stage: true,
            ..line(4, "==> health")
        };
        for (lines, finished) in [
            (vec![opening, line(5, "b")], None),
            (vec![line(12, "==> failed: exit 1")], Some(done)),
        ] {
            let event = JobEvent {
                job: JobId::new(9).unwrap(),
                lines,
                finished,
            };
            let message = FromAgent::Job(event.clone());
            let back = FromAgent::try_from(proto::AgentMessage::from(message.clone())).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn a_bad_event_is_refused_naming_its_job_and_last_seq() {
        let ok = |seq| proto::LogLine::from(line(seq, "x"));
        let batch = |lines: Vec<proto::LogLine>| Some(proto::LogBatch::from(lines));
        let bad = [
            (
                batch(vec![ok(7), ok(8)]),
                Some(proto::JobFinished {
                    state: proto::JobState::Running as i32,
                    ..Default::default()
                }),
                "cannot end on an agent in state 3",
            ),
            (batch(vec![ok(6), ok(8)]), None, "line 8 follows line 6"),
            (
                batch(vec![proto::LogLine { stream: 9, ..ok(8) }]),
                None,
                "the line's stream is invalid",
            ),
            (
                batch(vec![proto::LogLine { stage: 99, ..ok(8) }]),
                None,
                "stage is invalid",
            ),
            (
                batch(vec![proto::LogLine {
                    stage: 0,
                    opens_stage: true,
                    ..ok(8)
                }]),
                None,
                "the stage a line opens is missing",
            ),
        ];
        for (lines, finished, says) in bad {
            let event = proto::JobEvent {
                job_id: 3,
                lines,
                finished,
            };
            let err = JobEvent::try_from(event).unwrap_err();
            assert!(
                matches!(err, MessageError::Event { job: 3, seq: 8, .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains(says), "{err} should say {says:?}");
        }
        for (job_id, lines) in [(3, None), (3, batch(vec![ok(0)])), (0, batch(vec![ok(1)]))] {
            let event = proto::JobEvent {
                job_id,
                lines,
                finished: None,
            };
            assert!(JobEvent::try_from(event).is_err());
        }
    }

    #[test]
    fn coordinator_messages_go_and_come_back_unchanged() {
        let messages = [
            ToAgent::Registered {
                heartbeat: Duration::from_secs(5),
                lease: Duration::ZERO,
                protocol: crate::messages::PROTOCOL,
            },
            ToAgent::Cancel(JobId::new(4).unwrap()),
            ToAgent::Ack {
                job: JobId::new(4).unwrap(),
                seq: 77,
            },
            ToAgent::StopTail(3),
            ToAgent::HeartbeatAnswer,
            ToAgent::Tail(TailRequest {
                request_id: 8,
                app: AppName::new("shop").unwrap(),
                tail: 100,
                follow: true,
            }),
        ];
        for message in messages {
            let back = ToAgent::try_from(proto::CoordinatorMessage::from(message.clone()));
            assert_eq!(back.unwrap(), message);
        }
        let bad = proto::CoordinatorMessage {
            body: Some(CoordinatorBody::Tail(proto::TailContainer {
                request_id: 8,
                app: "../etc".into(),
                ..Default::default()
            })),
        };
        assert!(matches!(
            ToAgent::try_from(bad),
            Err(MessageError::Tail { request_id: 8, .. })
        ));
    }
}
