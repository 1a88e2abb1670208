//! What every store promises, checked on each engine: each case is an
//! `async fn(Engine)`, run once on sled and once on Postgres (a cluster
//! owned by the test run, see [`crate::store::postgres::testdb`]).

use std::time::{Duration, Instant};

use gantry_shared::{AppName, EnvName, JobId};

use super::{postgres::testdb::TestDb, postgres::PgStore, sled::SledStore, *};
use crate::job::JobKind;

mod cases;
mod races;

/// Runs each case named on sled and on Postgres, as tests of those names
/// in the modules `on_sled` and `on_postgres`.
macro_rules! on_each_engine {
    ($($case:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Engine::sled()).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Engine::postgres().await).await
                }
            )*
        }
    };
}
use on_each_engine;

/// Where an engine keeps its data, which outlives the stores opened on
/// it, so a case can reopen one.
enum Engine {
    Sled(tempfile::TempDir),
    Postgres(TestDb),
}

impl Engine {
    fn sled() -> Self {
        Engine::Sled(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Self {
        Engine::Postgres(TestDb::create().await)
    }

    /// A store on this data, as `serve` opens it.
    async fn open(&self) -> SharedStore {
        match self {
            Engine::Sled(dir) => open_sled(dir.path()),
            Engine::Postgres(db) => {
                let store = PgStore::open(&db.url, None).await.unwrap();
                store.lead_for_test().await;
                Arc::new(store)
            }
        }
    }
}

/// Opens the sled store in `dir`, waiting while the one before it lets go
/// of its lock (sled's own thread stops a moment after a drop), as
/// `serve` does.
fn open_sled(dir: &std::path::Path) -> SharedStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return Arc::new(opened.unwrap()),
        }
    }
}

pub(crate) fn line(seq: u64, text: &str) -> LogLine {
    LogLine {
        seq,
        timestamp_ms: 1_700_000_000_000,
        stage: None,
        stream: Some(gantry_shared::messages::LogStream::Stdout),
        text: text.into(),
        opens_stage: false,
    }
}

fn batch(seqs: std::ops::RangeInclusive<u64>) -> Vec<LogLine> {
    seqs.map(|s| line(s, &format!("line {s}"))).collect()
}

fn seqs(run: &Run) -> Vec<u64> {
    run.lines().unwrap().iter().map(|l| l.seq).collect()
}

fn job(id: u64, app: &str, env: &str) -> JobRecord {
    JobRecord::queued(
        JobId::new(id).unwrap(),
        AppName::new(app).unwrap(),
        EnvName::new(env).unwrap(),
        JobKind::Deploy,
        Vec::new(),
        None,
        "abc".into(),
        "ann".into(),
        0,
    )
}

/// Appends and waits until it is durable; the new run, if any.
async fn append(store: &SharedStore, job: JobId, lines: Vec<LogLine>) -> Option<Run> {
    let (run, durable) = store.append_logs(job, lines).await.unwrap();
    durable.await.unwrap();
    run
}
