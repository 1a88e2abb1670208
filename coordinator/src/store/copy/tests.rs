//! Copying a real sled store into a real Postgres database (the test
//! cluster of [`crate::store::postgres::testdb`]): every record reads back
//! equal, ids go on from the source's, and a refused or failed copy
//! changes nothing.

use std::time::{Duration, Instant};

use gantry_shared::{
    messages::{LogLine, LogStream},
    proto, AgentName, AppName, EnvName, JobId, JobState,
};

use super::*;
use crate::{
    audit::AuditEntry,
    job::{AgentRecord, JobKind},
    release::ReleaseRecord,
    store::{postgres::testdb::TestDb, Durable, JobQuery, Refusal},
};

/// Opens `dir` with `open`, waiting while a store dropped a moment ago
/// still holds its lock (sled's own thread lets go shortly after a drop).
fn opened<T, E: std::fmt::Display + std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Err(e) if Instant::now() < deadline && is_held(&e.to_string()) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return opened.unwrap(),
        }
    }
}

/// Whether `error` says another store still holds the database.
fn is_held(error: &str) -> bool {
    error.contains("could not acquire lock") || error.contains("held by a running coordinator")
}

fn app(name: &str) -> AppName {
    AppName::new(name).unwrap()
}

fn env(name: &str) -> EnvName {
    EnvName::new(name).unwrap()
}

fn agent(name: &str) -> AgentName {
    AgentName::new(name).unwrap()
}

fn lines(seqs: std::ops::RangeInclusive<u64>, job: u64) -> Vec<LogLine> {
    seqs.map(|seq| LogLine {
        seq,
        timestamp_ms: 1_700_000_000_000 + seq as i64,
        stage: None,
        stream: Some(LogStream::Stdout),
        text: format!("job {job} line {seq}"),
        opens_stage: seq == 1,
    })
    .collect()
}

fn release(app_name: &str, env_name: &str, number: u64, job: u64) -> ReleaseRecord {
    ReleaseRecord {
        app: app(app_name),
        env: env(env_name),
        number,
        job: JobId::new(job).unwrap(),
        kind: JobKind::Deploy,
        requested_by: "ann".into(),
        created_ms: 1_700_000_000_000 + number as i64,
        base: None,
        branches: Vec::new(),
        commit: format!("c{number}"),
        image: format!("gantry/{app_name}:{number}"),
        servers: Vec::new(),
    }
}

fn cert(serial: &str, name: &str, env_name: &str, issued_ms: i64) -> IssuedCert {
    IssuedCert {
        serial: serial.into(),
        name: agent(name),
        env: env(env_name),
        issued_ms,
        revoked_ms: None,
    }
}

/// Jobs in the sled store `fill` writes, with the longest log's length:
/// over a page of the copy, so it is read in several.
const LONG_LOG: u64 = LOG_PAGE_LINES + 1_500;

