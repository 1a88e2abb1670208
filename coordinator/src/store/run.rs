//! A run: consecutive lines of one job's log in the form the store keeps
//! them and followers are sent, encoded once.

use bytes::Bytes;
use gantry_shared::proto;
use prost::Message;

/// Consecutive lines of a job's log, encoded once as a `LogBatch` (the form
/// they are stored in), so that every follower sends the same bytes.
#[derive(Debug, Clone)]
pub struct Run {
    /// Seq of the first and the last line.
    pub first: u64,
    pub last: u64,
    /// The encoded `LogBatch` of exactly these lines.
    pub encoded: Bytes,
}

impl Run {
    /// The run of `lines` (consecutive, at least one).
    pub fn of(lines: &[proto::LogLine]) -> Self {
        Self {
            first: lines.first().map_or(0, |l| l.seq),
            last: lines.last().map_or(0, |l| l.seq),
            encoded: proto::LogBatch::encode_lines(lines),
        }
    }

    /// How many lines it holds (never none).
    pub fn lines_count(&self) -> u64 {
        self.last + 1 - self.first
    }

    /// Its lines, decoded.
    pub fn lines(&self) -> Result<Vec<proto::LogLine>, prost::DecodeError> {
        Ok(proto::LogBatch::decode(self.encoded.clone())?.lines)
    }

    /// The part from seq `from` on (`from` within the run).
    pub fn from_seq(self, from: u64) -> Result<Self, prost::DecodeError> {
        if from <= self.first {
            return Ok(self);
        }
        let lines: Vec<_> = self
            .lines()?
            .into_iter()
            .filter(|l| l.seq >= from)
            .collect();
        Ok(Self::of(&lines))
    }
}

/// The rules of appending to a job's log, the same for every engine:
/// lines up to `last` (the stored end) are resends, and must match what is
/// stored; the rest must follow `last` without a gap.
pub(crate) mod append {
    use gantry_shared::{proto, JobId};

    use crate::store::StoreError;

    /// `lines` split into (fresh, resent) around the stored end `last`.
    pub fn split(
        last: u64,
        lines: Vec<proto::LogLine>,
    ) -> (Vec<proto::LogLine>, Vec<proto::LogLine>) {
        lines.into_iter().partition(|l| l.seq > last)
    }

    /// Refuses `resent` lines whose stored line (in `stored`) differs.
    pub fn check_resent(
        job: JobId,
        resent: &[proto::LogLine],
        stored: &[proto::LogLine],
    ) -> Result<(), StoreError> {
        let differs = resent
            .iter()
            .find(|line| stored.iter().any(|s| s.seq == line.seq && s != *line));
        match differs {
            Some(line) => Err(StoreError::Conflict { job, seq: line.seq }),
            None => Ok(()),
        }
    }

    /// Refuses `fresh` lines (at least one) that do not follow `last`.
    pub fn check_follows(
        job: JobId,
        last: u64,
        fresh: &[proto::LogLine],
    ) -> Result<(), StoreError> {
        let contiguous = fresh
            .iter()
            .enumerate()
            .all(|(i, l)| l.seq == last + 1 + i as u64);
        match contiguous {
            true => Ok(()),
            false => Err(StoreError::Gap {
                job,
                after: last,
                got: fresh[0].seq,
            }),
        }
    }
}
