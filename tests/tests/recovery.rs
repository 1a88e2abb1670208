//! Faults on the agent's side, injected: SIGTERM with a job running, a job
//! past its timeouts, a cancel in the middle of a deploy, and an agent
//! killed and restarted in the middle of a deploy. Each asserts the job's
//! true end, that nothing of it is left, and that the serving release serves.

use std::time::{Duration, Instant};

use gantry_agent::docker::{self, label};
use gantry_shared::{proto, JobState};
use gantry_tests::*;

/// A build that waits for `gate` to exist, then builds the sample app.
fn gated_build(gate: &std::path::Path) -> String {
    format!(
        "echo waiting; while [ ! -f {} ]; do sleep 0.1; done; {}",
        gate.display(),
        gantry_cli::sample::BUILD_COMMAND
    )
}

async fn job(client: &mut Client, id: u64) -> anyhow::Result<proto::Job> {
    Ok(client
        .get_job(proto::GetJobRequest { id })
        .await?
        .into_inner())
}

async fn start(client: &mut Client, app: &str, env: &str, branch: &str) -> anyhow::Result<u64> {
    let request = proto::DeployRequest {
        app: app.into(),
        env: env.into(),
        branch: branch.into(),
        ..Default::default()
    };
    Ok(client.deploy(request).await?.into_inner().id)
}

/// Waits until the job is running in `stage`.
async fn reach(client: &mut Client, id: u64, stage: proto::Stage) -> anyhow::Result<()> {
    eventually(
        &format!("job {id} to reach {stage:?}"),
        DEPLOY_DEADLINE,
        || {
            let mut client = client.clone();
            async move { Ok((job(&mut client, id).await?.stage == stage as i32).then_some(())) }
        },
    )
    .await
}

