//! Helpers for what a test does as an operator: deploy and follow, poll
//! with a deadline, ask the deployed app over HTTP, read log lines.

use std::time::Duration;

use anyhow::Context;

use gantry_shared::{proto, JobState};
use tokio_stream::StreamExt;

use crate::{Client, DEPLOY_DEADLINE};

/// Follows `job`'s log until it ends; returns the lines seen and the final job.
pub async fn follow_to_end(
    client: &mut Client,
    job: u64,
) -> anyhow::Result<(Vec<proto::LogLine>, proto::Job)> {
    let follow = async {
        let request = proto::StreamJobLogsRequest {
            job_id: job,
            from_seq: 1,
            follow: true,
        };
        let mut stream = client.stream_job_logs(request).await?.into_inner();
        let mut lines = Vec::new();
        while let Some(line) = stream.next().await {
            lines.push(line?);
        }
        let job = client
            .get_job(proto::GetJobRequest { id: job })
            .await?
            .into_inner();
        anyhow::Ok((lines, job))
    };
    tokio::time::timeout(DEPLOY_DEADLINE, follow)
        .await
        .with_context(|| format!("job {job} did not end within {DEPLOY_DEADLINE:?}"))?
}

/// Deploys and follows to the end.
pub async fn deploy(
    client: &mut Client,
    app: &str,
    env: &str,
    branch: &str,
) -> anyhow::Result<(Vec<proto::LogLine>, proto::Job)> {
    let request = proto::DeployRequest {
        app: app.into(),
        env: env.into(),
        branch: branch.into(),
        ..Default::default()
    };
    let job = client.deploy(request).await?.into_inner();
    follow_to_end(client, job.id).await
}

/// The job's state.
pub fn state(job: &proto::Job) -> JobState {
    JobState::from_proto(job.state).expect("jobs carry a state")
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    eventually_every(what, deadline, Duration::from_millis(50), check).await
}

/// As [`eventually`], polling every `every` (a long wait that asks the
/// coordinator each time must stay within its request rate).
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        if tokio::time::Instant::now() > until {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// GET `path` on a job's URL: (status, body).
pub async fn get(url: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let (host, port) =
        gantry_agent::health::host_port(url).with_context(|| format!("bad url {url:?}"))?;
    Ok(gantry_agent::health::http_get(&host, port, path).await?)
}

/// The texts of `lines`.
pub fn texts(lines: &[proto::LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.text.as_str()).collect()
}

/// Asserts the lines are numbered 1..=n with no gap or repeat.
pub fn assert_contiguous(lines: &[proto::LogLine]) {
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            line.seq,
            i as u64 + 1,
            "log line {i} has seq {}: {:?}",
            line.seq,
            line.text
        );
    }
}

/// Whether `pid` is a live process; a zombie (killed, not yet reaped by
/// its new parent) is not.
pub fn process_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Waits until agent `name` is connected to the coordinator.
pub async fn wait_connected(client: &Client, name: &str, deadline: Duration) -> anyhow::Result<()> {
    eventually(&format!("{name} to connect"), deadline, || {
        let (mut client, name) = (client.clone(), name.to_owned());
        async move {
            let agents = client
                .list_agents(proto::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            Ok(agents
                .iter()
                .any(|a| a.name == name && a.connected)
                .then_some(()))
        }
    })
    .await
}
