//! The agent's spool: every line of a job's log is appended to a file on
//! disk before it is sent, and forgotten only when the coordinator
//! acknowledges it. A job's log is its whole event stream: a stage change is
//! a line that opens the stage, and the end of the job's part rides its
//! last line, so one sequence numbers everything the agent says of a job,
//! continued from the assignment's `first_seq`. After any reconnect,
//! sending resumes from the first unacknowledged line; after an agent
//! restart, spooled lines are loaded and sent again. The coordinator stores
//! each (job, seq) once, so resending is always safe.
//!
//! The spool keeps the next seq on disk with the acknowledged one (see
//! [`frame::Mark`]): a restarted agent neither resends what the coordinator
//! has nor reuses a seq it has. Everything is synced to disk before it is
//! sent, one sync per batch. Each job's files are a run of segments
//! ([`segment`]); acknowledged ones are deleted, and a corrupt frame costs
//! only itself. Spools of earlier agents are migrated ([`legacy`]).

mod frame;
mod legacy;
mod segment;

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use gantry_shared::{
    messages::{Finished, JobEvent, LogLine},
    JobId,
};
use tokio::sync::Notify;
use tracing::warn;

pub use frame::LOST_LINE;
use segment::JobSpool;
pub use segment::SEGMENT_BYTES;

/// Unacknowledged lines held per job before its producer waits. While the
/// coordinator is away, a build printing faster than this fills it and then
/// blocks on its pipe instead of growing the agent's memory without bound.
pub const MAX_UNACKED: usize = 50_000;

/// Unacknowledged bytes held per job before its producer waits: the same
/// bound for long lines (50,000 cut lines would be 400 MiB).
pub const MAX_UNACKED_BYTES: usize = 64 * 1024 * 1024;

/// Lines handed to the connection per batch (the connection splits them
/// into messages by size).
pub const SEND_BATCH: usize = 512;

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<JobId, JobSpool>,
}

impl Inner {
    fn job(&mut self, dir: &Path, job: JobId) -> std::io::Result<&mut JobSpool> {
        Ok(match self.jobs.entry(job) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(JobSpool::create(dir, job, 1)?)
            }
        })
    }
}

/// Shared by the job reporters (producers) and the connection (consumer).
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
    /// Wakes the connection when events are added.
    added: Arc<Notify>,
    /// Wakes producers when acknowledgements free space.
    freed: Arc<Notify>,
}