async fn nothing_left(app: &str, job: u64) -> anyhow::Result<()> {
    let engine = docker::connect().await?;
    let scope = [(label::APP, app), (label::JOB, &job.to_string())];
    assert!(
        docker::containers(&engine, &scope).await?.is_empty(),
        "a container of job {job} is left"
    );
    assert!(
        docker::images(&engine, &scope).await?.is_empty(),
        "an image of job {job} is left"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_lets_the_job_finish_and_stops_what_outlives_the_grace() -> anyhow::Result<()>
{
    let app = "e2e-drain";
    let gates = tempfile::tempdir()?;
    let gate = gates.path().join("open");
    let mut test_app = TestApp::new(app);
    test_app.build_command = gated_build(&gate);
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;

    // Stopped mid-build, the agent takes no new work but finishes the job.
    let first = start(&mut client, app, "dev", "main").await?;
    reach(&mut client, first, proto::Stage::Build).await?;
    let stopping = {
        let (_, token, _) = h
            .agents_mut()
            .iter()
            .find(|(n, _, _)| n == "dev-1")
            .expect("started");
        token.clone()
    };
    stopping.cancel();
    let second = start(&mut client, app, "dev", "main").await?;
    std::fs::write(&gate, "")?;
    let (_, done) = follow_to_end(&mut client, first).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    h.stop_agent("dev-1").await?;
    let waiting = job(&mut client, second).await?;
    assert_eq!(
        state(&waiting),
        JobState::Queued,
        "a draining agent gets no new job"
    );
    assert_eq!(waiting.reason, "no agent connected for env dev");

    // With a short grace, a build that does not finish is stopped, and says why.
    std::fs::remove_file(&gate)?;
    h.start_agent_with("dev", "dev-2", Duration::from_secs(2))?;
    reach(&mut client, second, proto::Stage::Build).await?;
    let asked = Instant::now();
    h.stop_agent("dev-2").await?;
    assert!(
        asked.elapsed()
            < Duration::from_secs(2) + gantry_agent::build::KILL_GRACE + Duration::from_secs(3)
    );
    let stopped = job(&mut client, second).await?;
    assert_eq!(state(&stopped), JobState::Cancelled);
    assert_eq!(
        stopped.reason,
        "the agent was stopped and the job did not finish within 2s"
    );
    nothing_left(app, second).await?;
    assert!(
        get(&done.url, "/").await?.1.starts_with("Hello v1"),
        "the release serves on"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_past_their_timeouts_are_stopped_and_say_so() -> anyhow::Result<()> {
    let gates = tempfile::tempdir()?;
    let mut slow_build = TestApp::new("e2e-build-timeout");
    slow_build.build_command = gated_build(&gates.path().join("never"));
    slow_build.build_timeout_secs = 2;
    // Its second release never gets healthy, and the health check would
    // wait longer than the whole deploy may take.
    let mut slow_deploy = TestApp::new("e2e-deploy-timeout");
    slow_deploy.deploy_timeout_secs = 60;
    slow_deploy.health_timeout_secs = 600;
    let mut h = Harness::start(&[slow_build, slow_deploy], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;

    let (lines, build) = deploy(&mut client, "e2e-build-timeout", "dev", "main").await?;
    assert_eq!(state(&build), JobState::Failed);
    assert!(
        build
            .reason
            .starts_with("build timed out after 2s and was stopped"),
        "{}",
        build.reason
    );
    assert!(texts(&lines).contains(&"waiting"));
    nothing_left("e2e-build-timeout", build.id).await?;

    let (_, serving) = deploy(&mut client, "e2e-deploy-timeout", "dev", "main").await?;
    assert_eq!(state(&serving), JobState::Succeeded, "{}", serving.reason);
    h.commit_unhealthy("e2e-deploy-timeout", "feature/sick")?;
    let (lines, whole) = deploy(&mut client, "e2e-deploy-timeout", "dev", "feature/sick").await?;
    assert_eq!(state(&whole), JobState::Failed);
    assert!(
        whole
            .reason
            .starts_with("deploy timed out after 60s and was stopped"),
        "{}",
        whole.reason
    );
    // It was stopped with its container started: that container and its
    // image are gone, and the release before serves on.
    assert!(
        texts(&lines).contains(&"==> health"),
        "stopped before the health check"
    );
    nothing_left("e2e-deploy-timeout", whole.id).await?;
    assert!(get(&serving.url, "/").await?.1.starts_with("Hello v1"));
    let workspace = h
        .work_dir("dev-1")
        .join("workspaces/dev/e2e-deploy-timeout");
    assert!(
        !workspace.exists(),
        "the stopped job's workspace is removed"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_the_health_check_removes_the_new_container_and_image() -> anyhow::Result<()>
{
    let app = "e2e-cancel-health";
    let mut h = Harness::start(&[TestApp::new(app)], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    let (_, good) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&good), JobState::Succeeded, "{}", good.reason);

    h.commit_unhealthy(app, "feature/sick")?;
    let id = start(&mut client, app, "dev", "feature/sick").await?;
    reach(&mut client, id, proto::Stage::Health).await?;
    let engine = docker::connect().await?;
    let scope = [(label::APP, app), (label::JOB, &id.to_string())];
    assert_eq!(
        docker::containers(&engine, &scope).await?.len(),
        1,
        "the new container runs"
    );

    let asked = Instant::now();
    client.cancel_job(proto::CancelJobRequest { id }).await?;
    let (_, done) = follow_to_end(&mut client, id).await?;
    assert!(
        asked.elapsed() < gantry_agent::build::KILL_GRACE + Duration::from_secs(2),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(
        (state(&done), done.reason.as_str()),
        (JobState::Cancelled, "cancelled by operator")
    );
    nothing_left(app, id).await?;
    assert!(get(&good.url, "/").await?.1.starts_with("Hello v1"));
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_deploy_reconciles_when_it_returns() -> anyhow::Result<()> {
    let app = "e2e-agent-crash";
    let h = Harness::start(&[TestApp::new(app)], &[("dev", &[])]).await?;
    let mut agent = h.spawn_agent_process("dev", "dev-1")?;
    let mut client = h.client().await?;
    let (_, good) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&good), JobState::Succeeded, "{}", good.reason);

    h.commit_unhealthy(app, "feature/sick")?;
    let id = start(&mut client, app, "dev", "feature/sick").await?;
    reach(&mut client, id, proto::Stage::Health).await?;
    agent.kill();
    let killed = Instant::now();
    // The coordinator notices the broken stream a moment after the kill,
    // and the job says so within a second.
    eventually(
        "the job to say its agent is gone",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                let waiting = job(&mut client, id).await?;
                Ok(waiting
                    .reason
                    .starts_with("agent dev-1 disconnected; waiting up to 15s")
                    .then_some(()))
            }
        },
    )
    .await?;
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "the job said why after {:?}",
        killed.elapsed()
    );

    let _agent = h.spawn_agent_process("dev", "dev-1")?;
    let (_, done) = follow_to_end(&mut client, id).await?;
    assert_eq!(state(&done), JobState::Failed);
    assert_eq!(
        done.reason,
        "agent dev-1 restarted and no longer runs this job"
    );
    eventually(
        "the half-deployed container to be removed",
        Duration::from_secs(30),
        || async {
            let engine = docker::connect().await?;
            let left =
                docker::containers(&engine, &[(label::APP, app), (label::JOB, &id.to_string())])
                    .await?;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await?;
    nothing_left(app, id).await?;
    let workspace = h.work_dir("dev-1").join("workspaces").join("dev").join(app);
    assert!(!workspace.exists(), "{} is left", workspace.display());
    assert!(
        get(&good.url, "/").await?.1.starts_with("Hello v1"),
        "the release serves on"
    );
    // The job's spooled lines still reached its log: nothing lost, nothing twice.
    let request = proto::StreamJobLogsRequest {
        job_id: id,
        from_seq: 1,
        follow: false,
    };
    let mut stream = client.stream_job_logs(request).await?.into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.message().await? {
        lines.push(line);
    }
    assert_contiguous(&lines);
    assert!(texts(&lines).contains(&"==> health"));
    assert!(
        texts(&lines).contains(&"==> failed: the agent restarted while running this job"),
        "the restarted agent's own line is stored"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_returns_is_marked_lost_within_20_seconds() -> anyhow::Result<()> {
    let app = "e2e-agent-lost";
    let scratch = tempfile::tempdir()?;
    let pid_file = scratch.path().join("build.pid");
    let mut test_app = TestApp::new(app);
    // The build leads its own process group, which a SIGKILLed agent leaves
    // running; the agent stops it when it starts again.
    test_app.build_command = format!("echo $$ > {}; echo waiting; sleep 600", pid_file.display());
    let h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    let mut agent = h.spawn_agent_process("dev", "dev-1")?;
    let mut client = h.client().await?;
    let id = start(&mut client, app, "dev", "main").await?;
    reach(&mut client, id, proto::Stage::Build).await?;
    agent.kill();
    let killed = Instant::now();
    let lost = eventually("the job to fail as lost", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move { Ok(Some(job(&mut client, id).await?).filter(|j| state(j) == JobState::Failed)) }
    })
    .await?;
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "marked lost after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        lost.reason,
        "agent lost: dev-1 was unreachable for more than 15s"
    );
    let agents = client
        .list_agents(proto::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert!(!agents[0].connected);

    // Back again, the agent stops the build its dead process left running
    // and removes the half-built workspace.
    let build: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert!(
        process_running(build),
        "the orphaned build runs until the agent returns"
    );
    let _agent = h.spawn_agent_process("dev", "dev-1")?;
    let stopped = eventually(
        "the orphaned build to be stopped",
        Duration::from_secs(30),
        || async move { Ok((!process_running(build)).then_some(())) },
    )
    .await;
    if stopped.is_err() {
        // SAFETY: the orphaned build's process group, started by this test's agent.
        unsafe { libc::kill(-build, libc::SIGKILL) };
    }
    stopped?;
    let workspace = h.work_dir("dev-1").join("workspaces").join("dev").join(app);
    assert!(!workspace.exists(), "{} is left", workspace.display());
    h.shutdown().await
}
