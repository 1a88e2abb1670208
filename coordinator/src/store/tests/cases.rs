//! The promises every engine keeps: logs stored once and read back in
//! order, ids across reopen, the audit trail's pages, jobs asked for, and
//! durability (a write survives its store, and a closed store refuses
//! writes).

use gantry_shared::{AppName, EnvName, JobId};

use super::*;

on_each_engine!(
    log_lines_are_stored_once_and_read_back_in_order,
    job_ids_keep_increasing_across_reopen,
    what_a_write_said_was_durable_is_there_after_a_reopen,
    jobs_are_listed_newest_first_as_asked,
    the_audit_trail_reads_in_pages_newest_first_to_its_end,
    releases_and_agents_are_read_back_as_written,
);

async fn log_lines_are_stored_once_and_read_back_in_order(engine: Engine) {
    let store = engine.open().await;
    let job = JobId::new(7).unwrap();
    let other = JobId::new(8).unwrap();
    let first = append(&store, job, batch(1..=3)).await.unwrap();
    assert_eq!(first.lines_count(), 3);
    // Resent after a reconnect, overlapping what is stored.
    let fresh = append(&store, job, batch(2..=5)).await.unwrap();
    assert_eq!((fresh.first, fresh.last), (4, 5));
    assert_eq!(seqs(&fresh), [4, 5]);
    assert!(append(&store, job, batch(5..=5)).await.is_none());
    append(&store, other, batch(1..=1)).await;
    // A gap is refused and changes nothing.
    let gap = store.append_logs(job, batch(7..=8)).await.err().unwrap();
    assert!(!gap.is_failure());
    assert_eq!(
        gap.to_string(),
        "lines of job 7 must follow seq 5, but start at 7"
    );
    // So is a stored seq sent again with other content.
    let reused = vec![line(5, "another line 5"), line(6, "line 6")];
    assert_eq!(
        store
            .append_logs(job, reused)
            .await
            .err()
            .unwrap()
            .to_string(),
        "line 5 of job 7 is stored with other content; the batch is refused \
         (the agent numbered two lines alike)"
    );
    // Runs as stored: the first cut to start at `from`, the rest whole.
    let runs = store.log_runs(job, 2, 100).await.unwrap();
    let bounds: Vec<_> = runs.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(bounds, [(2, 3), (4, 5)]);
    assert_eq!(seqs(&runs[0]), [2, 3]);
    assert_eq!(seqs(&runs[1]), [4, 5]);
    let texts: Vec<String> = store
        .log_runs(job, 0, 100)
        .await
        .unwrap()
        .iter()
        .flat_map(|r| r.lines().unwrap())
        .map(|l| l.text)
        .collect();
    assert_eq!(texts, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
    // Reading stops once it holds the lines asked for.
    assert_eq!(store.log_runs(job, 1, 2).await.unwrap().len(), 1);
    assert!(store.log_runs(job, 6, 100).await.unwrap().is_empty());
    assert_eq!(store.last_seq(job).await.unwrap(), 5);
    assert_eq!(store.last_seq(JobId::new(9).unwrap()).await.unwrap(), 0);
    // A reopened store knows where each log ends.
    store.close().await.unwrap();
    drop(store);
    let store = engine.open().await;
    assert_eq!(
        append(&store, job, batch(5..=6))
            .await
            .unwrap()
            .lines_count(),
        1
    );
    assert_eq!(store.last_seq(job).await.unwrap(), 6);
}

async fn job_ids_keep_increasing_across_reopen(engine: Engine) {
    let store = engine.open().await;
    let first = store.next_job_id().await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let second = engine.open().await.next_job_id().await.unwrap();
    assert_eq!((first.get(), second.get()), (1, 2));
}

async fn what_a_write_said_was_durable_is_there_after_a_reopen(engine: Engine) {
    let store = engine.open().await;
    let durable = store.put_job(&job(1, "shop", "prod")).await.unwrap();
    durable.await.unwrap();
    // Dropped without closing: what was said to be durable is read back.
    drop(store);
    let store = engine.open().await;
    let back = store.job(JobId::new(1).unwrap()).await.unwrap().unwrap();
    assert_eq!(back.app.as_str(), "shop");
    // A closed store takes no more writes, and says so.
    store.close().await.unwrap();
    let refused = store.put_job(&job(2, "shop", "prod")).await.err().unwrap();
    assert!(refused.is_failure());
    assert_eq!(
        refused.to_string(),
        "storage error: a commit failed: the store is closed"
    );
}

async fn jobs_are_listed_newest_first_as_asked(engine: Engine) {
    let store = engine.open().await;
    let mut ended = job(3, "shop", "prod");
    ended.state = gantry_shared::JobState::Succeeded;
    let writes = vec![
        store.put_job(&job(1, "shop", "prod")).await.unwrap(),
        store.put_job(&job(2, "shop", "test")).await.unwrap(),
        store.put_job(&ended).await.unwrap(),
        store.put_job(&job(4, "cart", "prod")).await.unwrap(),
    ];
    Durable::all(writes).await.unwrap();
    let ids = |jobs: Vec<JobRecord>| jobs.iter().map(|j| j.id.get()).collect::<Vec<_>>();
    assert_eq!(
        ids(store.jobs(&JobQuery::default()).await.unwrap()),
        [4, 3, 2, 1]
    );
    let shop = AppName::new("shop").unwrap();
    let prod = EnvName::new("prod").unwrap();
    assert_eq!(
        ids(store.jobs(&JobQuery::pending(&shop, &prod)).await.unwrap()),
        [1]
    );
    let query = JobQuery {
        env: Some(prod),
        limit: Some(2),
        ..JobQuery::default()
    };
    assert_eq!(ids(store.jobs(&query).await.unwrap()), [4, 3]);
}

async fn the_audit_trail_reads_in_pages_newest_first_to_its_end(engine: Engine) {
    let store = engine.open().await;
    for n in 0..1_201 {
        let entry = AuditEntry::new("who", "peer", "deploy", "target", true, n.to_string());
        let (_, durable) = store.append_audit(entry).await.unwrap();
        drop(durable);
    }
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = Vec::new();
    loop {
        let (page, more) = store.audit(before, 500).await.unwrap();
        pages.push(page.len());
        seen.extend(page.iter().map(|e| e.seq));
        if !more {
            break;
        }
        before = page.last().map(|e| e.seq);
    }
    assert_eq!(pages, [500, 500, 201]);
    assert_eq!(seen, (1..=1_201).rev().collect::<Vec<u64>>());
    // A page that ends exactly at the first entry says there is no more.
    let (last, more) = store.audit(Some(501), 500).await.unwrap();
    assert_eq!((last.len(), more), (500, false));
}

async fn releases_and_agents_are_read_back_as_written(engine: Engine) {
    let store = engine.open().await;
    let (shop, prod) = (AppName::new("shop").unwrap(), EnvName::new("prod").unwrap());
    let deploy = job(1, "shop", "prod");
    let mut writes = Vec::new();
    let mut written = Vec::new();
    for number in 1..=3 {
        let release = crate::release::ReleaseRecord::from_job(&deploy, number, Vec::new());
        writes.push(store.put_release(&release).await.unwrap());
        written.push(release);
    }
    let other = job(2, "shop", "test");
    let elsewhere = crate::release::ReleaseRecord::from_job(&other, 9, Vec::new());
    writes.push(store.put_release(&elsewhere).await.unwrap());
    let agent = AgentRecord {
        name: gantry_shared::AgentName::new("prod-1").unwrap(),
        env: prod.clone(),
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        capacity: 2,
        version: "0.1.0".into(),
        last_seen_ms: 5,
    };
    writes.push(store.put_agent(&agent).await.unwrap());
    writes.push(
        store
            .put_config_snapshot("apps", "[]".into())
            .await
            .unwrap(),
    );
    Durable::all(writes).await.unwrap();
    let numbers = |releases: Vec<crate::release::ReleaseRecord>| {
        releases.iter().map(|r| r.number).collect::<Vec<_>>()
    };
    assert_eq!(
        numbers(store.releases(&shop, &prod, None).await.unwrap()),
        [3, 2, 1]
    );
    assert_eq!(
        numbers(store.releases(&shop, &prod, Some(2)).await.unwrap()),
        [3, 2]
    );
    let current = store.current_release(&shop, &prod).await.unwrap().unwrap();
    assert_eq!(Some(current), written.pop());
    assert_eq!(store.agent(&agent.name).await.unwrap(), Some(agent.clone()));
    assert_eq!(store.agents().await.unwrap(), [agent]);
}
