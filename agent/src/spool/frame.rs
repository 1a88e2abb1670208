//! The spool's on-disk records. Each is a frame:
//!
//! ```text
//! MAGIC (4 bytes) | length (u32 LE) | crc32 of length and payload (u32 LE) | payload
//! payload = kind (1 byte) | body
//! ```
//!
//! A frame whose checksum does not match (a bad sector, a torn write) is
//! skipped: the reader looks for the next `MAGIC` whose frame checks out and
//! goes on from there, so one bad frame costs that frame only. The checksum
//! covers the length too, so a corrupt length cannot make the reader skip
//! good frames after it.
//!
//! An event's body is its `gantry.v1.JobEvent` encoding, as agents before
//! domain messages wrote it (a single line as `log`, not `lines`), so a
//! spool written by either version reads back in the other.

use gantry_shared::{
    messages::{Event, JobEvent, LogLine, LogStream},
    now_ms, proto,
};
use prost::Message;

/// Put in the place of a log line whose spool frame was corrupt, so the
/// job's log shows the loss and keeps its numbering.
pub const LOST_LINE: &str =
    "[gantry: a line of this job's output was lost: the agent's spool copy of it was corrupt]";

/// Starts every frame; what the reader looks for after a bad frame.
const MAGIC: [u8; 4] = *b"GSP\x01";

/// Bytes before a frame's payload: magic, length, checksum.
const HEADER_BYTES: usize = 12;

/// Longest payload a frame may have. The largest event the agent writes is a
/// job's end with its capped summary (well under 1 MiB); a length above this
/// is corruption, not a record.
const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// Payload kind of an encoded `gantry.v1.JobEvent`.
const KIND_EVENT: u8 = 1;

/// Payload kind of a [`Mark`].
const KIND_MARK: u8 = 2;

/// Where a job's spool stands, written when an acknowledgement arrives and
/// at the start of every segment: what the coordinator has, and the seqs
/// the job numbers on from, even once the events that held them are gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Highest event seq the coordinator acknowledged.
    pub acked: u64,
    /// Seq of the job's next event.
    pub next_seq: u64,
    /// Seq of the job's next log line.
    pub next_line: u64,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A job event, as it was sent.
    Event(JobEvent),
    /// The job's state at that point.
    Mark(Mark),
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = (1 + body.len()) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len.to_le_bytes());
    crc.update(&[kind]);
    crc.update(body);
    let mut out = Vec::with_capacity(HEADER_BYTES + 1 + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// `event` as a frame.
pub fn event(event: &JobEvent) -> Vec<u8> {
    frame(KIND_EVENT, &to_disk(event.clone()).encode_to_vec())
}

/// `event` as it is kept on disk: a single line as `log`, as always.
fn to_disk(event: JobEvent) -> proto::JobEvent {
    match event.body {
        Event::Lines(mut lines) if lines.len() == 1 => proto::JobEvent {
            job_id: event.job.get(),
            seq: event.seq,
            body: Some(proto::job_event::Body::Log(
                lines.pop().expect("one line").into(),
            )),
        },
        _ => event.into(),
    }
}

/// An event read from disk (or from a pre-segment spool file). One that
/// does not convert, which only a corrupt file holds, is `None`, except
/// that a line keeps its place as [`LOST_LINE`] so the log keeps its
/// numbering.
pub fn from_disk(event: proto::JobEvent) -> Option<JobEvent> {
    let (job, seq) = (event.job_id, event.seq);
    let line = match &event.body {
        Some(proto::job_event::Body::Log(line)) => Some(line.seq),
        _ => None,
    };
    match JobEvent::try_from(event) {
        Ok(event) => Some(event),
        Err(_) => Some(lost_line(gantry_shared::JobId::new(job).ok()?, seq, line?)),
    }
}

/// The event put in the place of line `line`, event `seq`, of `job`.
pub fn lost_line(job: gantry_shared::JobId, seq: u64, line: u64) -> JobEvent {
    JobEvent {
        job,
        seq,
        body: Event::Lines(vec![LogLine {
            seq: line,
            timestamp_ms: now_ms(),
            stage: None,
            stream: Some(LogStream::System),
            text: LOST_LINE.into(),
        }]),
    }
}

/// `mark` as a frame.
pub fn mark(mark: &Mark) -> Vec<u8> {
    let mut body = Vec::with_capacity(24);
    for n in [mark.acked, mark.next_seq, mark.next_line] {
        body.extend_from_slice(&n.to_le_bytes());
    }
    frame(KIND_MARK, &body)
}

/// The records in `bytes`, in order.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Every frame that checked out.
    pub records: Vec<Record>,
    /// Regions skipped because no frame there checked out.
    pub bad_regions: usize,
    /// Where the last good frame ends: past it is a torn or corrupt tail.
    pub good_end: usize,
}

