//! The agent's spool: every job event is appended to a file on disk before
//! it is sent, and forgotten only when the coordinator acknowledges it. After
//! any reconnect, sending resumes from the first unacknowledged event; after
//! an agent restart, spooled events are loaded and sent again. The
//! coordinator applies each (job, seq) once, so resending is always safe.
//!
//! File format: `<job>.spool` holds length-prefixed (u32, little endian)
//! encoded [`proto::JobEvent`]s in seq order.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{File, OpenOptions},
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use gantry_shared::{proto, JobId};
use prost::Message;
use tokio::sync::Notify;
use tracing::warn;

/// Unacknowledged events held per job before its producer waits. While the
/// coordinator is away, a build printing faster than this fills it and then
/// blocks on its pipe instead of growing the agent's memory without bound.
pub const MAX_UNACKED: usize = 50_000;

/// Events handed to the connection per batch.
pub const SEND_BATCH: usize = 512;

struct JobSpool {
    file: BufWriter<File>,
    path: PathBuf,
    /// Events not yet acknowledged, in seq order.
    unacked: VecDeque<proto::JobEvent>,
    /// Seq of the next event.
    next_seq: u64,
    /// Highest seq handed to the current connection.
    sent: u64,
    /// The job's last event (JobFinished) is spooled.
    finished: bool,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<JobId, JobSpool>,
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

fn spool_path(dir: &Path, job: JobId) -> PathBuf {
    dir.join(format!("{job}.spool"))
}

impl Spool {
    /// Opens the spool in `dir`, loading what an earlier run left unacknowledged.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut inner = Inner::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(job) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".spool"))
                .and_then(|n| n.parse::<JobId>().ok())
            else {
                continue;
            };
            let events = read_events(&path)?;
            let file = BufWriter::new(OpenOptions::new().append(true).open(&path)?);
            let next_seq = events.back().map_or(1, |e| e.seq + 1);
            let finished = events
                .iter()
                .any(|e| matches!(e.body, Some(proto::job_event::Body::Finished(_))));
            inner.jobs.insert(
                job,
                JobSpool {
                    file,
                    path,
                    unacked: events,
                    next_seq,
                    sent: 0,
                    finished,
                },
            );
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

    /// Appends an event of `job`, waiting while the job has too many
    /// unacknowledged events.
    pub async fn push(&self, job: JobId, body: proto::job_event::Body) -> std::io::Result<()> {
        loop {
            let freed = self.freed.notified();
            {
                let mut inner = self.lock();
                let spool = match inner.jobs.entry(job) {
                    std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        let path = spool_path(&self.dir, job);
                        let file = OpenOptions::new().create(true).append(true).open(&path)?;
                        entry.insert(JobSpool {
                            file: BufWriter::new(file),
                            path,
                            unacked: VecDeque::new(),
                            next_seq: 1,
                            sent: 0,
                            finished: false,
                        })
                    }
                };
                if spool.unacked.len() < MAX_UNACKED {
                    let finished = matches!(body, proto::job_event::Body::Finished(_));
                    let event = proto::JobEvent {
                        job_id: job.get(),
                        seq: spool.next_seq,
                        body: Some(body),
                    };
                    let bytes = event.encode_to_vec();
                    spool.file.write_all(&(bytes.len() as u32).to_le_bytes())?;
                    spool.file.write_all(&bytes)?;
                    spool.next_seq += 1;
                    spool.finished |= finished;
                    spool.unacked.push_back(event);
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

    /// Up to `max` events not yet handed to this connection, flushed to disk
    /// first so nothing is sent that the spool could lose.
    pub fn take_unsent(&self, max: usize) -> std::io::Result<Vec<proto::JobEvent>> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for spool in inner.jobs.values_mut() {
            if out.len() >= max {
                break;
            }
            // Seqs in `unacked` are contiguous, so the first unsent one is at a known index.
            let first = spool.unacked.front().map_or(0, |e| e.seq);
            let start = (spool.sent + 1).saturating_sub(first) as usize;
            let end = spool.unacked.len().min(start + (max - out.len()));
            if start >= end {
                continue;
            }
            let fresh: Vec<proto::JobEvent> = spool.unacked.range(start..end).cloned().collect();
            if let Some(last) = fresh.last() {
                spool.file.flush()?;
                spool.sent = last.seq;
                out.extend(fresh);
            }
        }
        Ok(out)
    }

    /// The coordinator stored `job`'s events up to `seq`: forget them, and
    /// the whole job once its last event is acknowledged.
    pub fn ack(&self, job: JobId, seq: u64) {
        let mut inner = self.lock();
        let Some(spool) = inner.jobs.get_mut(&job) else {
            return;
        };
        while spool.unacked.front().is_some_and(|e| e.seq <= seq) {
            spool.unacked.pop_front();
        }
        if spool.finished && spool.unacked.is_empty() {
            let done = inner.jobs.remove(&job).expect("present above");
            if let Err(e) = std::fs::remove_file(&done.path) {
                warn!(job = %job, error = %e, "cannot remove a finished spool file");
            }
        }
        drop(inner);
        self.freed.notify_waiters();
    }

    /// Whether every event of every job has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.lock().jobs.values().all(|s| s.unacked.is_empty())
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

fn read_events(path: &Path) -> std::io::Result<VecDeque<proto::JobEvent>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut events = VecDeque::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        match proto::JobEvent::decode(body) {
            Ok(event) => events.push_back(event),
            Err(_) => break,
        }
        at += 4 + len;
    }
    // A torn tail (the agent died mid-write) is dropped: it was never sent.
    if at < bytes.len() {
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(at as u64)?;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(text: &str) -> proto::job_event::Body {
        proto::job_event::Body::Log(proto::LogLine {
            text: text.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn events_survive_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new(3).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for i in 0..5 {
            spool.push(job, log(&format!("line {i}"))).await.unwrap();
        }
        let sent = spool.take_unsent(100).unwrap();
        assert_eq!(
            sent.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(
            spool.take_unsent(100).unwrap().is_empty(),
            "nothing is sent twice on one connection"
        );
        spool.ack(job, 2);

        // A new connection resends what is unacknowledged.
        spool.rewind();
        assert_eq!(
            spool.take_unsent(100).unwrap().first().map(|e| e.seq),
            Some(3)
        );

        // A new process finds everything not yet forgotten, and numbers on.
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.unfinished(), [job]);
        spool
            .push(
                job,
                proto::job_event::Body::Finished(proto::JobFinished::default()),
            )
            .await
            .unwrap();
        let seqs: Vec<u64> = spool
            .take_unsent(100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        spool.ack(job, 6);
        assert!(spool.is_empty());
        assert!(
            !spool_path(dir.path(), job).exists(),
            "a finished, acknowledged job leaves no file"
        );
    }

    #[test]
    fn a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.spool");
        let event = proto::JobEvent {
            job_id: 1,
            seq: 1,
            body: Some(log("whole")),
        }
        .encode_to_vec();
        let mut bytes = (event.len() as u32).to_le_bytes().to_vec();
        bytes.extend(&event);
        bytes.extend([200, 0, 0, 0, 1, 2]);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read_events(&path).unwrap().len(), 1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            4 + event.len()
        );
    }
}
