//! Spools of earlier agents, written as they wrote them, read back by
//! this one.

use super::*;
use crate::spool::Spool;

const JOB: u64 = 5;

fn job() -> JobId {
    JobId::new(JOB).unwrap()
}

fn old(seq: u64, body: OldBody) -> Vec<u8> {
    OldJobEvent {
        job_id: JOB,
        seq,
        body: Some(body),
    }
    .encode_to_vec()
}

fn log(line: u64, stage: Stage, text: &str) -> OldBody {
    OldBody::Log(proto::LogLine {
        seq: line,
        timestamp_ms: 1_700_000_000_000 + line as i64,
        stage: stage.to_proto() as i32,
        stream: proto::LogStream::System as i32,
        text: text.into(),
        opens_stage: false,
    })
}

fn ended(summary: &str) -> OldBody {
    OldBody::Finished(proto::JobFinished {
        state: proto::JobState::Succeeded as i32,
        summary: summary.into(),
        ..Default::default()
    })
}

fn old_mark(acked: u64, next_seq: u64, next_line: u64) -> Vec<u8> {
    let body: Vec<u8> = [acked, next_seq, next_line]
        .iter()
        .flat_map(|n| n.to_le_bytes())
        .collect();
    frame::frame(KIND_OLD_MARK, &body)
}

fn old_frame(seq: u64, body: OldBody) -> Vec<u8> {
    frame::frame(KIND_OLD_EVENT, &old(seq, body))
}

/// (seq, text, opens its stage, ends the part) of every line.
fn shape(events: &[JobEvent]) -> Vec<(u64, String, bool, bool)> {
    events
        .iter()
        .flat_map(|e| {
            let last = e.seq();
            let done = e.finished.is_some();
            e.lines
                .iter()
                .map(move |l| (l.seq, l.text.clone(), l.opens_stage, done && l.seq == last))
        })
        .collect()
}

fn line(seq: u64, text: &str, opens: bool, ends: bool) -> (u64, String, bool, bool) {
    (seq, text.into(), opens, ends)
}

fn unacked(spool: &Spool) -> Vec<JobEvent> {
    spool.rewind();
    spool.take_unsent(usize::MAX).unwrap()
}

#[test]
fn a_pre_segment_spool_file_is_taken_over_as_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = Vec::new();
    let events = [
        old(1, OldBody::Stage(Stage::Build.to_proto() as i32)),
        old(2, log(1, Stage::Build, "==> build")),
        old(3, log(2, Stage::Build, "==> succeeded: ok")),
        old(4, ended("ok")),
    ];
    for event in events {
        file.extend((event.len() as u32).to_le_bytes());
        file.extend(event);
    }
    let path = dir.path().join(format!("{JOB}.spool"));
    std::fs::write(&path, file).unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    assert!(!path.exists(), "the old file is gone");
    let want = vec![
        line(1, "==> build", true, false),
        line(2, "==> succeeded: ok", false, true),
    ];
    assert_eq!(shape(&unacked(&spool)), want);
    assert!(spool.unfinished().is_empty(), "its end came over");
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(shape(&unacked(&spool)), want, "now in segments");
}

#[tokio::test]
async fn old_segments_are_migrated_once_and_numbering_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // A job continued from line 10; the first two events acknowledged; a
    // stage entered whose line the agent died before writing.
    let segment: Vec<u8> = [
        old_mark(0, 1, 10),
        old_frame(1, OldBody::Stage(Stage::Fetch.to_proto() as i32)),
        old_frame(2, log(10, Stage::Fetch, "==> fetch")),
        old_frame(3, log(11, Stage::Fetch, "fetched")),
        old_mark(2, 4, 12),
        old_frame(4, OldBody::Stage(Stage::Build.to_proto() as i32)),
    ]
    .concat();
    let old_path = segment_path(dir.path(), job(), 3);
    std::fs::write(&old_path, &segment).unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    let want = vec![
        line(11, "fetched", false, false),
        line(12, "==> build", true, false),
    ];
    assert_eq!(shape(&unacked(&spool)), want);
    assert!(!old_path.exists(), "the old segment is gone");
    assert!(segment_path(dir.path(), job(), 4).exists());
    spool
        .push(job(), unacked(&spool)[0].lines[0].clone(), None)
        .await
        .unwrap();
    assert_eq!(unacked(&spool).last().map(JobEvent::seq), Some(13));
    drop(spool);

    // A crash after the new segment was written, before the old one was
    // deleted: the old one is a leftover, not converted again; and a
    // segment never made whole is not read.
    std::fs::write(&old_path, &segment).unwrap();
    let partial = dir.path().join(format!(
        "{JOB}-0000000009{}",
        super::super::segment::PARTIAL
    ));
    std::fs::write(&partial, &segment).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    assert!(!old_path.exists() && !partial.exists());
    let seqs: Vec<u64> = unacked(&spool).iter().map(JobEvent::seq).collect();
    assert_eq!(seqs, [11, 12, 13]);
    spool.ack(job(), 12);
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(
        unacked(&spool)
            .iter()
            .map(JobEvent::seq)
            .collect::<Vec<_>>(),
        [13]
    );
}

fn event(seq: u64, body: OldBody) -> OldRecord {
    old_event(OldJobEvent {
        job_id: JOB,
        seq,
        body: Some(body),
    })
    .unwrap()
}

#[test]
fn an_end_not_acknowledged_is_kept_with_the_line_it_rides() {
    let records = vec![
        event(1, log(5, Stage::Health, "==> failed: unhealthy")),
        event(2, ended("unhealthy")),
        OldRecord::Mark(1, 3, 6),
    ];
    let (mark, events) = convert(job(), records);
    assert_eq!(mark, Mark { acked: 4, next: 6 });
    assert_eq!(
        shape(&events),
        [line(5, "==> failed: unhealthy", false, true)]
    );
}

#[test]
fn an_end_or_a_stage_without_its_line_gets_one_and_lost_lines_keep_their_places() {
    let records = vec![
        OldRecord::Mark(0, 1, 1),
        event(1, log(1, Stage::Fetch, "a")),
        // Events 2 and 3 (lines 2 and 3) were lost to a corrupt frame.
        event(4, log(4, Stage::Fetch, "d")),
        event(5, OldBody::Stage(Stage::Build.to_proto() as i32)),
        event(6, ended("cancelled early")),
    ];
    let (mark, events) = convert(job(), records);
    assert_eq!(mark, Mark { acked: 0, next: 7 });
    assert_eq!(
        shape(&events),
        [
            line(1, "a", false, false),
            line(2, frame::LOST_LINE, false, false),
            line(3, frame::LOST_LINE, false, false),
            line(4, "d", false, false),
            line(5, "==> build", true, false),
            line(6, "==> succeeded: cancelled early", false, true),
        ]
    );
    let records = vec![
        OldRecord::Mark(3, 1, 1),
        event(1, log(1, Stage::Fetch, "a")),
        event(4, log(4, Stage::Fetch, "d")),
    ];
    let (mark, events) = convert(job(), records);
    assert_eq!(
        (mark.acked, shape(&events)),
        (3, vec![line(4, "d", false, false)])
    );
}
