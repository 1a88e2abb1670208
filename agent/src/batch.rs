//! How the agent's output becomes messages: runs of one job's log lines
//! travel as one [`proto::LogBatch`] event, a container's output as
//! [`proto::ContainerOutput`]s, and no message is larger than
//! [`MAX_AGENT_MESSAGE_BYTES`], however long its lines (the coordinator ends
//! a stream that sends more than its cap, and a batch that never fits would
//! be sent again forever).
//!
//! Single events fit by construction: a line's text is cut at
//! [`gantry_shared::limits::MAX_LOG_LINE_BYTES`], a job's summary at
//! [`MAX_SUMMARY_BYTES`] and its other fields at [`MAX_FIELD_BYTES`]
//! (see [`crate::report`]).

use gantry_shared::{
    limits::{MAX_AGENT_MESSAGE_BYTES, MAX_FIELD_BYTES, MAX_LOG_LINE_BYTES, MAX_SUMMARY_BYTES},
    proto,
};
use prost::encoding;

/// Bytes a message adds around its lines at most: four field keys of one
/// byte, two lengths and two u64s of at most ten bytes each (varints).
const ENVELOPE_BYTES: usize = 4 + 2 * 10 + 2 * 10;

/// Lines of a container's output per message: enough to make a burst
/// cheap, few enough that a quiet app's lines are not held back.
pub const OUTPUT_LINES_PER_MESSAGE: usize = 256;

// The largest single event, a job's end with every field at its cap, fits.
const _: () = assert!(
    MAX_SUMMARY_BYTES + 3 * MAX_FIELD_BYTES + 4 * ENVELOPE_BYTES <= MAX_AGENT_MESSAGE_BYTES
);
const _: () = assert!(MAX_LOG_LINE_BYTES + 4 * ENVELOPE_BYTES <= MAX_AGENT_MESSAGE_BYTES);

/// Room for lines in one message.
const LINES_BUDGET: usize = MAX_AGENT_MESSAGE_BYTES - ENVELOPE_BYTES;

/// What `line` adds to a message's repeated lines field.
fn line_len(line: &proto::LogLine) -> usize {
    encoding::message::encoded_len(1, line)
}

fn job_event(event: proto::JobEvent) -> proto::AgentMessage {
    proto::AgentMessage {
        body: Some(proto::agent_message::Body::JobEvent(event)),
    }
}

/// The messages carrying `events`: runs of consecutive log-line events of
/// one job become one event carrying a [`proto::LogBatch`], numbered with
/// the run's last seq (the coordinator stores it in one write and
/// acknowledges it as a whole, which acknowledges every event of the run),
/// and a run is cut wherever the next line would make its message too big.
pub fn job_events(events: Vec<proto::JobEvent>) -> Vec<proto::AgentMessage> {
    use proto::job_event::Body;
    let mut out: Vec<proto::JobEvent> = Vec::with_capacity(events.len());
    // Encoded size of the lines of the run at the end of `out`.
    let mut run_bytes = 0;
    for event in events {
        let Some(Body::Log(line)) = event.body else {
            out.push(event);
            continue;
        };
        let len = line_len(&line);
        match out.last_mut() {
            Some(proto::JobEvent {
                job_id,
                seq,
                body: Some(Body::Lines(batch)),
            }) if *job_id == event.job_id && run_bytes + len <= LINES_BUDGET => {
                batch.lines.push(line);
                *seq = event.seq;
                run_bytes += len;
            }
            _ => {
                out.push(proto::JobEvent {
                    job_id: event.job_id,
                    seq: event.seq,
                    body: Some(Body::Lines(proto::LogBatch::from(vec![line]))),
                });
                run_bytes = len;
            }
        }
    }
    out.into_iter().map(job_event).collect()
}

