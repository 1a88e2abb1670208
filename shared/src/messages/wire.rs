//! Conversions between the messages of this module and `gantry.v1`'s:
//! fallible from the wire (a peer's values are checked), plain to it.

use std::time::Duration;

use super::{
    ContainerOutput, Event, Finished, FromAgent, JobEvent, LogLine, LogStream, MessageError,
    Registration, TailRequest, ToAgent,
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

fn event_body(body: Option<proto::job_event::Body>) -> Result<Event, MessageError> {
    use proto::job_event::Body;
    Ok(
        match body.ok_or(MessageError::Missing("the event's body"))? {
            Body::Stage(stage) => Event::Stage(
                optional_stage(stage)?.ok_or(MessageError::Missing("the stage entered"))?,
            ),
            Body::Log(line) => Event::Lines(vec![line.try_into()?]),
            Body::Lines(batch) if batch.lines.is_empty() => {
                return Err(MessageError::Missing("the batch's lines"))
            }
            Body::Lines(batch) => Event::Lines(lines_from(batch.lines)?),
            Body::Finished(done) => Event::Finished(done.try_into()?),
        },
    )
}

impl TryFrom<proto::JobEvent> for JobEvent {
    type Error = MessageError;

    /// Checks an event; a refused one is [`MessageError::Event`], naming
    /// the job and seq it was sent as.
    fn try_from(event: proto::JobEvent) -> Result<Self, MessageError> {
        let (job, seq) = (event.job_id, event.seq);
        let checked = || -> Result<Self, MessageError> {
            if seq == 0 {
                return Err(MessageError::invalid("seq", "events are numbered from 1"));
            }
            Ok(Self {
                job: JobId::new(job)?,
                seq,
                body: event_body(event.body)?,
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
    /// Lines travel as a batch, however many.
    fn from(event: JobEvent) -> Self {
        use proto::job_event::Body;
        let body = match event.body {
            Event::Stage(stage) => Body::Stage(stage.to_proto() as i32),
            Event::Lines(lines) => Body::Lines(proto::LogBatch::from(
                lines
                    .into_iter()
                    .map(proto::LogLine::from)
                    .collect::<Vec<_>>(),
            )),
            Event::Finished(done) => Body::Finished(done.into()),
        };
        Self {
            job_id: event.job.get(),
            seq: event.seq,
            body: Some(body),
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
            ToAgent::Registered { heartbeat, lease } => {
                CoordinatorBody::Registered(proto::Registered {
                    heartbeat_interval_ms: millis(heartbeat),
                    lease_ms: millis(lease),
                })
            }
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
        });
        lines.push(LogLine {
            timestamp_ms: -1,
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
        let events = [
            Event::Stage(Stage::Health),
            Event::Lines(vec![line(4, "a"), line(5, "b")]),
            Event::Finished(Finished {
                state: JobState::Failed,
                summary: "exit 1".into(),
                url: String::new(),
                image: "shop:dev-1".into(),
                container: String::new(),
            }),
        ];
        for body in events {
            let event = JobEvent {
                job: JobId::new(9).unwrap(),
                seq: 12,
                body,
            };
            let message = FromAgent::Job(event.clone());
            let back = FromAgent::try_from(proto::AgentMessage::from(message.clone())).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn a_bad_event_is_refused_naming_its_job_and_seq() {
        use proto::job_event::Body;
        let bad = [
            (Some(Body::Stage(0)), "the stage entered is missing"),
            (Some(Body::Stage(99)), "stage is invalid"),
            (None, "the event's body is missing"),
            (
                Some(Body::Lines(proto::LogBatch::default())),
                "the batch's lines is missing",
            ),
            (
                Some(Body::Log(proto::LogLine {
                    stream: 9,
                    ..Default::default()
                })),
                "the line's stream is invalid",
            ),
            (
                Some(Body::Finished(proto::JobFinished {
                    state: proto::JobState::Running as i32,
                    ..Default::default()
                })),
                "cannot end on an agent in state 3",
            ),
        ];
        for (body, says) in bad {
            let event = proto::JobEvent {
                job_id: 3,
                seq: 8,
                body,
            };
            let err = JobEvent::try_from(event).unwrap_err();
            assert!(
                matches!(err, MessageError::Event { job: 3, seq: 8, .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains(says), "{err} should say {says:?}");
        }
        let zero = proto::JobEvent {
            job_id: 0,
            seq: 1,
            body: Some(Body::Stage(1)),
        };
        assert!(JobEvent::try_from(zero).is_err());
    }

    #[test]
    fn coordinator_messages_go_and_come_back_unchanged() {
        let messages = [
            ToAgent::Registered {
                heartbeat: Duration::from_secs(5),
                lease: Duration::ZERO,
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
