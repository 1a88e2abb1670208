//! Deploy overhead: the sample Java service deployed by a real agent through
//! a real coordinator, with Docker and a real Java build. Gantry's own share
//! of a deploy is its whole time minus the app's own work (build command,
//! image build, container start, health wait), read from the job's log;
//! and a second deploy of the branch fetches only the new objects.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Context;
use gantry_agent::{docker, AgentOptions};
use gantry_cli::{jre_image, sample};
use gantry_shared::{config::CoordinatorConfig, proto, AgentName, EnvName};
use tokio_util::sync::CancellationToken;

/// The bench's app; its Docker objects carry this label and are removed.
const APP: &str = "gantry-bench-sample";

/// One deploy: its whole time, the app's own work, the objects fetched.
pub struct Deploy {
    /// Request sent to job ended, as the operator sees it.
    pub total: std::time::Duration,
    /// Build command, image build, container start, health wait, and the
    /// replaced container's stop.
    pub own_work: std::time::Duration,
    /// Objects the agent's fetch received.
    pub fetched: u64,
}

/// Two deploys of the sample's `main`, the second after one new commit.
pub async fn overhead() -> anyhow::Result<(Deploy, Deploy)> {
    let engine = docker::connect().await?;
    jre_image::ensure(&engine).await?;
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let remote = dir.path().join("remote.git");
    std::fs::create_dir_all(&work)?;
    sample::create_repo(&work, "Hello v1")?;
    let repo = git2::Repository::open(&work)?;
    sample::push_to_bare(&repo, &remote, "main")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let text = format!(
        "plaintext = true\nlisten = \"{addr}\"\n[[environments]]\nname = \"bench\"\n[[apps]]\nname = \"{APP}\"\n\
         remote = \"file://{}\"\nbuild_command = '''{}'''\nartifact = \"{}\"\nbase_image = \"{}\"\n\
         container_port = {}\nhealth_path = \"{}\"\n",
        remote.display(),
        sample::BUILD_COMMAND,
        sample::ARTIFACT,
        jre_image::JRE_IMAGE,
        sample::PORT,
        sample::HEALTH_PATH
    );
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, text)?;
    let config = CoordinatorConfig::load(&path)?;
    let stop = CancellationToken::new();
    let coordinator = tokio::spawn(gantry_coordinator::serve(config, listener, stop.clone()));
    let url = format!("http://{addr}");
    let agent = AgentOptions {
        coordinator: url.clone(),
        name: AgentName::new("bench-1")?,
        env: EnvName::new("bench")?,
        work_dir: dir.path().join("agent"),
        capacity: 1,
        labels: BTreeMap::new(),
        publish_ip: "127.0.0.1".into(),
        health_host: "127.0.0.1".into(),
        public_host: "127.0.0.1".into(),
        drain_grace: gantry_agent::DEFAULT_DRAIN_GRACE,
        proxy_program: None,
        tls_dir: None,
        build_user: None,
    };
    let agent = tokio::spawn(gantry_agent::run(agent, stop.clone()));
    let mut client = gantry_cli::commands::connect_with(&url, None, None).await?;
    crate::connected(&mut client, 1).await?;

    let measured = async {
        let first = deploy(&mut client).await?;
        let commit = sample::main_java("Hello v2");
        std::fs::write(work.join("src/Main.java"), commit)?;
        sample::commit_all(&repo, "v2")?;
        sample::push_to_bare(&repo, &remote, "main")?;
        let second = deploy(&mut client).await?;
        anyhow::Ok((first, second))
    }
    .await;
    stop.cancel();
    let _ = agent.await;
    let _ = coordinator.await;
    docker::remove_app_objects(&engine, APP).await?;
    measured
}

async fn deploy(client: &mut crate::Client) -> anyhow::Result<Deploy> {
    let request = proto::DeployRequest {
        app: APP.into(),
        env: "bench".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let sent = Instant::now();
    let job = client.deploy(request).await?.into_inner().id;
    let follow = proto::StreamJobLogsRequest {
        job_id: job,
        from_seq: 1,
        follow: true,
    };
    let mut stream = client.stream_job_logs(follow).await?.into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.message().await? {
        lines.push(line);
    }
    let total = sent.elapsed();
    let state = client
        .get_job(proto::GetJobRequest { id: job })
        .await?
        .into_inner();
    anyhow::ensure!(
        state.state == proto::JobState::Succeeded as i32,
        "the bench deploy failed: {}",
        state.reason
    );
    let at = |prefix: &str| -> anyhow::Result<i64> {
        lines
            .iter()
            .find(|l| l.text.starts_with(prefix))
            .map(|l| l.timestamp_ms)
            .with_context(|| format!("no log line starting {prefix:?}"))
    };
    let spans = [
        ("$ ", "artifact "),
        ("==> image", "built image "),
        ("==> deploy", "started container "),
        ("==> health", "healthy: "),
    ];
    let mut own_ms = 0;
    for (from, to) in spans {
        own_ms += at(to)? - at(from)?;
    }
    // The replaced release's own shutdown (the JVM's exit on SIGTERM).
    if let (Ok(from), Ok(to)) = (
        at("stopping the container of job"),
        at("removed the container of job"),
    ) {
        own_ms += to - from;
    }
    let fetched = lines
        .iter()
        .find_map(|l| {
            l.text
                .strip_prefix("fetched ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Ok(Deploy {
        total,
        own_work: std::time::Duration::from_millis(own_ms.max(0) as u64),
        fetched,
    })
}
