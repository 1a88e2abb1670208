//! Environments with several servers: a deploy rolls over them one at a
//! time, and a failure on a later server puts back every server already
//! switched, so the environment never stays half on the new release.

use std::time::Duration;

use gantry_agent::docker::{self, label};
use gantry_cli::sample;
use gantry_shared::{proto, JobState};
use gantry_tests::{node_image, *};

async fn agents(client: &mut Client) -> anyhow::Result<Vec<proto::Agent>> {
    Ok(client
        .list_agents(proto::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents)
}

async fn current(client: &mut Client, app: &str) -> anyhow::Result<proto::Release> {
    let request = proto::GetEnvironmentStateRequest {
        app: app.into(),
        env: "prod".into(),
    };
    let state = client.get_environment_state(request).await?.into_inner();
    state
        .current
        .ok_or_else(|| anyhow::anyhow!("nothing released"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_on_the_second_server_puts_the_first_back() -> anyhow::Result<()> {
    let app = "e2e-roll";
    let mut test_app = TestApp::new(app);
    test_app.health_timeout_secs = 10;
    let mut h = Harness::start(&[test_app], &[("prod", &[])]).await?;
    h.start_agent("prod", "prod-1")?;
    h.start_agent("prod", "prod-2")?;
    let mut client = h.client().await?;
    eventually("both agents to connect", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let connected = agents(&mut client)
                .await?
                .iter()
                .filter(|a| a.connected)
                .count();
            Ok((connected == 2).then_some(()))
        }
    })
    .await?;

    let (lines, first) = deploy(&mut client, app, "prod", "main").await?;
    assert_eq!(state(&first), JobState::Succeeded, "{}", first.reason);
    assert_eq!(first.roll, ["prod-1 switched", "prod-2 switched"]);
    assert_contiguous(&lines);
    let fetches = texts(&lines).iter().filter(|l| **l == "==> fetch").count();
    assert_eq!(fetches, 2, "each server builds its own jar");
    let release = current(&mut client, app).await?;
    let servers: Vec<&str> = release.servers.iter().map(|s| s.agent.as_str()).collect();
    assert_eq!(servers, ["prod-1", "prod-2"]);
    for server in &release.servers {
        assert!(get(&server.url, "/").await?.1.starts_with("Hello v1"));
        assert_eq!(
            get(&server.url, "/env/GANTRY_SERVER").await?.1.trim(),
            server.agent
        );
    }
    for agent in agents(&mut client).await? {
        assert_eq!(
            agent.releases,
            [format!("{app} release 1")],
            "{}",
            agent.name
        );
    }
    // Each server built its own release-1 image.
    let engine = docker::connect().await?;
    let mut v1_images = std::collections::BTreeMap::new();
    for server in &release.servers {
        let id = engine
            .inspect_image(&server.image)
            .await?
            .id
            .unwrap_or_default();
        v1_images.insert(server.agent.clone(), id);
    }
    assert_eq!(v1_images.len(), 2);

    // Healthy on prod-1, never healthy on prod-2.
    let picky = sample::main_java("Hello v2").replace(
        "reply(ex, 200, \"ok\")",
        "reply(ex, \"prod-2\".equals(System.getenv(\"GANTRY_SERVER\")) ? 503 : 200, \"ok\")",
    );
    h.commit_file(app, "main", "src/Main.java", &picky)?;
    let (lines, done) = deploy(&mut client, app, "prod", "main").await?;
    assert_eq!(state(&done), JobState::Failed);
    assert!(
        done.reason
            .ends_with("; prod-1 put back on release 1, prod-2 failed"),
        "{}",
        done.reason
    );
    assert_contiguous(&lines);
    assert!(texts(&lines)
        .iter()
        .any(|l| l.starts_with("the roll failed on a later server: putting this one back on")));

    let after = current(&mut client, app).await?;
    assert_eq!(after.number, 1, "no new release");
    let running = docker::containers(&engine, &[(label::APP, app)]).await?;
    assert_eq!(running.len(), 2, "one container per server");
    for (id, labels) in running {
        let image = engine
            .inspect_container(&id, None)
            .await?
            .image
            .unwrap_or_default();
        let agent = labels.get(label::AGENT).cloned().unwrap_or_default();
        assert_eq!(
            Some(&image),
            v1_images.get(&agent),
            "{agent} runs its release-1 image"
        );
    }
    for server in &after.servers {
        assert!(
            get(&server.url, "/").await?.1.starts_with("Hello v1"),
            "{} serves release 1",
            server.agent
        );
    }
    for agent in agents(&mut client).await? {
        assert_eq!(
            agent.releases,
            [format!("{app} release 1")],
            "{}",
            agent.name
        );
    }
    app_logs_come_from_every_server(&h, &mut client, app).await?;
    h.shutdown().await
}

/// `gantry logs --app --env`: each server's running container's own output,
/// each line marked with its server.
async fn app_logs_come_from_every_server(
    h: &Harness,
    client: &mut Client,
    app: &str,
) -> anyhow::Result<()> {
    let request = |follow: bool, tail: u32| proto::StreamAppLogsRequest {
        app: app.into(),
        env: "prod".into(),
        follow,
        tail,
    };
    let mut stream = client
        .stream_app_logs(request(false, 0))
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while let Some(line) = stream.message().await? {
        seen.push((line.server, line.text));
    }
    for server in ["prod-1", "prod-2"] {
        let line = (server.to_owned(), "listening on port 8080".to_owned());
        assert!(seen.contains(&line), "{server} missing from {seen:?}");
    }

    // Following: the recent lines come, then the stream stays open.
    let mut stream = client
        .stream_app_logs(request(true, 10))
        .await?
        .into_inner();
    let mut servers = std::collections::BTreeSet::new();
    while servers.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("a following stream ended"))?;
        servers.insert(line.server);
    }
    drop(stream);

    let status = client
        .stream_app_logs(request(false, 20_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // The CLI marks each line with its server.
    let out = std::process::Command::new(node_image::bin_dir()?.join("gantry"))
        .args([
            "--coordinator",
            &h.url,
            "logs",
            "--app",
            app,
            "--env",
            "prod",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("[prod-1] listening on port 8080"), "{text}");
    assert!(text.contains("[prod-2] listening on port 8080"), "{text}");
    Ok(())
}
