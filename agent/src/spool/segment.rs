//! One job's spool on disk: a run of segment files `<job>-<n>.seg`, each a
//! sequence of [frames](super::frame). Events are appended to the newest
//! segment; once it holds [`SEGMENT_BYTES`] the next event starts a new one,
//! which opens with a [`Mark`] of where the job stands. A segment whose
//! events are all acknowledged is deleted, so a job's files hold its
//! unacknowledged events plus at most about two segments of acknowledged
//! ones, however long the job runs.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use gantry_shared::{messages::JobEvent, JobId};
use tracing::warn;

use super::frame::{self, lost_lines, Mark, Record};

/// Size at which a job's newest segment is closed and a new one begun:
/// acknowledged events cost at most about two segments of disk, and a large
/// backlog (64 MiB) is a handful of files.
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// How the name of a segment being written whole ends until it is
/// ([`JobSpool::write_whole`]).
pub const PARTIAL: &str = ".seg.partial";

/// A segment file.
struct Segment {
    number: u64,
    path: PathBuf,
    /// Highest line seq written to it (its mark's, if it has no lines).
    last_seq: u64,
}

/// A job's spool: its files, and its unacknowledged events in memory.
pub struct JobSpool {
    /// Oldest first; never empty. The newest is the one written to.
    segments: VecDeque<Segment>,
    writer: BufWriter<File>,
    /// Bytes in the newest segment.
    written: u64,
    /// Closed segments not yet synced to disk.
    unsynced: Vec<File>,
    /// A segment file was created since the directory was last synced.
    pub new_files: bool,
    /// Lines not yet acknowledged, in seq order.
    pub unacked: VecDeque<JobEvent>,
    /// Their encoded size.
    pub unacked_bytes: usize,
    /// The acknowledged seq and the seq to number on from.
    pub mark: Mark,
    /// Highest line seq handed to the current connection.
    pub sent: u64,
    /// The line that ends the job's part (with its `Finished`) is spooled.
    pub finished: bool,
}

pub(super) fn segment_path(dir: &Path, job: JobId, number: u64) -> PathBuf {
    dir.join(format!("{job}-{number:010}.seg"))
}

/// The job and segment number a file name stands for, if it is a segment.
pub fn parse_name(name: &str) -> Option<(JobId, u64)> {
    let (job, number) = name.strip_suffix(".seg")?.split_once('-')?;
    Some((job.parse().ok()?, number.parse().ok()?))
}

fn create(dir: &Path, job: JobId, number: u64, mark: &Mark) -> io::Result<(File, u64)> {
    let path = segment_path(dir, job, number);
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let bytes = frame::mark(mark);
    file.write_all(&bytes)?;
    Ok((file, bytes.len() as u64))
}

impl JobSpool {
    /// A new job's spool, numbering its lines from `next_line`.
    pub fn create(dir: &Path, job: JobId, next_line: u64) -> io::Result<Self> {
        let mark = Mark {
            acked: 0,
            next: next_line,
        };
        let (file, written) = create(dir, job, 0, &mark)?;
        Ok(Self {
            segments: VecDeque::from([Segment {
                number: 0,
                path: segment_path(dir, job, 0),
                last_seq: 0,
            }]),
            writer: BufWriter::new(file),
            written,
            unsynced: Vec::new(),
            new_files: true,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            mark,
            sent: 0,
            finished: false,
        })
    }

    /// Writes segment `number` of `job` whole: `events`, with `mark` (where
    /// the job stands after them) and synced,
    /// appearing under its name only once complete (a crash leaves either
    /// nothing or all of it). How older spool files are migrated.
    pub fn write_whole(
        dir: &Path,
        job: JobId,
        number: u64,
        mark: &Mark,
        events: &[JobEvent],
    ) -> io::Result<()> {
        let path = segment_path(dir, job, number);
        let partial = path.with_extension(&PARTIAL[1..]);
        let mut file = BufWriter::new(File::create(&partial)?);
        // Where the segment begins, then where the job stands after it.
        let begins = Mark {
            next: events.first().map_or(mark.next, JobEvent::first_seq),
            ..*mark
        };
        file.write_all(&frame::mark(&begins))?;
        for event in events {
            file.write_all(&frame::event(event))?;
        }
        file.write_all(&frame::mark(mark))?;
        file.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        std::fs::rename(&partial, &path)?;
        File::open(dir)?.sync_all()
    }

