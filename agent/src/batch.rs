//! How the agent's output becomes messages: runs of one job's log lines
//! travel as one [`JobEvent`], a container's output as
//! `ContainerOutput`s, and no message is larger than
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
    messages::{FromAgent, JobEvent, LogLine},
    proto,
};

/// Bytes a message adds around its lines at most: four field keys of one
/// byte, two lengths and two u64s of at most ten bytes each (varints).
const ENVELOPE_BYTES: usize = 4 + 2 * 10 + 2 * 10;

/// Lines of a container's output per message: enough to make a burst
/// cheap, few enough that a quiet app's lines are not held back.
pub const OUTPUT_LINES_PER_MESSAGE: usize = 256;

// The largest single event, a job's end with every field at its cap on its
// longest line, fits.
const _: () = assert!(
    MAX_LOG_LINE_BYTES + MAX_SUMMARY_BYTES + 3 * MAX_FIELD_BYTES + 4 * ENVELOPE_BYTES
        <= MAX_AGENT_MESSAGE_BYTES
);
const _: () = assert!(MAX_LOG_LINE_BYTES + 4 * ENVELOPE_BYTES <= MAX_AGENT_MESSAGE_BYTES);

/// Room for lines in one message.
const LINES_BUDGET: usize = MAX_AGENT_MESSAGE_BYTES - ENVELOPE_BYTES;

/// The messages carrying `events`: runs of one job's consecutive lines
/// become one event (the coordinator stores it in one write and
/// acknowledges it by its last line's seq), cut after a line that ends the
/// job's part and wherever the next line would make the message too big.
pub fn job_events(events: Vec<JobEvent>) -> Vec<FromAgent> {
    let mut out: Vec<JobEvent> = Vec::with_capacity(events.len());
    // Encoded size of the run at the end of `out`.
    let mut run_bytes = 0;
    for event in events {
        let len = run_len(&event);
        match out.last_mut() {
            Some(run)
                if run.job == event.job
                    && run.finished.is_none()
                    && event.first_seq() == run.seq() + 1
                    && run_bytes + len <= LINES_BUDGET =>
            {
                run.lines.extend(event.lines);
                run.finished = event.finished;
                run_bytes += len;
            }
            _ => {
                out.push(event);
                run_bytes = len;
            }
        }
    }
    out.into_iter().map(FromAgent::Job).collect()
}

/// What `event`'s lines and end add to a message, exactly.
fn run_len(event: &JobEvent) -> usize {
    let lines: usize = event.lines.iter().map(LogLine::field_len).sum();
    let done = event.finished.clone().map_or(0, |done| {
        prost::encoding::message::encoded_len(4, &proto::JobFinished::from(done))
    });
    lines + done
}

