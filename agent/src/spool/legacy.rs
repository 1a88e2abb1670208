//! Spools of earlier agents, migrated on the first start after an upgrade
//! so no event waiting in one is lost:
//!
//! - pre-segment files (`<job>.spool`: length-prefixed encoded events,
//!   acknowledgements kept in memory only);
//! - segments of agents before one sequence per job, whose events were
//!   numbered apart from lines (frame kinds 1 and 2: an event seq, with
//!   stage changes and a job's end as events of their own).
//!
//! Either is converted into the job's lines ([`convert`]): a stage event
//! flags the next line (its `==> stage` line) as opening the stage, and an
//! end rides the line before it (its summary line); one with no such line
//! gets a line made for it. The result is written as one new segment, whole
//! and synced, before the old files are deleted; a segment in the new
//! format makes any older ones of the job leftovers of a migration that was
//! done, so a crash at any point loses nothing and converts nothing twice.

use std::path::Path;

use gantry_shared::{
    messages::{Finished, JobEvent, LogLine, LogStream},
    proto, JobId, Stage,
};
use prost::Message;
use tracing::{info, warn};

use super::{
    frame::{self, Mark, KIND_OLD_EVENT, KIND_OLD_MARK},
    segment::{segment_path, JobSpool},
};

/// `gantry.v1.JobEvent` as agents before one sequence per job wrote it.
#[derive(Clone, PartialEq, prost::Message)]
struct OldJobEvent {
    /// The job.
    #[prost(uint64, tag = "1")]
    job_id: u64,
    /// Position among the job's events on its agent, from 1.
    #[prost(uint64, tag = "5")]
    seq: u64,
    /// What happened.
    #[prost(oneof = "OldBody", tags = "2, 3, 4, 6")]
    body: Option<OldBody>,
}

/// What an old event said.
#[derive(Clone, PartialEq, prost::Oneof)]
enum OldBody {
    /// A stage entered.
    #[prost(int32, tag = "2")]
    Stage(i32),
    /// One line.
    #[prost(message, tag = "3")]
    Log(proto::LogLine),
    /// The job's end.
    #[prost(message, tag = "4")]
    Finished(proto::JobFinished),
    /// Consecutive lines.
    #[prost(message, tag = "6")]
    Lines(proto::LogBatch),
}

/// A frame of an agent before one sequence per job, read back.
#[derive(Debug, Clone, PartialEq)]
pub enum OldRecord {
    /// An event, with its event seq.
    Event(JobId, u64, Old),
    /// Where the job stood: acknowledged event seq, next event seq, next
    /// line seq.
    Mark(u64, u64, u64),
}

/// The body of an old event.
#[derive(Debug, Clone, PartialEq)]
pub enum Old {
    /// The agent moved on to a stage.
    Stage(Stage),
    /// Consecutive lines.
    Lines(Vec<LogLine>),
    /// The job ended.
    Finished(Finished),
}

impl OldRecord {
    /// The record of an old frame's payload (after its kind byte). A line
    /// that does not convert keeps its place as [`frame::LOST_LINE`].
    pub fn decode(kind: u8, body: &[u8]) -> Option<Self> {
        match kind {
            KIND_OLD_MARK if body.len() == 24 => {
                let n =
                    |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().expect("8"));
                Some(Self::Mark(n(0), n(1), n(2)))
            }
            KIND_OLD_EVENT => old_event(OldJobEvent::decode(body).ok()?),
            _ => None,
        }
    }
}

fn old_event(event: OldJobEvent) -> Option<OldRecord> {
    let job = JobId::new(event.job_id).ok()?;
    let lines = |lines: Vec<proto::LogLine>| -> Option<Old> {
        let (first, last) = (lines.first()?.seq, lines.last()?.seq);
        let converted: Result<Vec<LogLine>, _> = lines.into_iter().map(LogLine::try_from).collect();
        Some(Old::Lines(converted.unwrap_or_else(|_| {
            frame::lost_lines(job, first, last.max(first)).lines
        })))
    };
    let body = match event.body? {
        OldBody::Stage(stage) => Old::Stage(Stage::from_proto(stage)?),
        OldBody::Log(line) => lines(vec![line])?,
        OldBody::Lines(batch) => lines(batch.lines)?,
        OldBody::Finished(done) => Old::Finished(Finished::try_from(done).ok()?),
    };
    Some(OldRecord::Event(job, event.seq, body))
}

