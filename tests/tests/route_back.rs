//! A deploy that fails after the app's stable port was switched to its new
//! container never leaves the release that was serving without its
//! traffic: the agent routes the port back to it before the job's clean-up
//! removes the new container.
//!
//! The failure is a real one: the app's proxy stops (as after a crash, or an
//! operator's `stop`) while the agent drains the old container, which is
//! still answering a slow request, so the drain step fails.

use std::{path::Path, time::Duration};

use gantry_agent::{
    docker::{self, label},
    proxy,
};
use gantry_cli::sample;
use gantry_shared::{proto, JobState};
use gantry_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const APP: &str = "agt-route-back";

/// What the agent logs once the port points at the new container.
const SWITCHED: &str = "now serves this release";

/// The sample service, plus a `/slow` path that answers only after ten
/// minutes, served on a thread pool so the other paths answer meanwhile. A
/// request to it keeps the old container's drain waiting.
fn with_slow_path(greeting: &str) -> String {
    let java = sample::main_java(greeting)
        .replace(
            "server.createContext(\"/health\"",
            "server.createContext(\"/slow\", ex -> {\n\
             \x20           try { Thread.sleep(600_000); } catch (InterruptedException e) { }\n\
             \x20           reply(ex, 200, \"slow\");\n\
             \x20       });\n\
             \x20       server.createContext(\"/health\"",
        )
        .replace(
            "server.start();",
            "server.setExecutor(java.util.concurrent.Executors.newCachedThreadPool());\n\
             \x20       server.start();",
        );
    assert!(
        java.contains("/slow") && java.contains("setExecutor"),
        "the sample changed: {java}"
    );
    java
}

/// Asks the proxy on its control socket; returns its one-line answer.
async fn ask(socket: &Path, command: &str) -> anyhow::Result<String> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{command}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    Ok(answer.trim().to_owned())
}

/// Sends `GET /slow` through the stable port and waits for its answer
/// (which comes only when the connection is cut).
async fn hold_slow_request(port: u16) -> anyhow::Result<()> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET /slow HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_failing_after_the_switch_routes_traffic_back_to_the_serving_release(
) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut app = TestApp::new(APP);
    app.public_port = Some(port);
    let mut h = Harness::start(&[app], &[("prod", &[])]).await?;
    h.commit_file(APP, "main", "src/Main.java", &with_slow_path("Hello v1"))?;
    h.start_agent("prod", "prod-1")?;
    let mut client = h.client().await?;
    let stable = format!("http://127.0.0.1:{port}");

    let (_, first) = deploy(&mut client, APP, "prod", "main").await?;
    assert_eq!(state(&first), JobState::Succeeded, "{}", first.reason);
    assert!(get(&stable, "/").await?.1.starts_with("Hello v1 "));

    // A request in flight on v1, so the next deploy's drain waits for it.
    let (control, _, _) = proxy::client::paths(&h.work_dir("prod-1"), "prod", APP);
    let held = tokio::spawn(hold_slow_request(port));
    eventually(
        "the slow request to be in flight on v1",
        Duration::from_secs(30),
        || {
            let control = control.clone();
            async move {
                // `route ADDR IN_FLIGHT`
                let status = ask(&control, "status").await?;
                let in_flight = status.split_whitespace().nth(2).map(str::parse::<usize>);
                Ok(matches!(in_flight, Some(Ok(n)) if n >= 1).then_some(()))
            }
        },
    )
    .await?;

    // v2 deploys; once the port points at it, while v1 drains, the proxy
    // stops.
    h.commit_version(APP, "main", "Hello v2")?;
    let request = proto::DeployRequest {
        app: APP.into(),
        env: "prod".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let job = client.deploy(request).await?.into_inner();
    let follow = proto::StreamJobLogsRequest {
        job_id: job.id,
        from_seq: 1,
        follow: true,
    };
    let mut stream = client.stream_job_logs(follow).await?.into_inner();
    let (mut lines, mut stopped) = (Vec::new(), false);
    tokio::time::timeout(DEPLOY_DEADLINE, async {
        while let Some(line) = stream.message().await? {
            if !stopped && line.text.contains(SWITCHED) {
                h.stop_proxies();
                stopped = true;
            }
            lines.push(line.text);
        }
        anyhow::Ok(())
    })
    .await??;
    held.abort();
    let all = lines.join("\n");
    assert!(stopped, "the job never switched the port:\n{all}");
    let second = client
        .get_job(proto::GetJobRequest { id: job.id })
        .await?
        .into_inner();
    assert_eq!(state(&second), JobState::Failed, "{all}");

    // The port serves v1 again, and the job says so.
    let after = get(&stable, "/").await;
    assert!(
        matches!(&after, Ok((200, body)) if body.starts_with("Hello v1 ")),
        "the serving release lost its traffic: {after:?}\n{all}"
    );
    let back = format!("port {port} serves the previous release again");
    assert!(all.contains(&back), "{all}");

    // v1's container is the only one left, never retired; v2's is gone.
    let engine = docker::connect().await?;
    let left = docker::containers(&engine, &[(label::APP, APP)]).await?;
    let jobs: Vec<&str> = left
        .iter()
        .filter_map(|(_, labels)| labels.get(label::JOB).map(String::as_str))
        .collect();
    assert_eq!(jobs, [first.id.to_string()], "{all}");
    h.shutdown().await
}
