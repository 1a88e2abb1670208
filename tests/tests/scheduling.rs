//! Scheduling, bad input, cancellation, live logs and restarts, seen through
//! the operator API.

use std::time::Duration;

use gantry_shared::{proto, JobState};
use gantry_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_right_code_and_creates_nothing() -> anyhow::Result<()> {
    let mut unreachable = TestApp::new("e2e-unreachable");
    unreachable.remote = Some("file:///nonexistent/gantry/repo.git".into());
    let h = Harness::start(
        &[TestApp::new("e2e-badinput"), unreachable],
        &[("dev", &[]), ("test", &[])],
    )
    .await?;
    let mut client = h.client().await?;
    let cases: [(&str, &str, &str, Code, &str); 9] = [
        ("nope", "dev", "main", Code::NotFound, "unknown app \"nope\"; configured apps: e2e-badinput, e2e-unreachable"),
        ("e2e-badinput", "prod", "main", Code::NotFound, "unknown environment \"prod\"; configured environments: dev, test"),
        ("e2e-badinput", "dev", "feature/none", Code::NotFound, "branch \"feature/none\" does not exist on the remote of app \"e2e-badinput\""),
        ("e2e-badinput", "dev", "-rf", Code::InvalidArgument, "invalid branch name \"-rf\": it must not start with '-'"),
        ("e2e-badinput", "dev", "a..b", Code::InvalidArgument, "invalid branch name \"a..b\""),
        ("e2e-badinput", "dev", "--upload-pack=touch /tmp/x", Code::InvalidArgument, "invalid branch name"),
        ("Shop", "dev", "main", Code::InvalidArgument, "invalid app name \"Shop\""),
        ("", "dev", "main", Code::InvalidArgument, "app is required"),
        ("e2e-unreachable", "dev", "main", Code::Unavailable, "cannot reach the git remote of app \"e2e-unreachable\" (file:///nonexistent/gantry/repo.git)"),
    ];
    for (app, env, branch, code, message) in cases {
        let request = proto::DeployRequest {
            app: app.into(),
            env: env.into(),
            branch: branch.into(),
            ..Default::default()
        };
        let status = client.deploy(request).await.expect_err("must be refused");
        assert_eq!(
            status.code(),
            code,
            "{app} {env} {branch}: {}",
            status.message()
        );
        assert!(
            status.message().contains(message),
            "{:?} does not contain {message:?}",
            status.message()
        );
    }
    let jobs = client
        .list_jobs(proto::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "no job was created: {jobs:?}");

    let status = client
        .get_job(proto::GetJobRequest { id: 99 })
        .await
        .expect_err("no such job");
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "job 99 does not exist")
    );
    let status = client
        .get_job(proto::GetJobRequest { id: 0 })
        .await
        .expect_err("0 is not an id");
    assert_eq!(status.code(), Code::InvalidArgument);
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_with_a_reason_and_a_newer_request_supersedes_it() -> anyhow::Result<()> {
    let app = "e2e-queued";
    let mut h = Harness::start(&[TestApp::new(app)], &[("dev", &[]), ("test", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    let request_for = |app: &str| proto::DeployRequest {
        app: app.into(),
        env: "test".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let job = client.deploy(request_for(app)).await?.into_inner();
    assert_eq!(state(&job), JobState::Queued);
    assert_eq!(job.reason, "no agent connected for env test");
    assert_eq!(job.commit.len(), 40);

    // A newer request for the same (app, env) supersedes the queued one.
    let second = client.deploy(request_for(app)).await?.into_inner();
    assert_eq!(state(&second), JobState::Queued);
    let first = client
        .get_job(proto::GetJobRequest { id: job.id })
        .await?
        .into_inner();
    assert_eq!(state(&first), JobState::Superseded);
    assert_eq!(first.superseded_by, second.id);
    assert!(
        first
            .reason
            .starts_with(&format!("superseded by job {}", second.id)),
        "{}",
        first.reason
    );

    h.start_agent("test", "test-1")?;
    let mut watch = client.clone();
    eventually("the second job to run", Duration::from_secs(60), || {
        let mut client = watch.clone();
        async move {
            let j = client
                .get_job(proto::GetJobRequest { id: second.id })
                .await?
                .into_inner();
            Ok((state(&j) == JobState::Running).then_some(()))
        }
    })
    .await?;
    // A request while one runs waits for it; the running one is never superseded.
    let third = client.deploy(request_for(app)).await?.into_inner();
    assert_eq!(state(&third), JobState::Queued);
    assert_eq!(
        third.reason,
        format!(
            "waiting for job {}, which is deploying {app} to test",
            second.id
        )
    );
    let (_, done) = follow_to_end(&mut watch, second.id).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert_eq!(done.agent, "test-1");
    let (_, done3) = follow_to_end(&mut client, third.id).await?;
    assert_eq!(state(&done3), JobState::Succeeded, "{}", done3.reason);
    assert_eq!((done.release, done3.release), (1, 2));

    let agents = client
        .list_agents(proto::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    let names: Vec<(&str, &str, bool)> = agents
        .iter()
        .map(|a| (a.name.as_str(), a.env.as_str(), a.connected))
        .collect();
    assert_eq!(names, [("dev-1", "dev", true), ("test-1", "test", true)]);
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_live_and_cancel_stops_the_build_and_its_children() -> anyhow::Result<()> {
    let app = "e2e-cancel";
    let marker = tempfile::tempdir()?;
    let pid_file = marker.path().join("child.pid");
    let mut test_app = TestApp::new(app);
    // Ignores SIGTERM (so must be killed after the grace period), prints a
    // line, starts a long-lived child in the same process group, then waits.
    test_app.build_command = format!(
        "trap '' TERM; echo started; sleep 600 & echo $! > {}; wait",
        pid_file.display()
    );
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    let request = proto::DeployRequest {
        app: app.into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let job = client.deploy(request).await?.into_inner();

    // The first line arrives while the build is still running.
    let mut stream = client
        .stream_job_logs(proto::StreamJobLogsRequest {
            job_id: job.id,
            from_seq: 1,
            follow: true,
        })
        .await?
        .into_inner();
    loop {
        let line = tokio::time::timeout(DEPLOY_DEADLINE, stream.message())
            .await??
            .expect("log open");
        if line.text == "started" {
            assert_eq!(line.stream, proto::LogStream::Stdout as i32);
            assert_eq!(line.stage, proto::Stage::Build as i32);
            break;
        }
    }
    let running = client
        .get_job(proto::GetJobRequest { id: job.id })
        .await?
        .into_inner();
    assert_eq!(
        (state(&running), running.stage),
        (JobState::Running, proto::Stage::Build as i32)
    );
    let child: i32 = eventually("the child's pid", Duration::from_secs(10), || async {
        Ok(std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok()))
    })
    .await?;

    let asked = std::time::Instant::now();
    let cancelled = client
        .cancel_job(proto::CancelJobRequest { id: job.id })
        .await?
        .into_inner();
    assert!(
        cancelled.reason.starts_with("cancel requested"),
        "{}",
        cancelled.reason
    );
    while stream.message().await?.is_some() {}
    let done = client
        .get_job(proto::GetJobRequest { id: job.id })
        .await?
        .into_inner();
    assert_eq!(state(&done), JobState::Cancelled, "{}", done.reason);
    // SIGTERM was ignored: the group was killed once the grace ran out.
    let took = asked.elapsed();
    let grace = gantry_agent::build::KILL_GRACE;
    assert!(
        took >= grace && took < grace + Duration::from_secs(2),
        "took {took:?}"
    );
    let workspace = h.work_dir("dev-1").join("workspaces").join("dev").join(app);
    assert!(!workspace.exists(), "{} is left", workspace.display());
    assert!(
        !process_running(child),
        "the build's child {child} was stopped with it"
    );

    let again = client
        .cancel_job(proto::CancelJobRequest { id: job.id })
        .await
        .expect_err("already ended");
    assert_eq!(again.code(), Code::FailedPrecondition);
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_reads_jobs_and_logs_back() -> anyhow::Result<()> {
    let app = "e2e-restart";
    let mut h = Harness::start(&[TestApp::new(app)], &[("dev", &[]), ("pre", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    let (lines, job) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&job), JobState::Succeeded, "{}", job.reason);
    let request = proto::DeployRequest {
        app: app.into(),
        env: "pre".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let queued = client.deploy(request).await?.into_inner();

    h.stop_coordinator().await?;
    h.start_coordinator().await?;
    let mut client = h.client().await?;
    let after = client
        .get_job(proto::GetJobRequest { id: job.id })
        .await?
        .into_inner();
    assert_eq!(after, job);
    let request = proto::StreamJobLogsRequest {
        job_id: job.id,
        from_seq: 1,
        follow: false,
    };
    let mut stream = client.stream_job_logs(request).await?.into_inner();
    let mut stored = Vec::new();
    while let Some(line) = stream.message().await? {
        stored.push(line);
    }
    assert_eq!(stored, lines);
    let still = client
        .get_job(proto::GetJobRequest { id: queued.id })
        .await?
        .into_inner();
    assert_eq!(
        (state(&still), still.reason.as_str()),
        (JobState::Queued, "no agent connected for env pre")
    );

    // Reading from the middle returns the rest, in order.
    let request = proto::StreamJobLogsRequest {
        job_id: job.id,
        from_seq: 5,
        follow: true,
    };
    let mut stream = client.stream_job_logs(request).await?.into_inner();
    let first = stream.message().await?.expect("lines from 5");
    assert_eq!(first, lines[4]);
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_come_back_on_their_own_after_the_coordinator_restarts() -> anyhow::Result<()> {
    let app = "e2e-reconnect";
    let mut h = Harness::start(&[TestApp::new(app)], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    wait_connected(&h.client().await?, "dev-1", Duration::from_secs(10)).await?;

    h.stop_coordinator().await?;
    h.start_coordinator().await?;
    let mut client = h.client().await?;
    let agents = client
        .list_agents(proto::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert_eq!(
        agents.len(),
        1,
        "agents seen are remembered across the restart"
    );
    wait_connected(&client, "dev-1", Duration::from_secs(15)).await?;

    let (_, job) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&job), JobState::Succeeded, "{}", job.reason);
    h.shutdown().await
}
