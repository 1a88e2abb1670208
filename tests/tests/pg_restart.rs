//! The database itself restarted in the middle of a job (a file of its
//! own, so its cluster is its own): the coordinator stops leading while it
//! cannot write, waits, reconnects, leads again, and the job finishes with
//! every line stored once.

use std::time::Duration;

use gantry_coordinator::store::postgres::testdb::TestDb;
use gantry_shared::{proto, JobState};
use gantry_tests::*;

/// A build that prints a line, waits for `gate` to exist, then builds.
fn gated_build(gate: &std::path::Path) -> String {
    format!(
        "echo waiting; while [ ! -f {} ]; do sleep 0.1; done; echo going on; {}",
        gate.display(),
        gantry_cli::sample::BUILD_COMMAND
    )
}

/// The job as the coordinator has it now, asked on a new connection (the
/// coordinator closes its connections when it stops leading).
async fn job_now(h: &Harness, id: u64) -> anyhow::Result<Option<proto::Job>> {
    let Ok(mut client) = h.client().await else {
        return Ok(None);
    };
    Ok(client
        .get_job(proto::GetJobRequest { id })
        .await
        .ok()
        .map(|r| r.into_inner()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restarted_mid_job_loses_nothing() -> anyhow::Result<()> {
    let app = "e2e-pg-restart";
    let gates = tempfile::tempdir()?;
    let gate = gates.path().join("open");
    let mut test_app = TestApp::new(app);
    test_app.build_command = gated_build(&gate);
    let mut h = Harness::prepare(&[test_app], &[("dev", &[])], &[]).await?;
    let db = std::sync::Arc::new(TestDb::create().await);
    h.use_postgres(db.clone());
    let restart = move || db.restart_server();
    h.start_coordinator().await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    wait_connected(&client, "dev-1", Duration::from_secs(20)).await?;
    let request = proto::DeployRequest {
        app: app.into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let id = client.deploy(request).await?.into_inner().id;
    eventually("the build to wait at its gate", DEPLOY_DEADLINE, || async {
        let lines = job_lines(&h, id).await?;
        Ok(texts(&lines).contains(&"waiting").then_some(()))
    })
    .await?;

    tokio::task::spawn_blocking(restart).await?;
    std::fs::write(&gate, "")?;
    let done = eventually("the job to end", DEPLOY_DEADLINE, || async {
        Ok(job_now(&h, id).await?.filter(|j| state(j).is_terminal()))
    })
    .await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    let lines = job_lines(&h, id).await?;
    assert_contiguous(&lines);
    for text in ["waiting", "going on"] {
        let seen = texts(&lines).iter().filter(|t| **t == text).count();
        assert_eq!(seen, 1, "{text:?} stored once: {:?}", texts(&lines));
    }
    assert!(get(&done.url, "/").await?.1.starts_with("Hello v1"));
    h.shutdown().await
}

/// Every stored line of job `id`, read on a new connection.
async fn job_lines(h: &Harness, id: u64) -> anyhow::Result<Vec<proto::LogLine>> {
    use tokio_stream::StreamExt;
    let Ok(mut client) = h.client().await else {
        return Ok(Vec::new());
    };
    let request = proto::StreamJobLogsRequest {
        job_id: id,
        from_seq: 1,
        follow: false,
    };
    let Ok(stream) = client.stream_job_logs(request).await else {
        return Ok(Vec::new());
    };
    let mut stream = stream.into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.next().await {
        match line {
            Ok(line) => lines.push(line),
            Err(_) => return Ok(Vec::new()),
        }
    }
    Ok(lines)
}