/// Fills `store` through the [`Store`] trait, as a coordinator would:
/// six ids handed out and five jobs recorded (two ended), logs (one
/// longer than a page of the copy, one of a job without a record),
/// releases of three (app, env), two agents, config snapshots, audit
/// entries, certificates (one replaced, one revoked) and their tokens.
async fn fill(store: &SledStore) {
    let mut writes = Vec::new();
    for _ in 0..6 {
        store.next_job_id().await.unwrap();
    }
    for id in 1..=5 {
        let mut job = JobRecord::queued(
            JobId::new(id).unwrap(),
            app(if id % 2 == 0 { "api" } else { "shop" }),
            env("prod"),
            JobKind::Deploy,
            Vec::new(),
            None,
            format!("commit{id}"),
            "ann".into(),
            1_700_000_000_000,
        );
        if id <= 2 {
            job.state = JobState::Succeeded;
        }
        writes.push(store.put_job(&job).await.unwrap());
    }
    let id = |n| JobId::new(n).unwrap();
    for (job, batch) in [
        (1, lines(1..=3, 1)),
        (1, lines(4..=10, 1)),
        (2, lines(1..=1, 2)),
        (9, lines(1..=2, 9)),
    ] {
        writes.push(store.append_logs(id(job), batch).await.unwrap().1);
    }
    let mut seq = 1;
    while seq <= LONG_LOG {
        let last = (seq + 999).min(LONG_LOG);
        writes.push(
            store
                .append_logs(id(3), lines(seq..=last, 3))
                .await
                .unwrap()
                .1,
        );
        seq = last + 1;
    }
    for r in [
        release("shop", "prod", 1, 1),
        release("shop", "prod", 2, 3),
        release("shop", "dev", 1, 5),
        release("api", "prod", 1, 2),
    ] {
        writes.push(store.put_release(&r).await.unwrap());
    }
    for (name, env_name) in [("prod-1", "prod"), ("dev-1", "dev")] {
        let record = AgentRecord {
            name: agent(name),
            env: env(env_name),
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            capacity: 2,
            version: "0.1.0".into(),
            last_seen_ms: 1_700_000_000_500,
        };
        writes.push(store.put_agent(&record).await.unwrap());
    }
    writes.push(
        store
            .put_config_snapshot("apps", "[shop, api]".into())
            .await
            .unwrap(),
    );
    writes.push(
        store
            .put_config_snapshot("environments", "[prod, dev]".into())
            .await
            .unwrap(),
    );
    for n in 1..=5 {
        let entry = AuditEntry::new(
            "ann",
            "127.0.0.1",
            "deploy",
            format!("job {n}"),
            n != 3,
            "ok",
        );
        writes.push(store.append_audit(entry).await.unwrap().1);
    }
    // prod-1 enrolled, then reinstalled (its first certificate replaced);
    // dev-1 enrolled, then revoked.
    for (c, nonce) in [
        (cert("0a", "prod-1", "prod", 100), "nonce-1"),
        (cert("0b", "prod-1", "prod", 200), "nonce-2"),
        (cert("0c", "dev-1", "dev", 300), "nonce-3"),
    ] {
        let (outcome, durable) = store.enrol(&c, nonce).await.unwrap();
        outcome.unwrap();
        writes.push(durable);
    }
    writes.push(store.revoke_certs(&agent("dev-1"), 400).await.unwrap().1);
    Durable::all(writes).await.unwrap();
}

/// A logged job: its id, its last seq, its runs' bounds and its lines.
type Log = (JobId, u64, Vec<(u64, u64)>, Vec<proto::LogLine>);

/// Everything `store` holds, as its export and the trait read it.
#[derive(Debug, PartialEq)]
struct Everything {
    counter: u64,
    jobs: Vec<JobRecord>,
    unended: Vec<JobRecord>,
    logs: Vec<Log>,
    releases: Vec<((AppName, EnvName), Vec<ReleaseRecord>)>,
    agents: Vec<AgentRecord>,
    snapshots: Vec<(String, String)>,
    audit: Vec<AuditEntry>,
    certs: Vec<IssuedCert>,
    tokens: Vec<(String, i64)>,
}

