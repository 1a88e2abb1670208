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
//! An event's body is its `gantry.v1.JobEvent` encoding: a run of the
//! job's lines, numbered in the job's one sequence (one line per frame, as
//! the reporter spools them). Kinds 1 and 2 are the frames of agents
//! before one sequence per job (events numbered apart from lines); they
//! are read only to be migrated ([`super::legacy`]).

use gantry_shared::{
    messages::{JobEvent, LogLine, LogStream},
    now_ms, proto, JobId,
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

/// Most lines put in the place of one unreadable frame: the reporter
/// spools one line per frame, so a wider range is not one this agent
/// wrote, and is not given memory.
const MAX_LINES_PER_FRAME: u64 = 65_536;

/// Payload kind of an event of agents before one sequence per job.
pub const KIND_OLD_EVENT: u8 = 1;

/// Payload kind of a mark of agents before one sequence per job.
pub const KIND_OLD_MARK: u8 = 2;

/// Payload kind of an encoded `gantry.v1.JobEvent`.
const KIND_EVENT: u8 = 3;

/// Payload kind of a [`Mark`].
const KIND_MARK: u8 = 4;

/// Where a job's spool stands, written when an acknowledgement arrives and
/// at the start of every segment: what the coordinator has, and the seq
/// the job numbers on from, even once the lines that held them are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Highest line seq the coordinator acknowledged.
    pub acked: u64,
    /// Seq of the job's next line.
    pub next: u64,
}

impl Default for Mark {
    /// A job with nothing spooled: its log starts at line 1.
    fn default() -> Self {
        Self { acked: 0, next: 1 }
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A run of the job's lines, as it was sent.
    Event(JobEvent),
    /// The job's state at that point.
    Mark(Mark),
    /// A frame of an agent before one sequence per job, as its kind and
    /// payload: [`super::legacy`] reads it, to migrate it.
    Old {
        /// [`KIND_OLD_EVENT`] or [`KIND_OLD_MARK`].
        kind: u8,
        /// The payload after the kind byte.
        body: Vec<u8>,
    },
}

pub(super) fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
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
    frame(
        KIND_EVENT,
        &proto::JobEvent::from(event.clone()).encode_to_vec(),
    )
}

/// An event read from disk. One that does not convert, which only a
/// corrupt file holds, keeps its lines' places as [`LOST_LINE`]s so the
/// log keeps its numbering (none if even its numbering is unreadable).
fn from_disk(event: proto::JobEvent) -> Option<JobEvent> {
    let seqs = event.lines.as_ref().map(|b| {
        (
            b.lines.first().map(|l| l.seq),
            b.lines.last().map(|l| l.seq),
        )
    });
    let job = JobId::new(event.job_id).ok()?;
    match JobEvent::try_from(event) {
        Ok(event) => Some(event),
        Err(_) => match seqs {
            Some((Some(first), Some(last)))
                if 0 < first && first <= last && last - first < MAX_LINES_PER_FRAME =>
            {
                Some(lost_lines(job, first, last))
            }
            _ => None,
        },
    }
}

/// The lines `first..=last` of `job`, in the place of lines lost.
pub fn lost_lines(job: JobId, first: u64, last: u64) -> JobEvent {
    let at = now_ms();
    JobEvent {
        job,
        lines: (first..=last)
            .map(|seq| LogLine {
                seq,
                timestamp_ms: at,
                stage: None,
                stream: Some(LogStream::System),
                text: LOST_LINE.into(),
                opens_stage: false,
            })
            .collect(),
        finished: None,
    }
}

/// `mark` as a frame.
pub fn mark(mark: &Mark) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    for n in [mark.acked, mark.next] {
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

/// The payload of the frame at `at` and the frame's length, if it checks out.
fn payload_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
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
    (hasher.finalize() == crc).then_some((payload, HEADER_BYTES + len))
}

/// The record of the frame at `at` and the frame's length, if it checks out.
fn record_at(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let (payload, len) = payload_at(bytes, at)?;
    let record = match (payload[0], &payload[1..]) {
        (KIND_EVENT, body) => Record::Event(from_disk(proto::JobEvent::decode(body).ok()?)?),
        (KIND_MARK, body) if body.len() == 16 => {
            let n = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().expect("8"));
            Record::Mark(Mark {
                acked: n(0),
                next: n(1),
            })
        }
        (kind @ (KIND_OLD_EVENT | KIND_OLD_MARK), body) => Record::Old {
            kind,
            body: body.to_vec(),
        },
        _ => return None,
    };
    Some((record, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> Record {
        Record::Event(JobEvent::line(
            JobId::new(1).unwrap(),
            LogLine {
                seq,
                timestamp_ms: 0,
                stage: Some(gantry_shared::Stage::Build),
                stream: Some(LogStream::Stdout),
                text: format!("line {seq}"),
                opens_stage: seq == 1,
            },
            None,
        ))
    }

    fn encode(record: &Record) -> Vec<u8> {
        match record {
            Record::Event(e) => event(e),
            Record::Mark(m) => mark(m),
            Record::Old { .. } => unreachable!("never written"),
        }
    }

    #[test]
    fn frames_read_back_as_written() {
        let records = vec![line(1), Record::Mark(Mark { acked: 1, next: 2 }), line(2)];
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
    fn lines_that_do_not_convert_keep_their_places() {
        let garbled = |seq| proto::LogLine {
            seq,
            stream: 77,
            text: "garbled".into(),
            ..Default::default()
        };
        let bad = proto::JobEvent {
            job_id: 2,
            lines: Some(vec![garbled(5), garbled(6)].into()),
            finished: None,
        };
        let event = from_disk(bad).unwrap();
        assert_eq!((event.job.get(), event.first_seq(), event.seq()), (2, 5, 6));
        assert!(event.lines.iter().all(|l| l.text == LOST_LINE));
        let unnumbered = proto::JobEvent {
            job_id: 2,
            lines: None,
            finished: None,
        };
        assert_eq!(from_disk(unnumbered), None);
    }
}