/// Reads every good frame of `bytes`, skipping bad ones.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut at = 0;
    let mut in_bad_region = false;
    while at < bytes.len() {
        match record_at(bytes, at) {
            Some((record, len)) => {
                parsed.records.push(record);
                at += len;
                parsed.good_end = at;
                in_bad_region = false;
            }
            None => {
                if !in_bad_region {
                    parsed.bad_regions += 1;
                    in_bad_region = true;
                }
                // Resync: the next place a frame could start.
                at = match find_magic(&bytes[at + 1..]) {
                    Some(offset) => at + 1 + offset,
                    None => bytes.len(),
                };
            }
        }
    }
    parsed
}

fn find_magic(bytes: &[u8]) -> Option<usize> {
    bytes.windows(MAGIC.len()).position(|w| w == MAGIC)
}

/// The record of the frame at `at` and the frame's length, if it checks out.
fn record_at(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let header = bytes.get(at..at + HEADER_BYTES)?;
    if header[..4] != MAGIC {
        return None;
    }
    let len_bytes: [u8; 4] = header[4..8].try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 || len > MAX_PAYLOAD_BYTES {
        return None;
    }
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let payload = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return None;
    }
    let record = match (payload[0], &payload[1..]) {
        (KIND_EVENT, body) => Record::Event(from_disk(proto::JobEvent::decode(body).ok()?)?),
        (KIND_MARK, body) if body.len() == 24 => {
            let n = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().expect("8"));
            Record::Mark(Mark {
                acked: n(0),
                next_seq: n(1),
                next_line: n(2),
            })
        }
        _ => return None,
    };
    Some((record, HEADER_BYTES + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> Record {
        Record::Event(JobEvent {
            job: gantry_shared::JobId::new(1).unwrap(),
            seq,
            body: Event::Lines(vec![LogLine {
                seq,
                timestamp_ms: 0,
                stage: None,
                stream: Some(LogStream::Stdout),
                text: format!("line {seq}"),
            }]),
        })
    }

    fn encode(record: &Record) -> Vec<u8> {
        match record {
            Record::Event(e) => event(e),
            Record::Mark(m) => mark(m),
        }
    }

    #[test]
    fn frames_read_back_as_written() {
        let records = vec![
            line(1),
            Record::Mark(Mark {
                acked: 1,
                next_seq: 2,
                next_line: 2,
            }),
            line(2),
        ];
        let bytes: Vec<u8> = records.iter().flat_map(encode).collect();
        let parsed = parse(&bytes);
        assert_eq!(parsed.records, records);
        assert_eq!((parsed.bad_regions, parsed.good_end), (0, bytes.len()));
    }

    #[test]
    fn a_corrupt_frame_costs_only_itself_even_with_a_corrupt_length() {
        let frames: Vec<Vec<u8>> = (1..=3).map(|s| encode(&line(s))).collect();
        for flip in [5, HEADER_BYTES + 3] {
            let mut bytes = frames.concat();
            let second = frames[0].len();
            bytes[second + flip] ^= 0xff;
            let parsed = parse(&bytes);
            assert_eq!(
                parsed.records,
                vec![line(1), line(3)],
                "flipped byte {flip}"
            );
            assert_eq!(parsed.bad_regions, 1);
        }
    }

    #[test]
    fn a_torn_tail_ends_at_the_last_good_frame() {
        let whole = encode(&line(1));
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&encode(&line(2))[..7]);
        let parsed = parse(&bytes);
        assert_eq!(parsed.records, vec![line(1)]);
        assert_eq!(parsed.good_end, whole.len());
    }

    #[test]
    fn a_single_line_is_kept_as_earlier_agents_kept_it() {
        let Record::Event(event) = line(4) else {
            unreachable!()
        };
        let bytes = super::event(&event);
        let decoded = proto::JobEvent::decode(&bytes[HEADER_BYTES + 1..]).unwrap();
        assert!(
            matches!(&decoded.body, Some(proto::job_event::Body::Log(l)) if l.seq == 4),
            "{decoded:?}"
        );
    }

    #[test]
    fn a_line_that_does_not_convert_keeps_its_place() {
        let bad = proto::JobEvent {
            job_id: 2,
            seq: 9,
            body: Some(proto::job_event::Body::Log(proto::LogLine {
                seq: 5,
                stream: 77,
                text: "garbled".into(),
                ..Default::default()
            })),
        };
        let event = from_disk(bad).unwrap();
        assert_eq!((event.job.get(), event.seq), (2, 9));
        let Event::Lines(lines) = event.body else {
            panic!("a line")
        };
        assert_eq!((lines[0].seq, lines[0].text.as_str()), (5, LOST_LINE));
        let stage = proto::JobEvent {
            job_id: 2,
            seq: 10,
            body: Some(proto::job_event::Body::Stage(99)),
        };
        assert_eq!(from_disk(stage), None);
    }
}
