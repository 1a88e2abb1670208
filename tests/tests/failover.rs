//! Coordinators sharing one Postgres database, as processes of their own:
//! one leads, the others stand by and name it; a leader SIGKILLed in the
//! middle of a build is replaced within seconds and the job finishes once,
//! its log gapless; a leader paused past its lease and let run again
//! writes nothing and stands by.

use std::time::{Duration, Instant};

use gantry_coordinator::store::postgres::testdb::TestDb;
use gantry_shared::{leader, proto, JobState};
use gantry_tests::*;

/// How long a standby may take to lead once the leader is gone: the
/// issue's target.
const TAKEOVER: Duration = Duration::from_secs(10);

/// A build that waits for `gate` to exist, then builds the sample app.
fn gated_build(gate: &std::path::Path) -> String {
    format!(
        "echo waiting; while [ ! -f {} ]; do sleep 0.1; done; {}",
        gate.display(),
        gantry_cli::sample::BUILD_COMMAND
    )
}

async fn prepared(apps: &[TestApp], db: TestDb) -> anyhow::Result<Harness> {
    let mut h = Harness::prepare(apps, &[("dev", &[])], &[]).await?;
    h.use_postgres(std::sync::Arc::new(db));
    Ok(h)
}

async fn job(client: &mut Client, id: u64) -> anyhow::Result<proto::Job> {
    Ok(client
        .get_job(proto::GetJobRequest { id })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_build_is_replaced_and_the_job_finishes_once() -> anyhow::Result<()> {
    let app = "e2e-failover";
    let db = TestDb::create().await;
    let gates = tempfile::tempdir()?;
    let gate = gates.path().join("open");
    let mut test_app = TestApp::new(app);
    test_app.build_command = gated_build(&gate);
    let mut h = prepared(&[test_app], db).await?;
    let mut a = h.spawn_coordinator_process("a")?;
    assert_eq!(leader_of(&[&a], TAKEOVER).await?, 0);
    let b = h.spawn_coordinator_process("b")?;

    // The standby refuses, naming the leader to people and to clients.
    let refusal = eventually("b to stand by naming a", TAKEOVER, || async {
        let status = b.refusal().await.ok();
        Ok(status.filter(|s| leader::leader_of(s).is_some()))
    })
    .await?;
    assert_eq!(leader::leader_of(&refusal).as_deref(), Some(a.url.as_str()));
    assert!(
        refusal
            .message()
            .contains(&format!("the leader is {}", a.url)),
        "{}",
        refusal.message()
    );

    // An agent that knows both follows the leader.
    h.url = format!("{},{}", a.url, b.url);
    h.start_agent("dev", "dev-1")?;
    let mut client = a.client().await?;
    wait_connected(&client, "dev-1", TAKEOVER).await?;
    let request = proto::DeployRequest {
        app: app.into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let id = client.deploy(request).await?.into_inner().id;
    eventually("the build to start", DEPLOY_DEADLINE, || {
        let mut client = client.clone();
        async move {
            Ok((job(&mut client, id).await?.stage == proto::Stage::Build as i32).then_some(()))
        }
    })
    .await?;

    // The leader dies; the standby leads within the target.
    a.kill();
    let killed = Instant::now();
    assert_eq!(leader_of(&[&b], TAKEOVER).await?, 0);
    let took_over = killed.elapsed();
    assert!(took_over < TAKEOVER, "took over after {took_over:?}");

    // The job goes on under the new leader and finishes once.
    let mut client = b.client().await?;
    std::fs::write(&gate, "")?;
    let (lines, done) = follow_to_end(&mut client, id).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert_contiguous(&lines);
    let waiting = texts(&lines).iter().filter(|t| **t == "waiting").count();
    assert_eq!(waiting, 1, "the build ran once: {:?}", texts(&lines));
    assert!(get(&done.url, "/").await?.1.starts_with("Hello v1"));
    let jobs = client
        .list_jobs(proto::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "one job, dispatched once");
    eprintln!("takeover after {took_over:?}");
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_and_stands_by() -> anyhow::Result<()> {
    let db = TestDb::create().await;
    let h = prepared(&[TestApp::new("e2e-paused")], db).await?;
    let mut a = h.spawn_coordinator_process("a")?;
    assert_eq!(leader_of(&[&a], TAKEOVER).await?, 0);
    let b = h.spawn_coordinator_process("b")?;
    eventually("b to stand by", TAKEOVER, || async {
        Ok(b.refusal().await.is_ok().then_some(()))
    })
    .await?;

    // A job no agent can take waits on the leader.
    let mut client = a.client().await?;
    let request = proto::DeployRequest {
        app: "e2e-paused".into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let id = client.deploy(request).await?.into_inner().id;

    // Paused past its lease, the leader is replaced...
    a.signal(libc::SIGSTOP)?;
    assert_eq!(leader_of(&[&b], TAKEOVER).await?, 0);
    let mut client = b.client().await?;
    let cancelled = client
        .cancel_job(proto::CancelJobRequest { id })
        .await?
        .into_inner();
    assert_eq!(state(&cancelled), JobState::Cancelled);

    // ... and once it runs again it writes nothing (its copy of the job
    // still waits), stops leading and stands by naming the new leader.
    a.signal(libc::SIGCONT)?;
    let refusal = eventually("a to stand by naming b", TAKEOVER, || async {
        match a.refusal().await {
            Ok(status) => Ok(
                (leader::leader_of(&status).as_deref() == Some(b.url.as_str())).then_some(status),
            ),
            Err(_) => Ok(None),
        }
    })
    .await?;
    assert!(leader::is_standby_refusal(&refusal));
    let after = job(&mut client, id).await?;
    assert_eq!(state(&after), JobState::Cancelled);
    assert_eq!(after.reason, cancelled.reason);
    assert!(
        a.logged().contains("stopped leading; standing by"),
        "{}",
        a.logged()
    );
    eprintln!("{}", a.logged());
    a.kill();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_waiting_when_the_leader_dies_is_given_to_the_new_leader() -> anyhow::Result<()>
{
    let app = "e2e-failover-approve";
    let mut secure = Secure::default();
    let olga = secure.user("olga", &["ops"]);
    let oscar = secure.user("oscar", &["ops"]);
    secure.policies.insert(
        "prod".into(),
        "deploy = [\"ops\"]\napprove = [\"ops\"]".into(),
    );
    let mut h = Harness::prepare_secure(&[TestApp::new(app)], &[("prod", &[])], secure).await?;
    h.use_postgres(std::sync::Arc::new(TestDb::create().await));
    let mut a = h.spawn_coordinator_process("a")?;
    assert_eq!(leader_of(&[&a], TAKEOVER).await?, 0);
    let b = h.spawn_coordinator_process("b")?;
    eventually("b to stand by", TAKEOVER, || async {
        Ok(b.refusal()
            .await
            .is_ok_and(|s| leader::is_standby_refusal(&s))
            .then_some(()))
    })
    .await?;

    let request = proto::DeployRequest {
        app: app.into(),
        env: "prod".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let waiting = a
        .client_as(&olga)
        .await?
        .deploy(request)
        .await?
        .into_inner();
    assert_eq!(waiting.approval, "waiting for ops");

    a.kill();
    assert_eq!(leader_of(&[&b], TAKEOVER).await?, 0);
    let mut as_oscar = b.client_as(&oscar).await?;
    let still = job(&mut as_oscar, waiting.id).await?;
    assert_eq!(still.approval, "waiting for ops");
    let approved = as_oscar
        .approve(proto::ApproveRequest {
            job_id: waiting.id,
            comment: "after the failover".into(),
        })
        .await?
        .into_inner();
    assert_eq!(approved.approval, "approved by oscar (after the failover)");
    let audit = gantry_tests::trust::audit(&mut as_oscar).await?;
    assert!(
        audit
            .iter()
            .any(|e| e.who == "olga" && e.action == "deploy" && e.allowed),
        "the leader's audit trail carried over: {audit:?}"
    );
    assert!(audit
        .iter()
        .any(|e| e.who == "oscar" && e.action == "approve" && e.allowed));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_mid_build_loses_its_agent_to_the_new_leader() -> anyhow::Result<()> {
    let app = "e2e-failover-paused";
    let gates = tempfile::tempdir()?;
    let gate = gates.path().join("open");
    let mut test_app = TestApp::new(app);
    test_app.build_command = gated_build(&gate);
    let mut h = prepared(&[test_app], TestDb::create().await).await?;
    // A short agent lease, so the agent finds the silence sooner.
    h.set_settings("heartbeat_secs = 2\nagent_lease_secs = 8\n");
    let mut a = h.spawn_coordinator_process("a")?;
    assert_eq!(leader_of(&[&a], TAKEOVER).await?, 0);
    let b = h.spawn_coordinator_process("b")?;
    h.url = format!("{},{}", a.url, b.url);
    h.start_agent("dev", "dev-1")?;
    let mut client = a.client().await?;
    wait_connected(&client, "dev-1", TAKEOVER).await?;
    let request = proto::DeployRequest {
        app: app.into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let id = client.deploy(request).await?.into_inner().id;
    eventually("the build to start", DEPLOY_DEADLINE, || {
        let mut client = client.clone();
        async move {
            Ok((job(&mut client, id).await?.stage == proto::Stage::Build as i32).then_some(()))
        }
    })
    .await?;

    // Frozen with its connections open, the leader is replaced, and the
    // agent, hearing nothing for a lease, moves to the new one.
    a.signal(libc::SIGSTOP)?;
    assert_eq!(leader_of(&[&b], TAKEOVER).await?, 0);
    let mut client = b.client().await?;
    wait_connected(&client, "dev-1", Duration::from_secs(30)).await?;
    std::fs::write(&gate, "")?;
    let (lines, done) = follow_to_end(&mut client, id).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert_contiguous(&lines);
    let waiting = texts(&lines).iter().filter(|t| **t == "waiting").count();
    assert_eq!(waiting, 1, "the build ran once: {:?}", texts(&lines));
    assert!(get(&done.url, "/").await?.1.starts_with("Hello v1"));

    // Let run again, the old leader acts on nothing and stands by.
    a.signal(libc::SIGCONT)?;
    eventually("a to stand by naming b", TAKEOVER, || async {
        let named = a.refusal().await.ok().and_then(|s| leader::leader_of(&s));
        Ok((named.as_deref() == Some(b.url.as_str())).then_some(()))
    })
    .await?;
    assert_eq!(state(&job(&mut client, id).await?), JobState::Succeeded);
    a.kill();
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_roll_is_replaced_and_the_roll_finishes_once() -> anyhow::Result<()> {
    let app = "e2e-failover-roll";
    let mut h = Harness::prepare(&[TestApp::new(app)], &[("prod", &[])], &[]).await?;
    h.use_postgres(std::sync::Arc::new(TestDb::create().await));
    let mut a = h.spawn_coordinator_process("a")?;
    assert_eq!(leader_of(&[&a], TAKEOVER).await?, 0);
    let b = h.spawn_coordinator_process("b")?;
    h.url = format!("{},{}", a.url, b.url);
    h.start_agent("prod", "prod-1")?;
    h.start_agent("prod", "prod-2")?;
    let mut client = a.client().await?;
    wait_connected(&client, "prod-1", TAKEOVER).await?;
    wait_connected(&client, "prod-2", TAKEOVER).await?;
    let request = proto::DeployRequest {
        app: app.into(),
        env: "prod".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let id = client.deploy(request).await?.into_inner().id;
    // Killed once the first server has switched and the second works.
    eventually(
        "the roll to reach the second server",
        DEPLOY_DEADLINE,
        || {
            let mut client = client.clone();
            async move {
                let roll = job(&mut client, id).await?.roll;
                Ok((roll.first().map(String::as_str) == Some("prod-1 switched")).then_some(()))
            }
        },
    )
    .await?;
    a.kill();
    assert_eq!(leader_of(&[&b], TAKEOVER).await?, 0);

    let mut client = b.client().await?;
    let (lines, done) = follow_to_end(&mut client, id).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert_eq!(done.roll, ["prod-1 switched", "prod-2 switched"]);
    assert_contiguous(&lines);
    let fetches = texts(&lines).iter().filter(|l| **l == "==> fetch").count();
    assert_eq!(fetches, 2, "each server built once: {:?}", texts(&lines));
    let release = client
        .get_environment_state(proto::GetEnvironmentStateRequest {
            app: app.into(),
            env: "prod".into(),
        })
        .await?
        .into_inner()
        .current
        .expect("released");
    assert_eq!(release.number, 1, "released once");
    for server in &release.servers {
        assert!(get(&server.url, "/").await?.1.starts_with("Hello v1"));
    }
    h.shutdown().await
}
