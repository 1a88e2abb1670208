//! The sled store: logs stored once and read back in order, ids across reopen.

use super::*;

fn line(seq: u64, text: &str) -> LogLine {
    LogLine {
        seq,
        timestamp_ms: 1_700_000_000_000,
        stage: None,
        stream: Some(gantry_shared::messages::LogStream::Stdout),
        text: text.into(),
    }
}

#[test]
fn log_lines_are_stored_once_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let job = JobId::new(7).unwrap();
    let other = JobId::new(8).unwrap();
    let batch = |seqs: std::ops::RangeInclusive<u64>| -> Vec<LogLine> {
        seqs.map(|s| line(s, &format!("line {s}"))).collect()
    };
    assert_eq!(
        store
            .append_logs(job, batch(1..=3))
            .unwrap()
            .unwrap()
            .lines_count(),
        3
    );
    // Resent after a reconnect, overlapping what is stored.
    let fresh = store.append_logs(job, batch(2..=5)).unwrap().unwrap();
    let seqs = |run: &Run| {
        run.lines()
            .unwrap()
            .iter()
            .map(|l| l.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!((fresh.first, fresh.last), (4, 5));
    assert_eq!(seqs(&fresh), [4, 5]);
    assert!(store.append_logs(job, batch(5..=5)).unwrap().is_none());
    store.append_logs(other, batch(1..=1)).unwrap();
    // A gap is refused and changes nothing.
    assert!(store.append_logs(job, batch(7..=8)).is_err());
    // So is a stored seq sent again with other content.
    let reused = vec![line(5, "another line 5"), line(6, "line 6")];
    assert_eq!(
        store.append_logs(job, reused).unwrap_err().to_string(),
        "line 5 of job 7 is stored with other content; the batch is refused \
         (the agent numbered two lines alike)"
    );

    let texts: Vec<_> = store
        .logs(job, 0, 100)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(texts, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
    let from_middle: Vec<u64> = store
        .logs(job, 2, 100)
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect();
    assert_eq!(from_middle, [2, 3, 4, 5]);
    // Runs as stored: the first cut to start at `from`, the rest whole.
    let runs = store.log_runs(job, 2, 100).unwrap();
    let bounds: Vec<_> = runs.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(bounds, [(2, 3), (4, 5)]);
    assert_eq!(seqs(&runs[0]), [2, 3]);
    assert_eq!(seqs(&runs[1]), [4, 5]);
    // Reading stops once it holds the lines asked for.
    assert_eq!(store.log_runs(job, 1, 2).unwrap().len(), 1);
    assert!(store.log_runs(job, 6, 100).unwrap().is_empty());
    assert_eq!(store.last_seq(job).unwrap(), 5);
    assert_eq!(store.last_seq(JobId::new(9).unwrap()).unwrap(), 0);
    // A reopened store knows where each log ends.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store
            .append_logs(job, batch(5..=6))
            .unwrap()
            .unwrap()
            .lines_count(),
        1
    );
    assert_eq!(store.last_seq(job).unwrap(), 6);
}

#[test]
fn job_ids_keep_increasing_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap().next_job_id().unwrap();
    // sled lets go of its lock when its flusher thread has stopped,
    // a moment after the drop: wait for it as `serve` does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reopened = loop {
        match Store::open(dir.path()) {
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => break opened.unwrap(),
        }
    };
    let second = reopened.next_job_id().unwrap();
    assert_eq!((first.get(), second.get()), (1, 2));
}
