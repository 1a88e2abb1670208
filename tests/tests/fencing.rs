//! A partition that outlasts an agent's lease, in the middle of a deploy.
//! The coordinator fails the job as lost; the agent, cut off, must not go
//! on to switch traffic to a release the coordinator recorded as failed: it
//! stops the job itself and removes what it created, and the release that
//! was serving keeps serving, before and after the network heals. A lost
//! job still stopping on its agent holds up the next deploy of its app there.

use std::time::{Duration, Instant};

use gantry_agent::docker::{self, label};
use gantry_shared::{proto, JobState};
use gantry_tests::*;

const LEASE_SECS: u64 = 4;

async fn job(client: &mut Client, id: u64) -> anyhow::Result<proto::Job> {
    Ok(client
        .get_job(proto::GetJobRequest { id })
        .await?
        .into_inner())
}

/// Containers and images of `job` of `app`.
async fn objects_of(app: &str, job: u64) -> anyhow::Result<usize> {
    let engine = docker::connect().await?;
    let scope = [(label::APP, app), (label::JOB, &job.to_string())];
    Ok(docker::containers(&engine, &scope).await?.len()
        + docker::images(&engine, &scope).await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_past_its_lease_stops_its_deploy_and_never_switches() -> anyhow::Result<()>
{
    let app = "e2e-fenced";
    let gates = tempfile::tempdir()?;
    let mut test_app = TestApp::new(app);
    // Each release's build waits for its own gate file.
    test_app.build_command = format!(
        "echo waiting; while [ ! -f {}/$GANTRY_RELEASE ]; do sleep 0.1; done; {}",
        gates.path().display(),
        gantry_cli::sample::BUILD_COMMAND
    );
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    h.restart_with_settings(&format!(
        "heartbeat_secs = 1\nagent_lease_secs = {LEASE_SECS}\n"
    ))
    .await?;
    let relay = Relay::start(&h.url).await?;
    h.start_agent_through("dev", "dev-1", &relay.url)?;
    let mut client = h.client().await?;

    std::fs::write(gates.path().join("1"), "")?;
    let (_, serving) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&serving), JobState::Succeeded, "{}", serving.reason);

    h.commit_version(app, "feature/v2", "Hello v2")?;
    let request = proto::DeployRequest {
        app: app.into(),
        env: "dev".into(),
        branch: "feature/v2".into(),
        ..Default::default()
    };
    let id = client.deploy(request).await?.into_inner().id;
    eventually("the build to wait at its gate", DEPLOY_DEADLINE, || {
        let mut client = client.clone();
        async move {
            Ok((job(&mut client, id).await?.stage == proto::Stage::Build as i32).then_some(()))
        }
    })
    .await?;

    // The agent marks the workspace while a job writes it, until the job ends.
    let building = h
        .work_dir("dev-1")
        .join("workspaces")
        .join("dev")
        .join(format!("{app}.building"));
    assert!(building.exists(), "{} is missing", building.display());

    // Cut off, and let the build go on to the switch.
    relay.freeze();
    let cut = Instant::now();
    std::fs::write(gates.path().join("2"), "")?;
    let lost = eventually("the job to fail as lost", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            Ok(Some(job(&mut client, id).await?).filter(|j| state(j) == JobState::Failed))
        }
    })
    .await?;
    assert_eq!(
        lost.reason,
        format!("agent lost: dev-1 was unreachable for more than {LEASE_SECS}s")
    );
    assert!(
        cut.elapsed() < Duration::from_secs(LEASE_SECS + 5),
        "lost after {:?}",
        cut.elapsed()
    );

    // Still cut off, the agent ends the job on its side: it stopped it,
    // removed its container and image, and never retired release 1.
    eventually(
        "the cut-off agent to end the job",
        DEPLOY_DEADLINE,
        || async { Ok((!building.exists()).then_some(())) },
    )
    .await?;
    assert_eq!(objects_of(app, id).await?, 0, "job {id} left objects");
    assert!(
        get(&serving.url, "/").await?.1.starts_with("Hello v1"),
        "release 1 serves on while the agent is cut off"
    );

    // Healed: the agent comes back holding nothing, the job stays as the
    // coordinator ended it, and release 1 still serves.
    relay.thaw();
    wait_connected(&client, "dev-1", Duration::from_secs(60)).await?;
    let after = job(&mut client, id).await?;
    assert_eq!(
        (state(&after), after.reason),
        (JobState::Failed, lost.reason)
    );
    assert_eq!(objects_of(app, id).await?, 0);
    assert!(get(&serving.url, "/").await?.1.starts_with("Hello v1"));

    // And the same branch deploys for real once the network is whole.
    std::fs::write(gates.path().join("3"), "")?;
    let (_, redeployed) = deploy(&mut client, app, "dev", "feature/v2").await?;
    assert_eq!(
        state(&redeployed),
        JobState::Succeeded,
        "{}",
        redeployed.reason
    );
    assert!(get(&redeployed.url, "/").await?.1.starts_with("Hello v2"));
    h.shutdown().await
}

