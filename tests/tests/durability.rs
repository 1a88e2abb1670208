//! What an agent's spool carries through an outage: a backlog of long lines
//! built up while the coordinator is down reaches it once it is back (no
//! message over the cap), and an agent killed mid-job and started again
//! numbers the job's lines on, so its last words are stored, once.

use std::time::Duration;

use gantry_shared::{
    limits::{MAX_LOG_LINE_BYTES, TRUNCATED_MARKER},
    proto, JobState,
};
use gantry_tests::*;

/// Lines the build prints while the coordinator is down.
const LONG_LINES: usize = 1000;

/// Bytes of each: over the line limit, so each is cut to the longest line
/// kept (1000 of them are about 8 MiB, twice the coordinator's message cap).
const LONG_LINE_BYTES: usize = 9 * 1024;

/// How long the job may take once the coordinator is back.
const FINISH_DEADLINE: Duration = Duration::from_secs(180);

/// Between two looks at the coordinator: slow enough that a long wait
/// stays within its anonymous request rate, fast enough to end promptly.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Polls `check` every [`POLL_EVERY`] until it returns `Some`, or fails after `deadline`.
async fn poll<T, F, Fut>(what: &str, deadline: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    eventually_every(what, deadline, POLL_EVERY, check).await
}

async fn job(client: &mut Client, id: u64) -> anyhow::Result<proto::Job> {
    Ok(client
        .get_job(proto::GetJobRequest { id })
        .await?
        .into_inner())
}

async fn start(client: &mut Client, app: &str) -> anyhow::Result<u64> {
    let request = proto::DeployRequest {
        app: app.into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    Ok(client.deploy(request).await?.into_inner().id)
}

/// The job's stored lines, read back as `gantry logs` does.
async fn stored_lines(client: &mut Client, id: u64) -> anyhow::Result<Vec<proto::LogLine>> {
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
    Ok(lines)
}

/// Waits until the job prints `text`.
async fn printed(client: &Client, id: u64, text: &str) -> anyhow::Result<()> {
    poll(
        &format!("job {id} to print {text:?}"),
        DEPLOY_DEADLINE,
        || {
            let mut client = client.clone();
            async move {
                let lines = stored_lines(&mut client, id).await?;
                Ok(texts(&lines).contains(&text).then_some(()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_long_lines_reaches_a_coordinator_that_comes_back() -> anyhow::Result<()> {
    let app = "du-long-lines";
    let scratch = tempfile::tempdir()?;
    let (gate, done) = (scratch.path().join("open"), scratch.path().join("printed"));
    let mut test_app = TestApp::new(app);
    test_app.build_command = format!(
        "echo waiting; while [ ! -f {gate} ]; do sleep 0.1; done; \
         p=$(head -c {LONG_LINE_BYTES} /dev/zero | tr '\\0' x); i=0; \
         while [ $i -lt {LONG_LINES} ]; do i=$((i+1)); printf 'L%04d %s\\n' $i \"$p\"; done; \
         touch {done}; {build}",
        gate = gate.display(),
        done = done.display(),
        build = gantry_cli::sample::BUILD_COMMAND,
    );
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let client = h.client().await?;
    let id = start(&mut client.clone(), app).await?;
    printed(&client, id, "waiting").await?;

    // The lines pile up in the agent's spool while no coordinator listens.
    h.stop_coordinator().await?;
    std::fs::write(&gate, "")?;
    poll("the build to print its lines", DEPLOY_DEADLINE, || async {
        Ok(done.exists().then_some(()))
    })
    .await?;
    h.start_coordinator().await?;

    let mut client = h.client().await?;
    let ended = poll("the job to end", FINISH_DEADLINE, || {
        let mut client = client.clone();
        async move { Ok(Some(job(&mut client, id).await?).filter(|j| state(j).is_terminal())) }
    })
    .await?;
    assert_eq!(state(&ended), JobState::Succeeded, "{}", ended.reason);
    let lines = stored_lines(&mut client, id).await?;
    assert_contiguous(&lines);
    let long: Vec<&proto::LogLine> = lines.iter().filter(|l| l.text.starts_with('L')).collect();
    assert_eq!(long.len(), LONG_LINES, "every long line is stored, once");
    for (i, line) in long.iter().enumerate() {
        assert!(line.text.starts_with(&format!("L{:04} xxx", i + 1)));
        assert_eq!(line.text.len(), MAX_LOG_LINE_BYTES, "line {}", i + 1);
        assert!(line.text.ends_with(TRUNCATED_MARKER));
    }
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_job_numbers_its_lines_on_when_it_returns() -> anyhow::Result<()> {
    let app = "du-agent-restart";
    let mut test_app = TestApp::new(app);
    test_app.build_command = "echo first; echo waiting; sleep 600".into();
    let h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    let mut agent = h.spawn_agent_process("dev", "dev-1")?;
    let mut client = h.client().await?;
    let id = start(&mut client, app).await?;
    printed(&client, id, "waiting").await?;
    agent.kill();

    let _agent = h.spawn_agent_process("dev", "dev-1")?;
    let last_words = "==> failed: the agent restarted while running this job";
    poll(
        "the restarted agent's line to be stored",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            async move {
                let lines = stored_lines(&mut client, id).await?;
                Ok(texts(&lines).contains(&last_words).then_some(()))
            }
        },
    )
    .await?;
    let ended = job(&mut client, id).await?;
    assert_eq!(state(&ended), JobState::Failed);
    let lines = stored_lines(&mut client, id).await?;
    assert_contiguous(&lines);
    for text in ["first", "waiting", last_words] {
        let times = texts(&lines).iter().filter(|t| **t == text).count();
        assert_eq!(times, 1, "{text:?} is stored {times} times");
    }
    assert_eq!(lines.last().map(|l| l.text.as_str()), Some(last_words));
    drop(_agent);
    h.shutdown().await
}