/// The job's lines an old spool's records (in file order) come to, and the
/// mark to go on from. Lines whose events were all acknowledged are left
/// out; the rest are sent again (the coordinator stores each line once).
pub fn convert(job: JobId, records: Vec<OldRecord>) -> (Mark, Vec<JobEvent>) {
    let mut c = Convert {
        job,
        out: Vec::new(),
        next: 1,
        last_old: 0,
        acked_old: 0,
        pending: None,
        last_was_line: false,
        timestamp: 0,
    };
    for record in records {
        match record {
            OldRecord::Mark(acked, next_seq, next_line) => {
                c.acked_old = c.acked_old.max(acked);
                c.last_old = c.last_old.max(next_seq.saturating_sub(1));
                c.next = c.next.max(next_line);
            }
            OldRecord::Event(of, seq, body) if of == job && seq > c.last_old => c.event(seq, body),
            OldRecord::Event(..) => {}
        }
    }
    if let Some((stage, at)) = c.pending.take() {
        c.stage_line(stage, at);
    }
    let kept = c.out.partition_point(|(_, covers)| *covers <= c.acked_old);
    let events: Vec<JobEvent> = c.out.drain(..).skip(kept).map(|(e, _)| e).collect();
    let acked = events.first().map_or(c.next, JobEvent::first_seq) - 1;
    (
        Mark {
            acked,
            next: c.next,
        },
        events,
    )
}

/// The state of a conversion.
struct Convert {
    job: JobId,
    /// Converted runs, each with the highest old event seq it stands for
    /// (non-decreasing): acknowledged once that event was.
    out: Vec<(JobEvent, u64)>,
    /// Seq of the next line.
    next: u64,
    /// Highest old event seq seen.
    last_old: u64,
    /// Highest old event seq acknowledged.
    acked_old: u64,
    /// A stage entered whose line has not come yet, with its event seq.
    pending: Option<(Stage, u64)>,
    /// The last run in `out` came from the event just before.
    last_was_line: bool,
    /// Timestamp of the last line, for lines made here (the same on every
    /// conversion of the same files).
    timestamp: i64,
}

impl Convert {
    fn event(&mut self, seq: u64, body: Old) {
        match body {
            Old::Stage(stage) => {
                if let Some((before, at)) = self.pending.replace((stage, seq)) {
                    self.stage_line(before, at);
                }
                self.last_was_line = false;
            }
            Old::Lines(lines) => self.lines(seq, lines),
            Old::Finished(done) => {
                // It rides the line just before it (its summary line).
                let rides = self.last_was_line && self.pending.is_none();
                if let Some((stage, at)) = self.pending.take() {
                    self.stage_line(stage, at);
                }
                match self.out.last_mut() {
                    Some((run, covers)) if rides && run.finished.is_none() => {
                        run.finished = Some(done);
                        *covers = seq;
                    }
                    _ => {
                        let text = format!("==> {}: {}", done.state.as_str(), done.summary);
                        self.push(seq, None, text, false, Some(done));
                    }
                }
                self.last_was_line = false;
            }
        }
        self.last_old = seq;
    }