impl Spool {
    /// Opens the spool in `dir`, loading what an earlier run left unacknowledged.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found: BTreeMap<JobId, Vec<u64>> = BTreeMap::new();
        let mut legacy = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(segment::PARTIAL) {
                // A migration that died before its segment was whole: it
                // is done again from the old files, which are still there.
                std::fs::remove_file(&path)?;
                continue;
            }
            match segment::parse_name(name) {
                Some((job, number)) => found.entry(job).or_default().push(number),
                None => legacy.extend(legacy::parse_name(name).map(|job| (job, path.clone()))),
            }
        }
        let mut inner = Inner::default();
        for (job, numbers) in found {
            let numbers = legacy::upgrade(dir, job, numbers)?;
            inner.jobs.insert(job, JobSpool::load(dir, job, numbers)?);
        }
        for (job, path) in legacy {
            if inner.jobs.contains_key(&job) {
                warn!(file = %path.display(), "ignoring an old spool file of a job with segments");
                continue;
            }
            inner.jobs.insert(job, legacy::import(dir, job, &path)?);
        }
        Ok(Self {
            dir: dir.to_owned(),
            inner: Arc::new(Mutex::new(inner)),
            added: Arc::new(Notify::new()),
            freed: Arc::new(Notify::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("spool lock poisoned")
    }

    /// Makes `job`'s next log line `first_line` at the earliest: a job
    /// rolled over several servers has one log, which each continues.
    /// An assignment begins here, so an end spooled by an earlier one (a
    /// put-back on a server the job already ran on) no longer counts: the
    /// job's files stay, and its numbering goes on, until this one ends.
    pub fn begin(&self, job: JobId, first_line: u64) -> std::io::Result<()> {
        let mut inner = self.lock();
        let spool = inner.job(&self.dir, job)?;
        spool.finished = false;
        if first_line > spool.mark.next {
            spool.mark.next = first_line;
            spool.write_mark()?;
        }
        Ok(())
    }

    /// Appends a line of `job`'s log, ending the job's part if `finished`,
    /// waiting while the job has too many unacknowledged lines. The line is
    /// numbered here, after the last one the job spooled, whatever its
    /// `seq` says.
    pub async fn push(
        &self,
        job: JobId,
        line: LogLine,
        finished: Option<Finished>,
    ) -> std::io::Result<()> {
        let mut event = JobEvent::line(job, line, finished);
        loop {
            let freed = self.freed.notified();
            {
                let mut inner = self.lock();
                let spool = inner.job(&self.dir, job)?;
                if spool.unacked.len() < MAX_UNACKED && spool.unacked_bytes < MAX_UNACKED_BYTES {
                    event.lines[0].seq = spool.mark.next;
                    spool.append(&self.dir, event)?;
                    drop(inner);
                    self.added.notify_one();
                    return Ok(());
                }
            }
            freed.await;
        }
    }

    /// Waits until events may be waiting to be sent.
    pub async fn added(&self) {
        self.added.notified().await;
    }

    /// Makes every unacknowledged event due again (a new connection).
    pub fn rewind(&self) {
        for spool in self.lock().jobs.values_mut() {
            spool.sent = 0;
        }
        self.added.notify_one();
    }

    /// Whether events wait that this connection has not been handed.
    pub fn has_unsent(&self) -> bool {
        self.lock()
            .jobs
            .values()
            .any(|s| s.unacked.back().is_some_and(|e| e.seq() > s.sent))
    }

    /// Up to `max` events not yet handed to this connection, synced to disk
    /// first (one sync per file for the whole batch) so nothing is sent that
    /// the spool could lose, and no seq the coordinator has is used again.
    /// It waits for the disk: call it off the runtime (`spawn_blocking`).
    pub fn take_unsent(&self, max: usize) -> std::io::Result<Vec<JobEvent>> {
        let mut out = Vec::new();
        let (mut files, mut new_files) = (Vec::new(), false);
        {
            let mut inner = self.lock();
            for spool in inner.jobs.values_mut() {
                if out.len() >= max {
                    break;
                }
                let sent = spool.sent;
                let start = spool.unacked.partition_point(|e| e.seq() <= sent);
                let end = spool
                    .unacked
                    .len()
                    .min(start.saturating_add(max - out.len()));
                if start >= end {
                    continue;
                }
                files.extend(spool.files_to_sync()?);
                new_files |= std::mem::take(&mut spool.new_files);
                spool.sent = spool.unacked[end - 1].seq();
                out.extend(spool.unacked.range(start..end).cloned());
            }
        }
        // Outside the lock: producers go on writing while the disk syncs.
        for file in files {
            file.sync_data()?;
        }
        if new_files {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(out)
    }

    /// The coordinator stored `job`'s lines up to `seq`: forget them, and
    /// the whole job once its last line is acknowledged.
    pub fn ack(&self, job: JobId, seq: u64) {
        let mut inner = self.lock();
        let Some(spool) = inner.jobs.get_mut(&job) else {
            return;
        };
        let recorded = spool.ack(seq);
        if spool.finished && spool.unacked.is_empty() {
            let done = inner.jobs.remove(&job).expect("present above");
            if let Err(e) = done.remove() {
                warn!(job = %job, error = %e, "cannot remove a finished spool file");
            }
        } else if let Err(e) = recorded {
            warn!(job = %job, error = %e, "cannot record an acknowledgement; its events may be sent again");
        }
        drop(inner);
        self.freed.notify_waiters();
    }

    /// Whether every event of every job has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.lock().jobs.values().all(|s| s.unacked.is_empty())
    }

    /// Events of all jobs held in memory until acknowledged.
    pub fn pending(&self) -> usize {
        self.lock().jobs.values().map(|s| s.unacked.len()).sum()
    }

    /// Jobs with spooled events whose end is not spooled: they died with an
    /// earlier agent process.
    pub fn unfinished(&self) -> Vec<JobId> {
        self.lock()
            .jobs
            .iter()
            .filter(|(_, s)| !s.finished)
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use gantry_shared::messages::LogStream;

    fn line(text: &str) -> LogLine {
        LogLine {
            seq: 0,
            timestamp_ms: 0,
            stage: None,
            stream: Some(LogStream::Stdout),
            text: text.into(),
            opens_stage: false,
        }
    }

    async fn log(spool: &Spool, job: JobId, text: &str) {
        spool.push(job, line(text), None).await.unwrap();
    }

    async fn finish(spool: &Spool, job: JobId) {
        let done = Finished {
            state: gantry_shared::JobState::Succeeded,
            summary: String::new(),
            url: String::new(),
            image: String::new(),
            container: String::new(),
        };
        spool
            .push(job, line("==> succeeded"), Some(done))
            .await
            .unwrap();
    }

    fn seqs(events: &[JobEvent]) -> Vec<u64> {
        events.iter().map(JobEvent::seq).collect()
    }

    #[tokio::test]
    async fn lines_survive_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new(3).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for i in 0..5 {
            log(&spool, job, &format!("line {i}")).await;
        }
        let sent = spool.take_unsent(100).unwrap();
        assert_eq!(seqs(&sent), [1, 2, 3, 4, 5]);
        assert!(
            spool.take_unsent(100).unwrap().is_empty(),
            "nothing is sent twice on one connection"
        );
        spool.ack(job, 2);

        // A new connection resends what is unacknowledged.
        spool.rewind();
        assert_eq!(
            spool.take_unsent(100).unwrap().first().map(JobEvent::seq),
            Some(3)
        );

        // A new process finds what is not acknowledged, and numbers on.
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.unfinished(), [job]);
        finish(&spool, job).await;
        let sent = spool.take_unsent(100).unwrap();
        assert_eq!(seqs(&sent), [3, 4, 5, 6]);
        assert!(sent[3].finished.is_some(), "the end rides the last line");
        spool.ack(job, 6);
        assert!(spool.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a finished, acknowledged job leaves no file"
        );
    }

    #[tokio::test]
    async fn a_second_assignment_of_a_job_numbers_on_after_the_first_s_end() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new(4).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        log(&spool, job, "deployed").await;
        finish(&spool, job).await;
        spool.take_unsent(10).unwrap();
        // A put-back on this server, before the first end is acknowledged;
        // the coordinator's log had two more lines from another server.
        spool.begin(job, 5).unwrap();
        log(&spool, job, "putting back").await;
        assert_eq!(seqs(&spool.take_unsent(10).unwrap()), [5]);
        spool.ack(job, 5);
        log(&spool, job, "still putting back").await;
        assert_eq!(
            seqs(&spool.take_unsent(10).unwrap()),
            [6],
            "the job's spool is kept while the put-back runs"
        );
        finish(&spool, job).await;
        spool.take_unsent(10).unwrap();
        spool.ack(job, 7);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_writing_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new(1).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        log(&spool, job, "whole").await;
        spool.take_unsent(10).unwrap();
        drop(spool);
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let whole = std::fs::metadata(&path).unwrap().len();
        let mut torn = std::fs::read(&path).unwrap();
        let event = JobEvent::line(
            job,
            LogLine {
                seq: 2,
                ..line("torn")
            },
            None,
        );
        torn.extend_from_slice(&frame::event(&event)[..9]);
        std::fs::write(&path, torn).unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        log(&spool, job, "next").await;
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        let texts: Vec<(u64, String)> = spool
            .take_unsent(10)
            .unwrap()
            .into_iter()
            .flat_map(|e| e.lines)
            .map(|l| (l.seq, l.text))
            .collect();
        assert_eq!(texts, [(1, "whole".into()), (2, "next".into())]);
    }

    #[tokio::test]
    async fn segments_roll_and_acknowledged_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new(9).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let text = "x".repeat(64 * 1024);
        let count = 3 * SEGMENT_BYTES / text.len() as u64;
        for _ in 0..count {
            log(&spool, job, &text).await;
        }
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files() >= 3, "{} segments", files());
        spool.take_unsent(usize::MAX).unwrap();
        spool.ack(job, count - 1);
        assert_eq!(files(), 1, "only the newest segment is kept");
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(seqs(&spool.take_unsent(usize::MAX).unwrap()), [count]);
    }
}