async fn everything(store: &dyn Export) -> Everything {
    let mut logs = Vec::new();
    for job in store.logged_jobs().await.unwrap() {
        let runs = store.log_runs(job, 1, u64::MAX).await.unwrap();
        let bounds = runs.iter().map(|r| (r.first, r.last)).collect();
        let lines = runs.iter().flat_map(|r| r.lines().unwrap()).collect();
        logs.push((job, store.last_seq(job).await.unwrap(), bounds, lines));
    }
    let mut releases = Vec::new();
    for (app, env) in store.release_streams().await.unwrap() {
        let of = store.releases(&app, &env, None).await.unwrap();
        releases.push(((app, env), of));
    }
    let mut agents = store.agents().await.unwrap();
    agents.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let (audit, more) = store.audit(None, 100).await.unwrap();
    assert!(!more);
    Everything {
        counter: store.job_counter().await.unwrap(),
        jobs: store.jobs(&JobQuery::default()).await.unwrap(),
        unended: store
            .jobs(&JobQuery {
                unended: true,
                ..Default::default()
            })
            .await
            .unwrap(),
        logs,
        releases,
        agents,
        snapshots: store.config_snapshots().await.unwrap(),
        audit,
        certs: store.all_certs().await.unwrap(),
        tokens: store.used_tokens().await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_of_a_sled_store_reads_back_equal_from_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    fill(&sled).await;
    let db = TestDb::create().await;
    let pg = PgStore::open(&db.url, None).await.unwrap();
    pg.lead_for_test().await;

    let moved = copy_into_postgres(&sled, &pg).await.unwrap();
    assert_eq!(
        moved,
        Moved {
            jobs: 5,
            log_lines: 10 + 1 + LONG_LOG + 2,
            logged_jobs: 4,
            releases: 4,
            agents: 2,
            config_snapshots: 2,
            audit_entries: 5,
            certs: 3,
            revoked_certs: 2,
            used_tokens: 3,
            next_job_id: 7,
        }
    );
    let source = everything(&sled).await;
    assert_eq!(source.jobs.len(), 5);
    assert_eq!(source.logs.len(), 4);
    assert_eq!(source.logs[2].1, LONG_LOG);
    assert_eq!(source.releases.len(), 3);
    assert_eq!(source.certs.len(), 3);
    assert_eq!(everything(&pg).await, source);

    // The copy goes on where the source stopped: ids after the last one
    // handed out, logs after their last line, the audit trail after its
    // last entry, and the tokens and certificates still bind.
    assert_eq!(pg.next_job_id().await.unwrap().get(), 7);
    let job1 = JobId::new(1).unwrap();
    let (run, _) = pg.append_logs(job1, lines(10..=11, 1)).await.unwrap();
    assert_eq!(run.map(|r| (r.first, r.last)), Some((11, 11)));
    let gap = pg.append_logs(job1, lines(13..=13, 1)).await.err().unwrap();
    assert_eq!(
        gap.to_string(),
        "lines of job 1 must follow seq 11, but start at 13"
    );
    let entry = AuditEntry::new("bob", "127.0.0.1", "approve", "job 6", true, "ok");
    assert_eq!(pg.append_audit(entry).await.unwrap().0, 6);
    let (again, _) = pg
        .enrol(&cert("0d", "new-1", "prod", 500), "nonce-1")
        .await
        .unwrap();
    assert_eq!(again, Err(Refusal::TokenUsed));
    let (elsewhere, _) = pg
        .enrol(&cert("0e", "prod-1", "dev", 600), "nonce-4")
        .await
        .unwrap();
    assert_eq!(elsewhere, Err(Refusal::EnrolledElsewhere(env("prod"))));
    assert_eq!(pg.cert("0a").await.unwrap().unwrap().revoked_ms, Some(200));
    assert_eq!(pg.cert("0c").await.unwrap().unwrap().revoked_ms, Some(400));
    assert_eq!(
        pg.current_release(&app("shop"), &env("prod"))
            .await
            .unwrap()
            .unwrap()
            .number,
        2
    );
    sled.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_into_a_database_holding_records_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    fill(&sled).await;
    let db = TestDb::create().await;
    let pg = PgStore::open(&db.url, None).await.unwrap();
    pg.lead_for_test().await;
    copy_into_postgres(&sled, &pg).await.unwrap();
    let before = everything(&pg).await;

    let refused = copy_into_postgres(&sled, &pg).await.err().unwrap();
    assert_eq!(
        refused.to_string(),
        format!(
            "the destination already holds 5 jobs, {} log lines, 4 releases, 2 agents, \
             5 audit entries, 3 certificates, 3 used join tokens: migrate copies only into a \
             database no coordinator has kept records in (create a new, empty database, or \
             drop this one's tables), so nothing was copied",
            10 + 1 + LONG_LOG + 2
        )
    );
    assert_eq!(everything(&pg).await, before);
    assert_eq!(pg.next_job_id().await.unwrap().get(), 7);

    // One record is enough to refuse; a database a coordinator only
    // started on (its config snapshots) is not refused.
    let other = TestDb::create().await;
    let started = PgStore::open(&other.url, None).await.unwrap();
    started.lead_for_test().await;
    started
        .put_config_snapshot("apps", "[]".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let entry = AuditEntry::new("ann", "127.0.0.1", "login", "api", true, "ok");
    started.append_audit(entry).await.unwrap().1.await.unwrap();
    let refused = copy_into_postgres(&sled, &started).await.err().unwrap();
    assert!(
        refused
            .to_string()
            .starts_with("the destination already holds 1 audit entry: "),
        "{refused}"
    );
    assert_eq!(started.jobs(&JobQuery::default()).await.unwrap(), []);
    let fresh = TestDb::create().await;
    let started = PgStore::open(&fresh.url, None).await.unwrap();
    started.lead_for_test().await;
    started
        .put_config_snapshot("apps", "[]".into())
        .await
        .unwrap()
        .await
        .unwrap();
    copy_into_postgres(&sled, &started).await.unwrap();
    assert_eq!(
        started.config_snapshots().await.unwrap(),
        sled.config_snapshots().await.unwrap()
    );
    sled.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_fails_half_way_leaves_the_database_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    fill(&sled).await;
    sled.close().await.unwrap();
    drop(sled);
    // A certificate record no version of the coordinator wrote: the copy
    // fails at the certificates, after jobs, logs and the audit trail.
    {
        let db = opened(|| ::sled::open(dir.path()));
        db.open_tree("certs")
            .unwrap()
            .insert("zz", "not json")
            .unwrap();
        db.flush().unwrap();
    }
    let sled = opened(|| open_sled_source(dir.path()));
    let db = TestDb::create().await;
    let pg = PgStore::open(&db.url, None).await.unwrap();
    pg.lead_for_test().await;

    let failed = copy_into_postgres(&sled, &pg).await.err().unwrap();
    assert!(
        failed
            .to_string()
            .starts_with("stored record cert zz cannot be decoded"),
        "{failed}"
    );
    assert_eq!(pg.jobs(&JobQuery::default()).await.unwrap(), []);
    assert_eq!(pg.logged_jobs().await.unwrap(), []);
    assert_eq!(pg.audit(None, 10).await.unwrap(), (Vec::new(), false));
    // The sequences were moved inside the transaction, so back too.
    assert_eq!(pg.job_counter().await.unwrap(), 0);
    assert_eq!(pg.next_job_id().await.unwrap().get(), 1);
    let entry = AuditEntry::new("ann", "127.0.0.1", "login", "api", true, "ok");
    assert_eq!(pg.append_audit(entry).await.unwrap().0, 1);
    sled.close().await.unwrap();
}

#[tokio::test]
async fn a_source_that_is_no_sled_database_or_is_held_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("gantry-data");
    std::fs::create_dir(&empty).unwrap();
    let refused = open_sled_source(&empty).err().unwrap();
    assert_eq!(
        refused.to_string(),
        format!(
            "{0} holds no sled database (no file {0}/conf): give the coordinator's \
             data_dir with --from-sled DIR",
            empty.display()
        )
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "nothing created"
    );

    let held = SledStore::open(&empty).unwrap();
    let refused = open_sled_source(&empty).err().unwrap();
    assert!(matches!(refused, CopyError::SourceInUse(_)), "{refused:?}");
    assert_eq!(
        refused.to_string(),
        format!(
            "the sled database in {} is held by a running coordinator: stop it first \
             (migrate copies a database nobody writes to), then run migrate again",
            empty.display()
        )
    );
    held.close().await.unwrap();
}
