//! Job logs in sled: one tree of runs, keyed by job id and the run's last
//! seq, so one write stores a batch an agent sends and a range scan
//! returns one job's lines in order.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use gantry_shared::{messages::LogLine, proto, JobId};
use prost::Message;

use crate::store::{append, Run, StoreError};

/// The log tree and what is known of its ends.
pub(super) struct Logs {
    /// Job id ++ last seq of the run (both big-endian) -> encoded
    /// [`proto::LogBatch`] of consecutive lines.
    tree: sled::Tree,
    /// The last stored seq of each job written since opening, so appends
    /// need not read it back. Its lock also makes one append at a time.
    tails: Arc<Mutex<HashMap<JobId, u64>>>,
}

fn log_key(job: JobId, seq: u64) -> [u8; 16] {
    log_key_of(job.get(), seq)
}

fn log_key_of(job: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&job.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn decode_error(job: JobId, e: prost::DecodeError) -> StoreError {
    StoreError::Decode {
        key: format!("log of job {job}"),
        message: e.to_string(),
    }
}

impl Logs {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree("logs")?,
            tails: Default::default(),
        })
    }

    /// See [`crate::store::Store::append_logs`]. Lines are kept as their
    /// `gantry.v1.LogLine` encoding, the form followers are sent.
    pub(super) fn append(
        &self,
        job: JobId,
        lines: Vec<LogLine>,
    ) -> Result<Option<Run>, StoreError> {
        let lines: Vec<proto::LogLine> = lines.into_iter().map(Into::into).collect();
        let mut tails = self.tails.lock().expect("log tails lock");
        let last = match tails.get(&job) {
            Some(last) => *last,
            None => self.stored_last_seq(job)?,
        };
        let (fresh, resent) = append::split(last, lines);
        if let Some(first) = resent.first() {
            let stored = self.lines(job, first.seq, resent.len())?;
            append::check_resent(job, &resent, &stored)?;
        }
        if fresh.is_empty() {
            return Ok(None);
        }
        append::check_follows(job, last, &fresh)?;
        let run = Run::of(&fresh);
        self.tree
            .insert(log_key(job, run.last), run.encoded.as_ref())?;
        tails.insert(job, run.last);
        Ok(Some(run))
    }

    /// Up to about `limit` stored lines of `job` with seq >= `from`, in order.
    fn lines(
        &self,
        job: JobId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<proto::LogLine>, StoreError> {
        let mut out = Vec::new();
        for run in self.runs(job, from, limit as u64)? {
            out.extend(run.lines().map_err(|e| decode_error(job, e))?);
        }
        Ok(out)
    }

    /// See [`crate::store::Store::log_runs`].
    pub(super) fn runs(&self, job: JobId, from: u64, limit: u64) -> Result<Vec<Run>, StoreError> {
        // Runs are keyed by their last seq: the first run holding `from` is
        // the first whose key is >= it. The log is gapless, so a run starts
        // just after the one before; only the first one is decoded, to
        // learn where it starts.
        let range = log_key(job, from)..=log_key(job, u64::MAX);
        let mut out: Vec<Run> = Vec::new();
        let mut count = 0;
        for entry in self.tree.range(range) {
            let (key, bytes) = entry?;
            let last = u64::from_be_bytes(key[8..16].try_into().expect("log keys are 16 bytes"));
            let encoded = Bytes::copy_from_slice(&bytes);
            let run = match out.last() {
                Some(before) => Run {
                    first: before.last + 1,
                    last,
                    encoded,
                },
                None => {
                    let lines = proto::LogBatch::decode(encoded)
                        .map_err(|e| decode_error(job, e))?
                        .lines;
                    let lines: Vec<_> = lines.into_iter().filter(|l| l.seq >= from).collect();
                    if lines.is_empty() {
                        continue;
                    }
                    Run::of(&lines)
                }
            };
            count += run.lines_count();
            out.push(run);
            if count >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// See [`crate::store::Store::last_seq`].
    pub(super) fn last_seq(&self, job: JobId) -> Result<u64, StoreError> {
        if let Some(last) = self.tails.lock().expect("log tails lock").get(&job) {
            return Ok(*last);
        }
        self.stored_last_seq(job)
    }

    /// Every job with a log, by id: the first key of each job's runs, found
    /// by skipping past the job's keys rather than reading its runs.
    pub(super) fn jobs(&self) -> Result<Vec<JobId>, StoreError> {
        let mut out = Vec::new();
        let mut from = [0u8; 16];
        while let Some(entry) = self.tree.range(from..).next() {
            let (key, _) = entry?;
            let id = u64::from_be_bytes(key[..8].try_into().expect("log keys are 16 bytes"));
            let job = JobId::new(id).map_err(|e| StoreError::Decode {
                key: format!("log key {key:?}"),
                message: e.to_string(),
            })?;
            out.push(job);
            match id.checked_add(1) {
                Some(next) => from = log_key_of(next, 0),
                None => break,
            }
        }
        Ok(out)
    }

    fn stored_last_seq(&self, job: JobId) -> Result<u64, StoreError> {
        let range = log_key(job, 0)..=log_key(job, u64::MAX);
        Ok(match self.tree.range(range).next_back() {
            Some(entry) => {
                let (key, _) = entry?;
                u64::from_be_bytes(key[8..16].try_into().expect("log keys are 16 bytes"))
            }
            None => 0,
        })
    }
}
