//! The spool across agent restarts, on a real directory: acknowledged lines
//! stay forgotten and their space is given back, a corrupt record costs only
//! itself, and a restarted agent numbers a job's lines on from where they
//! stopped. Written against the spool's public API only, whatever its files
//! look like.

use std::path::Path;

use gantry_agent::{report::Reporter, spool::Spool};
use gantry_shared::{
    messages::{JobEvent, LogLine, LogStream},
    JobId, JobState, Stage,
};

fn log(text: String) -> LogLine {
    LogLine {
        seq: 0,
        timestamp_ms: 0,
        stage: None,
        stream: Some(LogStream::Stdout),
        text,
        opens_stage: false,
    }
}

fn lines(events: &[JobEvent]) -> Vec<(u64, &str)> {
    events
        .iter()
        .flat_map(|e| e.lines.iter().map(|l| (l.seq, l.text.as_str())))
        .collect()
}

/// Bytes of every file in `dir`.
fn size_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Everything the spool would send on a new connection.
fn all_unacked(spool: &Spool) -> Vec<JobEvent> {
    spool.rewind();
    spool.take_unsent(usize::MAX).unwrap()
}

#[tokio::test]
async fn a_spool_of_100_000_acknowledged_lines_reopens_with_nothing_pending_and_shrunk() {
    let dir = tempfile::tempdir().unwrap();
    let job = JobId::new(7).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let text = "output of a build step, long enough to be a real line ".repeat(8);
    let mut before = 0;
    for round in 0..2 {
        // Half at a time: as many as the spool holds unacknowledged.
        for i in 0..50_000 {
            spool
                .push(job, log(format!("{round}-{i} {text}")), None)
                .await
                .unwrap();
        }
        let sent = spool.take_unsent(usize::MAX).unwrap();
        assert_eq!(sent.len(), 50_000);
        before = before.max(size_on_disk(dir.path()));
        spool.ack(job, sent.last().unwrap().seq());
    }
    assert!(spool.is_empty());
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    let after = size_on_disk(dir.path());
    println!("spool on disk: {before} bytes with 50,000 events unacknowledged; {after} bytes reopened after 100,000 acknowledged");
    assert_eq!(
        all_unacked(&spool).len(),
        0,
        "a reopened spool loads no acknowledged event"
    );
    assert!(after * 4 < before, "{after} bytes left of {before}");
    assert_eq!(spool.unfinished(), [job], "the job has not ended");
    spool.push(job, log("next".into()), None).await.unwrap();
    let next = spool.take_unsent(10).unwrap();
    assert_eq!(
        next.iter().map(JobEvent::seq).collect::<Vec<_>>(),
        [100_001]
    );
}

#[tokio::test]
async fn acknowledgements_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let job = JobId::new(2).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for i in 1..=10 {
        spool
            .push(job, log(format!("line {i}")), None)
            .await
            .unwrap();
    }
    spool.take_unsent(100).unwrap();
    spool.ack(job, 6);
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let resent = all_unacked(&spool);
    assert_eq!(
        resent.iter().map(JobEvent::seq).collect::<Vec<_>>(),
        [7, 8, 9, 10],
        "acknowledged lines are not sent again"
    );
}

#[tokio::test]
async fn a_corrupt_record_in_the_middle_loses_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let job = JobId::new(4).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for i in 1..=1000 {
        spool
            .push(job, log(format!("line {i:04}")), None)
            .await
            .unwrap();
    }
    spool.take_unsent(usize::MAX).unwrap();
    drop(spool);

    // One bad byte (not UTF-8) in the record of line 500.
    let mut corrupted = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(9).position(|w| w == b"line 0500") {
            bytes[at + 1] = 0xff;
            std::fs::write(&path, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 1);

    let spool = Spool::open(dir.path()).unwrap();
    let events = all_unacked(&spool);
    let lines = lines(&events);
    let texts: Vec<&str> = lines.iter().map(|(_, t)| *t).collect();
    for i in (1..=1000).filter(|i| *i != 500) {
        let want = format!("line {i:04}");
        assert!(texts.contains(&want.as_str()), "{want} was lost");
    }
    assert!(!texts.contains(&"line 0500"));
    assert!(!texts.iter().any(|t| t.starts_with("l\u{fffd}")));
    // The lines stay numbered without a gap, so the coordinator takes them all.
    let seqs: Vec<u64> = lines.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_restarted_agent_numbers_a_jobs_lines_on_from_where_they_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let job = JobId::new(11).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let report = Reporter::new(job, spool.clone());
    report.stage(Stage::Fetch).await;
    for i in 2..=3 {
        report.system(format!("line {i}")).await;
    }
    let sent = spool.take_unsent(100).unwrap();
    assert_eq!(
        lines(&sent).iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let opening = &sent[0].lines[0];
    assert_eq!(
        (opening.text.as_str(), opening.stage, opening.opens_stage),
        ("==> fetch", Some(Stage::Fetch), true),
        "a stage change is the line that opens the stage"
    );
    assert!(!sent[1].lines[0].opens_stage);
    // The coordinator stored them all; then the agent died.
    spool.ack(job, sent.last().unwrap().seq());
    drop((report, spool));

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.unfinished(), [job]);
    Reporter::new(job, spool.clone())
        .finish(JobState::Failed, "the agent restarted".into(), None)
        .await;
    let ended = all_unacked(&spool);
    assert_eq!(
        lines(&ended),
        [(4, "==> failed: the agent restarted")],
        "the restarted agent's line follows the stored ones"
    );
    let done = ended[0].finished.as_ref().expect("the end rides the line");
    assert_eq!(done.state, JobState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_from_concurrent_outputs_are_spooled_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let job = JobId::new(5).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let report = Reporter::new(job, spool.clone());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let report = report.clone();
            tokio::spawn(async move {
                for i in 0..2_000 {
                    report.system(format!("{w}: {i}")).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let events = spool.take_unsent(usize::MAX).unwrap();
    let seqs: Vec<u64> = lines(&events).iter().map(|(s, _)| *s).collect();
    let out_of_order: Vec<&[u64]> = seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(
        out_of_order.is_empty(),
        "{} lines out of order, first {:?}",
        out_of_order.len(),
        out_of_order.first()
    );
    assert_eq!((seqs.len(), seqs.first()), (8_000, Some(&1)));
}
