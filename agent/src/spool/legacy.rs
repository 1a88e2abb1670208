//! Spool files of agents before segments (`<job>.spool`: length-prefixed
//! encoded events, acknowledgements kept in memory only), taken over on the
//! first start after an upgrade so no event waiting in one is lost. Every
//! event in such a file is sent again; the coordinator applies each once.

use std::path::Path;

use gantry_shared::{proto, JobId};
use prost::Message;

use super::{frame, segment::JobSpool};

/// The job a pre-segment spool file is named for.
pub fn parse_name(name: &str) -> Option<JobId> {
    name.strip_suffix(".spool")?.parse().ok()
}

/// Moves the events of `path` into a new spool for `job`, synced, and
/// deletes the old file. A torn or corrupt tail ends the old file, as it did.
pub fn import(dir: &Path, job: JobId, path: &Path) -> std::io::Result<JobSpool> {
    let bytes = std::fs::read(path)?;
    let mut spool = JobSpool::create(dir, job, 1)?;
    let mut at = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(event) = bytes
            .get(at + 4..at + 4 + len)
            .and_then(|body| proto::JobEvent::decode(body).ok())
        else {
            break;
        };
        let event = frame::from_disk(event).filter(|e| e.job == job);
        if let Some(event) = event.filter(|e| e.seq >= spool.mark.next_seq) {
            spool.append(dir, event)?;
        }
        at += 4 + len;
    }
    for file in spool.files_to_sync()? {
        file.sync_data()?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    std::fs::remove_file(path)?;
    Ok(spool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Spool;

    #[test]
    fn a_pre_segment_spool_file_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        for seq in 1..=3 {
            let event = proto::JobEvent {
                job_id: 5,
                seq,
                body: Some(proto::job_event::Body::Log(proto::LogLine {
                    seq,
                    stream: proto::LogStream::Stdout as i32,
                    text: format!("line {seq}"),
                    ..Default::default()
                })),
            }
            .encode_to_vec();
            old.extend((event.len() as u32).to_le_bytes());
            old.extend(event);
        }
        let path = dir.path().join("5.spool");
        std::fs::write(&path, old).unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert!(!path.exists(), "the old file is gone");
        let seqs: Vec<u64> = spool
            .take_unsent(10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.take_unsent(10).unwrap().len(), 3, "now in segments");
    }
}
