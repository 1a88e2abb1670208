//! The scheduler driven through its commands' handlers, over a real store
//! and real outboxes, with the agents played by the test.

use std::{collections::BTreeSet, sync::Arc};

use futures::{FutureExt, StreamExt};
use gantry_shared::{
    config::CoordinatorConfig,
    messages::{Assignment, Finished, ToAgent},
    AgentName, AppName, EnvName, JobId, JobState,
};

use super::*;
use crate::{
    fleet::OutStream,
    job::{AgentRecord, JobKind},
};

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
plaintext = true

[[environments]]
name = "prod"

[[apps]]
name = "shop"
remote = "file:///srv/git/shop.git"
build_command = "true"
artifact = "shop.jar"
base_image = "jre:17"
container_port = 8080
"#;

struct Fixture {
    scheduler: Scheduler,
    /// The store under it, as the coordinator shares it.
    store: SharedStore,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::parse(std::path::Path::new("test.toml"), CONFIG).unwrap();
    let store: SharedStore = Arc::new(crate::store::sled::SledStore::open(dir.path()).unwrap());
    let scheduler = Scheduler::new(
        Arc::new(config),
        store.clone(),
        LogHub::default(),
        Arc::new(Tails::default()),
    )
    .await
    .unwrap();
    Fixture {
        scheduler,
        store,
        _dir: dir,
    }
}

fn sender(name: &str) -> Sender {
    Sender {
        agent: AgentName::new(name).unwrap(),
        env: EnvName::new("prod").unwrap(),
        certificate: None,
    }
}

impl Fixture {
    async fn attach(&mut self, name: &str) -> OutStream {
        let (outbox, stream) = Outbox::new();
        let record = AgentRecord {
            name: AgentName::new(name).unwrap(),
            env: EnvName::new("prod").unwrap(),
            labels: Default::default(),
            capacity: 1,
            version: "test".into(),
            last_seen_ms: 0,
        };
        self.scheduler
            .attach(Attach {
                record,
                running: BTreeSet::new(),
                outbox,
                closed: Default::default(),
                certificate: None,
            })
            .await
            .unwrap();
        stream
    }

    async fn deploy(&mut self, commit: &str) -> JobId {
        let id = self.scheduler.store.next_job_id().await.unwrap();
        let job = JobRecord::queued(
            id,
            AppName::new("shop").unwrap(),
            EnvName::new("prod").unwrap(),
            JobKind::Deploy,
            Vec::new(),
            None,
            commit.into(),
            "ann".into(),
            0,
        );
        self.scheduler.enqueue(job).await.unwrap();
        id
    }

    async fn finish(&mut self, agent: &str, id: JobId, state: JobState) {
        let done = Finished {
            state,
            summary: format!("{} on {agent}", state.as_str()),
            url: format!("http://{agent}"),
            image: format!("shop:{agent}-{id}"),
            container: format!("c-{agent}-{id}"),
        };
        self.scheduler
            .report(&sender(agent), id, Report::Finished(done))
            .await
            .unwrap();
    }

    async fn job(&mut self, id: JobId) -> JobRecord {
        self.scheduler.job(id).await.unwrap()
    }
}

/// The assignment waiting on `stream`, if any.
fn assigned(stream: &mut OutStream) -> Option<Assignment> {
    loop {
        if let ToAgent::Assign(assignment) = stream.next().now_or_never()?? {
            return Some(*assignment);
        }
    }
}