    fn lines(&mut self, seq: u64, mut lines: Vec<LogLine>) {
        lines.retain(|l| l.seq >= self.next);
        let Some(first) = lines.first().map(|l| l.seq) else {
            return;
        };
        // Lines lost with their events keep their places, each standing
        // for one of the missing events, as the old spool had it.
        for (i, line) in (self.next..first).enumerate() {
            let covers = (self.last_old + 1 + i as u64).min(seq - 1);
            let lost = frame::lost_lines(self.job, line, line);
            self.out.push((lost, covers));
        }
        if let Some((stage, _)) = self.pending.take() {
            match lines.first_mut() {
                Some(line) if line.stage == Some(stage) => line.opens_stage = true,
                _ => warn!(job = %self.job, stage = stage.as_str(),
                    "an old spool's stage has no line of its own; the stage is not reported"),
            }
        }
        self.next = lines.last().map_or(self.next, |l| l.seq + 1);
        self.timestamp = lines.last().map_or(self.timestamp, |l| l.timestamp_ms);
        let run = JobEvent {
            job: self.job,
            lines,
            finished: None,
        };
        self.out.push((run, seq));
        self.last_was_line = true;
    }

    /// The line of a stage whose own line was not spooled.
    fn stage_line(&mut self, stage: Stage, covers: u64) {
        let text = format!("==> {}", stage.as_str());
        self.push(covers, Some(stage), text, true, None);
    }

    fn push(
        &mut self,
        covers: u64,
        stage: Option<Stage>,
        text: String,
        opens: bool,
        done: Option<Finished>,
    ) {
        let line = LogLine {
            seq: self.next,
            timestamp_ms: self.timestamp,
            stage,
            stream: Some(LogStream::System),
            text,
            opens_stage: opens,
        };
        self.next += 1;
        self.out
            .push((JobEvent::line(self.job, line, done), covers));
        self.last_was_line = true;
    }
}

/// `job`'s segments after migrating old ones: segments in the old format
/// are converted into one new segment (numbered after them), or deleted if
/// a new-format segment shows they were converted already.
pub fn upgrade(dir: &Path, job: JobId, mut numbers: Vec<u64>) -> std::io::Result<Vec<u64>> {
    numbers.sort_unstable();
    let (mut old, mut records) = (Vec::new(), Vec::new());
    for &number in &numbers {
        let bytes = std::fs::read(segment_path(dir, job, number))?;
        let found: Vec<OldRecord> = frame::parse(&bytes)
            .records
            .into_iter()
            .filter_map(|record| match record {
                frame::Record::Old { kind, body } => OldRecord::decode(kind, &body),
                _ => None,
            })
            .collect();
        if !found.is_empty() {
            old.push(number);
            records.extend(found);
        }
    }
    let Some(&newest_old) = old.last() else {
        return Ok(numbers);
    };
    let migrated = numbers.iter().any(|n| *n > newest_old);
    if !migrated {
        let (mark, events) = convert(job, records);
        JobSpool::write_whole(dir, job, newest_old + 1, &mark, &events)?;
        info!(job = %job, lines = events.len(), "migrated the spool of an earlier agent");
    }
    for number in &old {
        std::fs::remove_file(segment_path(dir, job, *number))?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(match migrated {
        true => numbers.into_iter().filter(|n| *n > newest_old).collect(),
        false => vec![newest_old + 1],
    })
}

/// The job a pre-segment spool file is named for.
pub fn parse_name(name: &str) -> Option<JobId> {
    name.strip_suffix(".spool")?.parse().ok()
}

/// Moves the events of the pre-segment file `path` into a new spool for
/// `job`, and deletes the old file. A torn or corrupt tail ends the old
/// file, as it did.
pub fn import(dir: &Path, job: JobId, path: &Path) -> std::io::Result<JobSpool> {
    let bytes = std::fs::read(path)?;
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(event) = bytes
            .get(at + 4..at + 4 + len)
            .and_then(|body| OldJobEvent::decode(body).ok())
        else {
            break;
        };
        records.extend(old_event(event));
        at += 4 + len;
    }
    let (mark, events) = convert(job, records);
    JobSpool::write_whole(dir, job, 0, &mark, &events)?;
    std::fs::remove_file(path)?;
    JobSpool::load(dir, job, vec![0])
}

#[cfg(test)]
#[path = "legacy_tests.rs"]
mod tests;