    /// Reads a job's segments (`numbers`, any order) back: what is not
    /// acknowledged, and the seq to number on from. Bad frames are
    /// skipped; a lost log line is replaced by [`frame::LOST_LINE`].
    pub fn load(dir: &Path, job: JobId, mut numbers: Vec<u64>) -> io::Result<Self> {
        numbers.sort_unstable();
        let mut mark = Mark::default();
        let (mut unacked, mut segments) = (VecDeque::new(), VecDeque::new());
        let (mut finished, mut good_end) = (false, 0);
        for &number in &numbers {
            let path = segment_path(dir, job, number);
            let bytes = std::fs::read(&path)?;
            let parsed = frame::parse(&bytes);
            if parsed.bad_regions > 0 {
                warn!(job = %job, file = %path.display(), regions = parsed.bad_regions,
                    "skipped corrupt records in the spool");
            }
            for record in parsed.records {
                match record {
                    Record::Mark(m) => {
                        mark.acked = mark.acked.max(m.acked);
                        mark.next = mark.next.max(m.next);
                    }
                    Record::Event(event) if event.first_seq() >= mark.next => {
                        if event.first_seq() > mark.next {
                            unacked.push_back(lost_lines(job, mark.next, event.first_seq() - 1));
                        }
                        finished = event.finished.is_some();
                        mark.next = event.seq() + 1;
                        unacked.push_back(event);
                    }
                    Record::Event(_) => {}
                    Record::Old { .. } => {
                        warn!(job = %job, file = %path.display(),
                            "skipped a record of an older agent in a migrated spool");
                    }
                }
                while unacked
                    .front()
                    .is_some_and(|e: &JobEvent| e.seq() <= mark.acked)
                {
                    unacked.pop_front();
                }
            }
            segments.push_back(Segment {
                number,
                path,
                last_seq: mark.next - 1,
            });
            good_end = parsed.good_end as u64;
        }
        let newest = segments.back().expect("a job is listed for its segments");
        // A torn tail (the agent died mid-write) is cut off: it was never sent.
        let file = OpenOptions::new().append(true).open(&newest.path)?;
        file.set_len(good_end)?;
        for segment in &segments {
            // Sent again soon: on disk first, as anything sent must be.
            File::open(&segment.path)?.sync_data()?;
        }
        Ok(Self {
            segments,
            writer: BufWriter::new(file),
            written: good_end,
            unsynced: Vec::new(),
            new_files: false,
            unacked_bytes: unacked.iter().map(JobEvent::size).sum(),
            unacked,
            mark,
            sent: 0,
            finished,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Appends `event` (numbered by the caller from [`JobSpool::mark`]).
    pub fn append(&mut self, dir: &Path, event: JobEvent) -> io::Result<()> {
        if self.written >= SEGMENT_BYTES {
            self.roll(dir, event.job)?;
        }
        self.write(&frame::event(&event))?;
        self.mark.next = event.seq() + 1;
        self.finished |= event.finished.is_some();
        self.segments.back_mut().expect("never empty").last_seq = event.seq();
        self.unacked_bytes += event.size();
        self.unacked.push_back(event);
        Ok(())
    }

    /// Closes the newest segment and begins the next.
    fn roll(&mut self, dir: &Path, job: JobId) -> io::Result<()> {
        self.writer.flush()?;
        let number = self.segments.back().expect("never empty").number + 1;
        let (file, written) = create(dir, job, number, &self.mark)?;
        let old = std::mem::replace(&mut self.writer, BufWriter::new(file));
        self.unsynced
            .push(old.into_inner().map_err(|e| e.into_error())?);
        self.written = written;
        self.new_files = true;
        self.segments.push_back(Segment {
            number,
            path: segment_path(dir, job, number),
            last_seq: self.mark.next - 1,
        });
        Ok(())
    }

    /// Writes where the job stands now.
    pub fn write_mark(&mut self) -> io::Result<()> {
        let mark = self.mark;
        self.write(&frame::mark(&mark))
    }

    /// The files to sync before what was written is sent: written data
    /// reaches the kernel now, and the returned handles reach the disk.
    pub fn files_to_sync(&mut self) -> io::Result<Vec<File>> {
        self.writer.flush()?;
        let mut files = std::mem::take(&mut self.unsynced);
        files.push(self.writer.get_ref().try_clone()?);
        Ok(files)
    }

    /// Forgets lines up to `seq`: records that on disk (in the kernel's
    /// cache; a lost mark means lines sent again, which the coordinator
    /// stores once) and deletes segments that hold nothing else.
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        while self.unacked.front().is_some_and(|e| e.seq() <= seq) {
            let event = self.unacked.pop_front().expect("checked");
            self.unacked_bytes -= event.size();
        }
        if seq <= self.mark.acked {
            return Ok(());
        }
        self.mark.acked = seq;
        self.write_mark()?;
        self.writer.flush()?;
        while self.segments.len() > 1 && self.segments[0].last_seq <= seq {
            let done = self.segments.pop_front().expect("checked");
            std::fs::remove_file(&done.path)?;
        }
        Ok(())
    }

    /// Deletes every file of the job.
    pub fn remove(self) -> io::Result<()> {
        drop(self.writer);
        for segment in self.segments {
            std::fs::remove_file(&segment.path)?;
        }
        Ok(())
    }
}