/// `lines` in order, in groups of at most [`OUTPUT_LINES_PER_MESSAGE`]
/// that each fit one [`proto::ContainerOutput`] message.
pub fn output_groups(lines: Vec<proto::LogLine>) -> Vec<Vec<proto::LogLine>> {
    let mut groups: Vec<Vec<proto::LogLine>> = Vec::new();
    let mut bytes = 0;
    for line in lines {
        let len = line_len(&line);
        match groups.last_mut() {
            Some(group)
                if group.len() < OUTPUT_LINES_PER_MESSAGE && bytes + len <= LINES_BUDGET =>
            {
                group.push(line);
                bytes += len;
            }
            _ => {
                groups.push(vec![line]);
                bytes = len;
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use gantry_shared::limits::{cap_log_line, cap_text, MAX_GRPC_MESSAGE_BYTES};
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use proto::job_event::Body;

    fn log(job: u64, seq: u64) -> proto::JobEvent {
        let line = proto::LogLine {
            seq,
            ..Default::default()
        };
        proto::JobEvent {
            job_id: job,
            seq,
            body: Some(Body::Log(line)),
        }
    }

    #[test]
    fn runs_of_lines_travel_as_one_event_numbered_by_their_last() {
        let stage = proto::JobEvent {
            job_id: 1,
            seq: 3,
            body: Some(Body::Stage(proto::Stage::Build as i32)),
        };
        let events = vec![log(1, 1), log(1, 2), stage, log(1, 4), log(2, 1), log(1, 5)];
        let shape: Vec<(u64, u64, usize)> = job_events(events)
            .into_iter()
            .map(|m| {
                let Some(proto::agent_message::Body::JobEvent(e)) = m.body else {
                    panic!("a job event");
                };
                let lines = match &e.body {
                    Some(Body::Lines(b)) => b.lines.len(),
                    _ => 0,
                };
                (e.job_id, e.seq, lines)
            })
            .collect();
        assert_eq!(
            shape,
            [(1, 2, 2), (1, 3, 0), (1, 4, 1), (2, 1, 1), (1, 5, 1)]
        );
    }

    /// A line's text as the agent makes it: any text, cut at the limit.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,200}",
            "[a-zé€😀]{0,300}".prop_map(|t| t.repeat(40)),
            (0..4 * MAX_LOG_LINE_BYTES).prop_map(|n| "x".repeat(n)),
            (0..3 * MAX_LOG_LINE_BYTES).prop_map(|n| "😀é".repeat(n / 6)),
        ]
        .prop_map(cap_log_line)
    }

    fn line(seq: u64, text: String) -> proto::LogLine {
        proto::LogLine {
            seq,
            timestamp_ms: i64::MAX,
            stage: proto::Stage::Health as i32,
            stream: proto::LogStream::Stderr as i32,
            text,
        }
    }

    /// What a spool hands over: runs of one job's events (lines, stages, an
    /// end), of a few jobs in turn.
    fn events() -> impl Strategy<Value = Vec<proto::JobEvent>> {
        let other = prop_oneof![
            Just(Body::Stage(proto::Stage::Build as i32)),
            ".{0,100}".prop_map(|s| Body::Finished(proto::JobFinished {
                state: proto::JobState::Failed as i32,
                summary: cap_text(s.repeat(10_000), MAX_SUMMARY_BYTES),
                url: cap_text(s.repeat(100), MAX_FIELD_BYTES),
                image: cap_text(s.repeat(100), MAX_FIELD_BYTES),
                container: cap_text(s.repeat(100), MAX_FIELD_BYTES),
            })),
        ];
        let lines = proptest::collection::vec(text().prop_map(|t| Body::Log(line(0, t))), 1..400);
        let run = (0..3u64, lines, proptest::option::of(other));
        proptest::collection::vec(run, 0..4).prop_map(|runs| {
            let mut next = [1u64; 3];
            runs.into_iter()
                .flat_map(|(job, lines, other)| {
                    lines.into_iter().chain(other).map(move |body| (job, body))
                })
                .map(|(job, mut body)| {
                    let seq = next[job as usize];
                    next[job as usize] += 1;
                    if let Body::Log(l) = &mut body {
                        l.seq = seq;
                    }
                    proto::JobEvent {
                        job_id: u64::MAX - job,
                        seq: u64::MAX / 2 + seq,
                        body: Some(body),
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn every_job_event_message_fits_and_every_line_is_sent_once(events in events()) {
            let lines_in = events.iter().filter(|e| matches!(e.body, Some(Body::Log(_)))).count();
            let mut lines_out = 0;
            for message in job_events(events) {
                let len = message.encoded_len();
                prop_assert!(len <= MAX_AGENT_MESSAGE_BYTES, "{len} bytes");
                prop_assert!(len <= MAX_GRPC_MESSAGE_BYTES);
                if let Some(proto::agent_message::Body::JobEvent(proto::JobEvent {
                    body: Some(Body::Lines(batch)), ..
                })) = &message.body {
                    lines_out += batch.lines.len();
                }
            }
            prop_assert_eq!(lines_in, lines_out);
        }

        #[test]
        fn every_container_output_message_fits(texts in proptest::collection::vec(text(), 0..700)) {
            let count = texts.len();
            let lines: Vec<_> = texts.into_iter().map(|t| line(0, t)).collect();
            let groups = output_groups(lines);
            prop_assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), count);
            for lines in groups {
                let message = proto::AgentMessage {
                    body: Some(proto::agent_message::Body::Output(proto::ContainerOutput {
                        request_id: u64::MAX,
                        lines,
                        end: true,
                        error: String::new(),
                    })),
                };
                prop_assert!(message.encoded_len() <= MAX_AGENT_MESSAGE_BYTES);
            }
        }
    }

    #[test]
    fn max_length_lines_of_a_backlog_fit() {
        // The case: 512 cut 8 KiB lines were 4,204,432 bytes in one message.
        let events: Vec<_> = (1..=512)
            .map(|seq| proto::JobEvent {
                job_id: 1,
                seq,
                body: Some(Body::Log(line(seq, cap_log_line("y".repeat(9 * 1024))))),
            })
            .collect();
        let messages = job_events(events);
        let largest = messages.iter().map(Message::encoded_len).max().unwrap();
        println!(
            "512 cut lines of 9 KiB: {} messages, the largest {largest} bytes (cap {MAX_GRPC_MESSAGE_BYTES})",
            messages.len()
        );
        assert!(largest <= MAX_AGENT_MESSAGE_BYTES, "{largest}");
        assert!(messages.len() >= 4, "{} messages", messages.len());
    }
}