/// A job the coordinator ended while its agent was cut off may still be
/// stopping there when the next deploy of the same app arrives. The next
/// one waits for it and says so, so the stop cannot remove the workspace
/// the next one builds in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_deploy_waits_on_the_agent_for_a_lost_job_to_stop() -> anyhow::Result<()> {
    const LEASE: u64 = 15;
    let app = "e2e-turns";
    let mut test_app = TestApp::new(app);
    // The build of `main` never ends and is deaf to SIGTERM, so stopping it
    // takes the whole grace before SIGKILL; other branches build at once.
    test_app.build_command = format!(
        "trap '' TERM; echo waiting; while [ \"$GANTRY_BRANCH\" = main ]; do sleep 0.1; done; {}",
        gantry_cli::sample::BUILD_COMMAND
    );
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    h.restart_with_settings(&format!("heartbeat_secs = 1\nagent_lease_secs = {LEASE}\n"))
        .await?;
    let relay = Relay::start(&h.url).await?;
    h.start_agent_through("dev", "dev-1", &relay.url)?;
    let mut client = h.client().await?;
    let request = |branch: &str| proto::DeployRequest {
        app: app.into(),
        env: "dev".into(),
        branch: branch.into(),
        ..Default::default()
    };

    let first = client.deploy(request("main")).await?.into_inner().id;
    eventually("the build to wait at its gate", DEPLOY_DEADLINE, || {
        let mut client = client.clone();
        async move {
            Ok((job(&mut client, first).await?.stage == proto::Stage::Build as i32).then_some(()))
        }
    })
    .await?;
    relay.freeze();
    let cut = Instant::now();
    eventually("the job to fail as lost", Duration::from_secs(60), || {
        let mut client = client.clone();
        async move {
            Ok(Some(job(&mut client, first).await?).filter(|j| state(j) == JobState::Failed))
        }
    })
    .await?;
    h.commit_version(app, "feature/v2", "Hello v2")?;
    let next = client.deploy(request("feature/v2")).await?.into_inner().id;
    // Back before the agent's own watchdog (twice the lease without a
    // word) stops the job: the coordinator then cancels it on the agent,
    // and gives it the next deploy at once.
    assert!(
        cut.elapsed() < Duration::from_secs(2 * LEASE - 5),
        "the machine took {:?} to find the agent lost; the test needs it back before {}s",
        cut.elapsed(),
        2 * LEASE
    );
    relay.thaw();

    let (lines, done) = follow_to_end(&mut client, next).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    // The stopped job's clean-up did not remove the workspace under it.
    let jar = h
        .work_dir("dev-1")
        .join("workspaces")
        .join("dev")
        .join(app)
        .join("target")
        .join("app.jar");
    assert!(jar.exists(), "{} is gone", jar.display());
    let waited = format!("waiting for an earlier job of {app} in dev to stop on this server");
    assert!(
        texts(&lines).iter().any(|t| t.starts_with(&waited)),
        "{:?}",
        texts(&lines)
    );
    assert!(get(&done.url, "/").await?.1.starts_with("Hello v2"));
    assert_eq!(objects_of(app, first).await?, 0, "job {first} left objects");
    h.shutdown().await
}