/// `lines` in order, in groups of at most [`OUTPUT_LINES_PER_MESSAGE`]
/// that each fit one [`ContainerOutput`] message.
///
/// [`ContainerOutput`]: gantry_shared::messages::ContainerOutput
pub fn output_groups(lines: Vec<LogLine>) -> Vec<Vec<LogLine>> {
    let mut groups: Vec<Vec<LogLine>> = Vec::new();
    let mut bytes = 0;
    for line in lines {
        let len = line.field_len();
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
    use gantry_shared::{
        limits::{cap_log_line, cap_text, MAX_GRPC_MESSAGE_BYTES},
        messages::{ContainerOutput, Finished, LogStream},
        proto, JobId, JobState, Stage,
    };
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    fn id(job: u64) -> JobId {
        JobId::new(job).unwrap()
    }

    fn line(seq: u64, text: String) -> LogLine {
        LogLine {
            seq,
            timestamp_ms: i64::MAX,
            stage: Some(Stage::Health),
            stream: Some(LogStream::Stderr),
            text,
            opens_stage: seq.is_multiple_of(7),
        }
    }

    fn log(job: u64, seq: u64) -> JobEvent {
        JobEvent::line(id(job), line(seq, String::new()), None)
    }

    fn encoded_len(message: FromAgent) -> usize {
        proto::AgentMessage::from(message).encoded_len()
    }

    fn done(summary: String) -> Finished {
        Finished {
            state: JobState::Failed,
            summary: cap_text(summary, MAX_SUMMARY_BYTES),
            url: String::new(),
            image: String::new(),
            container: String::new(),
        }
    }

    #[test]
    fn runs_of_lines_travel_as_one_event_numbered_by_their_last() {
        let end = JobEvent {
            finished: Some(done("exit 1".into())),
            ..log(1, 4)
        };
        let events = vec![
            log(1, 1),
            log(1, 2),
            log(1, 3),
            end,
            log(2, 1),
            log(1, 5),
            log(1, 9),
        ];
        let shape: Vec<(u64, u64, usize, bool)> = job_events(events)
            .into_iter()
            .map(|m| {
                let FromAgent::Job(e) = m else {
                    panic!("a job event");
                };
                (e.job.get(), e.seq(), e.lines.len(), e.finished.is_some())
            })
            .collect();
        assert_eq!(
            shape,
            [
                (1, 4, 4, true),
                (2, 1, 1, false),
                (1, 5, 1, false),
                (1, 9, 1, false)
            ]
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

    /// What a spool hands over: runs of one job's lines, some ending with
    /// the job's part, of a few jobs in turn.
    fn events() -> impl Strategy<Value = Vec<JobEvent>> {
        let end = proptest::option::of(".{0,100}".prop_map(|s| Finished {
            url: cap_text(s.repeat(100), MAX_FIELD_BYTES),
            image: cap_text(s.repeat(100), MAX_FIELD_BYTES),
            container: cap_text(s.repeat(100), MAX_FIELD_BYTES),
            ..done(s.repeat(10_000))
        }));
        let run = (0..3u64, proptest::collection::vec(text(), 1..400), end);
        proptest::collection::vec(run, 0..4).prop_map(|runs| {
            let mut next = [1u64; 3];
            let mut out = Vec::new();
            for (job, texts, end) in runs {
                let count = texts.len();
                for (i, text) in texts.into_iter().enumerate() {
                    let seq = u64::MAX / 2 + next[job as usize];
                    next[job as usize] += 1;
                    let finished = end.clone().filter(|_| i + 1 == count);
                    out.push(JobEvent::line(
                        id(u64::MAX - job),
                        line(seq, text),
                        finished,
                    ));
                }
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn every_job_event_message_fits_and_every_line_is_sent_once(events in events()) {
            let lines_in = events.len();
            let ends_in = events.iter().filter(|e| e.finished.is_some()).count();
            let (mut lines_out, mut ends_out) = (0, 0);
            for message in job_events(events) {
                if let FromAgent::Job(event) = &message {
                    lines_out += event.lines.len();
                    ends_out += usize::from(event.finished.is_some());
                }
                let len = encoded_len(message);
                prop_assert!(len <= MAX_AGENT_MESSAGE_BYTES, "{len} bytes");
                prop_assert!(len <= MAX_GRPC_MESSAGE_BYTES);
            }
            prop_assert_eq!(lines_in, lines_out);
            prop_assert_eq!(ends_in, ends_out);
        }

        #[test]
        fn every_container_output_message_fits(texts in proptest::collection::vec(text(), 0..700)) {
            let count = texts.len();
            let lines: Vec<_> = texts.into_iter().map(|t| line(0, t)).collect();
            let groups = output_groups(lines);
            prop_assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), count);
            for lines in groups {
                let message = FromAgent::Output(ContainerOutput {
                    request_id: u64::MAX,
                    lines,
                    end: true,
                    error: None,
                });
                prop_assert!(encoded_len(message) <= MAX_AGENT_MESSAGE_BYTES);
            }
        }
    }

    #[test]
    fn max_length_lines_of_a_backlog_fit() {
        // The case: 512 cut 8 KiB lines were 4,204,432 bytes in one message.
        let events: Vec<_> = (1..=512)
            .map(|seq| JobEvent::line(id(1), line(seq, cap_log_line("y".repeat(9 * 1024))), None))
            .collect();
        let messages = job_events(events);
        let count = messages.len();
        let largest = messages.into_iter().map(encoded_len).max().unwrap();
        println!(
            "512 cut lines of 9 KiB: {count} messages, the largest {largest} bytes (cap {MAX_GRPC_MESSAGE_BYTES})"
        );
        assert!(largest <= MAX_AGENT_MESSAGE_BYTES, "{largest}");
        assert!(count >= 4, "{count} messages");
    }
}