#[tokio::test]
async fn a_roll_goes_server_by_server_and_a_failure_puts_the_switched_back() {
    let mut f = fixture().await;
    let (mut one, mut two) = (f.attach("prod-1").await, f.attach("prod-2").await);

    let first = f.deploy("c1").await;
    let spec = assigned(&mut one).expect("prod-1 is sent the deploy first");
    assert_eq!((spec.job, spec.release, spec.put_back), (first, 1, false));
    assert!(assigned(&mut two).is_none(), "one server at a time");
    f.finish("prod-1", first, JobState::Succeeded).await;
    assert_eq!(
        f.job(first).await.reason,
        "1 of 2 servers switched; deploying to prod-2"
    );
    assigned(&mut two).expect("then prod-2");
    f.finish("prod-2", first, JobState::Succeeded).await;
    let done = f.job(first).await;
    assert_eq!(done.state, JobState::Succeeded);
    let release = f
        .scheduler
        .store
        .current_release(&done.app, &done.env)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(release.number, 1);
    assert_eq!(release.servers.len(), 2);

    let second = f.deploy("c2").await;
    assigned(&mut one).expect("prod-1 first again");
    f.finish("prod-1", second, JobState::Succeeded).await;
    assigned(&mut two).expect("then prod-2");
    f.finish("prod-2", second, JobState::Failed).await;
    let back = assigned(&mut one).expect("prod-1 is put back");
    assert!(back.put_back);
    assert_eq!(
        (back.release, back.image.as_deref()),
        (1, Some("shop:prod-1-1"))
    );
    assert_eq!(
        f.job(second).await.reason,
        "putting prod-1 back on the release before"
    );
    f.finish("prod-1", second, JobState::Succeeded).await;

    let failed = f.job(second).await;
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(
        failed.reason,
        "failed on prod-2; prod-1 put back on release 1, prod-2 failed"
    );
    let current = f
        .scheduler
        .store
        .current_release(&failed.app, &failed.env)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.number, 1, "a stopped roll is no release");
    assert_eq!(
        current.servers[0].container, "c-prod-1-2",
        "where release 1 runs now"
    );
}

#[tokio::test]
async fn what_the_machine_refuses_is_answered_and_changes_nothing() {
    let mut f = fixture().await;
    let mut one = f.attach("prod-1").await;
    let id = f.deploy("c1").await;
    assigned(&mut one).unwrap();
    f.finish("prod-1", id, JobState::Succeeded).await;
    let ended = f.job(id).await;

    let again = f.scheduler.cancel(id).await.unwrap_err();
    assert!(matches!(again, Error::FailedPrecondition(_)), "{again}");
    assert_eq!(
        again.to_string(),
        format!("job {id} already ended (succeeded); nothing to cancel")
    );
    let late = f
        .scheduler
        .report(
            &sender("prod-1"),
            id,
            Report::Stage(gantry_shared::Stage::Build),
        )
        .await
        .unwrap_err();
    assert!(late.to_string().contains("no longer held"), "{late}");
    let stranger = f
        .scheduler
        .report(
            &sender("prod-9"),
            id,
            Report::Stage(gantry_shared::Stage::Build),
        )
        .await
        .unwrap_err();
    assert!(matches!(stranger, Error::NotHolder(_)), "{stranger}");
    assert_eq!(f.job(id).await, ended);
}

#[tokio::test]
async fn a_job_whose_first_server_cannot_take_it_waits_in_the_queue() {
    let mut f = fixture().await;
    let one = f.attach("prod-1").await;
    drop(one); // the stream is gone, so nothing can be sent
    let id = f.deploy("c1").await;
    let job = f.job(id).await;
    assert_eq!(job.state, JobState::Queued, "{}", job.reason);
    assert!(job.roll.is_empty() && job.release.is_none() && job.agent.is_none());
}

#[tokio::test]
async fn answers_wait_for_the_disk_and_a_failed_commit_stops_the_scheduler() {
    let f = fixture().await;
    let store = f.store.clone();
    let (handle, runner) = f.scheduler.start();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(runner.run(stop.clone()));
    let queued = |id: u64, commit: &str| {
        JobRecord::queued(
            JobId::new(id).unwrap(),
            AppName::new("shop").unwrap(),
            EnvName::new("prod").unwrap(),
            JobKind::Deploy,
            Vec::new(),
            None,
            commit.into(),
            "ann".into(),
            0,
        )
    };
    // Answered once durable: the job reads back from the store.
    let job = handle
        .ask(|reply| Command::Enqueue(Box::new(queued(1, "c1")), reply))
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Queued);
    let stored = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(stored.commit, "c1");

    // The store takes no more writes (a failed commit is final, as a
    // closed store is): the asker is told, and the scheduler stops with
    // the reason rather than run ahead of the disk.
    store.close().await.unwrap();
    let refused = handle
        .ask(|reply| Command::Enqueue(Box::new(queued(2, "c2")), reply))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Store(_)), "{refused}");
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("the scheduler stops by itself")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        stopped.to_string(),
        "the scheduler stopped: storage error: a commit failed: the store is closed"
    );
    // Later askers are told it stopped.
    let late = handle.get(Command::Connected).await.unwrap_err();
    assert!(matches!(late, Error::Unavailable(_)), "{late}");
}
