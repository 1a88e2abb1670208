//! `gantry demo`: the one command a new user runs to see Gantry work. It
//! starts a coordinator and a dev agent in this process, creates a sample
//! Java service as a local git repository, deploys its main branch to dev
//! while showing the live log, checks the container answers, and prints
//! its URL. Ctrl-C stops everything and removes what the demo deployed.

use crate::{say, tell};
use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context};
use gantry_agent::{docker, health, AgentOptions};
use gantry_shared::{config::CoordinatorConfig, AgentName, EnvName};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{commands, jre_image, output::Format, sample};

/// The demo's app.
pub const APP: &str = "hello";

/// How the demo runs.
pub struct DemoOptions {
    /// Where its repository, config and data live.
    pub dir: PathBuf,
    /// Where its coordinator listens (another free port is used if taken).
    pub listen: SocketAddr,
    /// Stop and clean up right after the check instead of waiting for Ctrl-C.
    pub exit: bool,
}

/// Writes the demo coordinator's config.
fn config_text(listen: SocketAddr, remote: &str) -> String {
    format!(
        r#"# Written by `gantry demo`.
plaintext = true
listen = "{listen}"
data_dir = "data"

[[environments]]
name = "dev"
variables = {{ DATABASE_URL = "jdbc:postgresql://db.dev.internal:5432/hello", REGISTRY_ADDR = "nacos.dev.internal:8848" }}

[[environments]]
name = "test"

[[apps]]
name = "{APP}"
remote = "{remote}"
default_branch = "main"
build_command = "{build}"
artifact = "{artifact}"
base_image = "{image}"
container_port = {port}
health_path = "{health}"
health_timeout_secs = 60
"#,
        build = sample::BUILD_COMMAND,
        artifact = sample::ARTIFACT,
        image = jre_image::JRE_IMAGE,
        port = sample::PORT,
        health = sample::HEALTH_PATH,
    )
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let dir = std::path::absolute(&options.dir)?;
    say!("==> checking Docker")?;
    let engine = docker::connect()
        .await
        .context("the demo needs a running Docker engine")?;
    say!(
        "==> building the base image {} from this machine's JDK (first run only)",
        jre_image::JRE_IMAGE
    )?;
    jre_image::ensure(&engine).await?;

    let repo = dir.join("repos").join(APP);
    let remote = dir.join("repos").join(format!("{APP}.git"));
    for old in [&repo, &remote] {
        if old.exists() {
            std::fs::remove_dir_all(old)?;
        }
    }
    std::fs::create_dir_all(&repo)?;
    let commit = sample::create_repo(&repo, "Hello")?;
    // Gantry fetches from (and creates branches on) a bare remote, as on a
    // git server; commit in the working clone and push to try a change.
    sample::push_to_bare(&git2::Repository::open(&repo)?, &remote, "main")?;
    say!(
        "==> created the sample Java service in {} (main at {})",
        repo.display(),
        &commit[..10]
    )?;

    let listener = match TcpListener::bind(options.listen).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?,
    };
    let addr = listener.local_addr()?;
    let config_path = dir.join("coordinator.toml");
    std::fs::write(
        &config_path,
        config_text(addr, &format!("file://{}", remote.display())),
    )?;
    let config = CoordinatorConfig::load(&config_path)?;
    let url = format!("http://{addr}");

    let shutdown = CancellationToken::new();
    let mut services = JoinSet::new();
    services.spawn(gantry_coordinator::serve(
        config,
        listener,
        shutdown.clone(),
    ));
    let agent = AgentOptions {
        coordinator: url.clone(),
        name: AgentName::new("dev-1")?,
        env: EnvName::new("dev")?,
        work_dir: dir.join("agent-dev-1"),
        capacity: 1,
        labels: Default::default(),
        publish_ip: "127.0.0.1".into(),
        health_host: "127.0.0.1".into(),
        public_host: "127.0.0.1".into(),
        drain_grace: gantry_agent::DEFAULT_DRAIN_GRACE,
        proxy_program: None,
        tls_dir: None,
        build_user: None,
    };
    services.spawn(gantry_agent::run(agent, shutdown.clone()));
    // From here on a closed stdout must not skip the clean-up below.
    say!("==> coordinator at {url}, agent dev-1 for env dev; deploying {APP} main -> dev\n").ok();

    let outcome = tokio::select! {
        done = deploy_and_check(&url) => done,
        stopped = services.join_next() => Err(anyhow::anyhow!("a demo service stopped early: {stopped:?}")),
    };
    if outcome.is_ok() && !options.exit {
        say!("\nGantry is running. In another terminal try:").ok();
        say!("  export GANTRY_COORDINATOR={url}").ok();
        say!("  gantry jobs; gantry agents; gantry deploy --app {APP} --env dev --branch main")
            .ok();
        say!("Press Ctrl-C to stop; the demo then removes the containers it deployed.").ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            stopped = services.join_next() => tell!("a demo service stopped: {stopped:?}"),
        }
    }
    say!("==> stopping the demo").ok();
    shutdown.cancel();
    while let Some(done) = services.join_next().await {
        if let Ok(Err(e)) = done {
            tell!("warning: {e:#}");
        }
    }
    remove_demo_objects(&engine).await?;
    outcome
}

async fn deploy_and_check(url: &str) -> anyhow::Result<()> {
    let mut client = commands::connect(url).await?;
    let args = commands::DeployArgs {
        app: APP.into(),
        env: "dev".into(),
        branches: vec!["main".into()],
        add: Vec::new(),
        remove: Vec::new(),
    };
    if !commands::deploy(&mut client, args, false, Format::Table).await? {
        bail!("the demo deploy failed; its log is above");
    }
    let jobs = client
        .list_jobs(gantry_shared::proto::ListJobsRequest {
            app: APP.into(),
            env: "dev".into(),
            limit: 1,
        })
        .await?
        .into_inner()
        .jobs;
    let job = jobs.first().context("the deployed job is missing")?;
    let (host, port) = health::host_port(&job.url).context("the job reported no URL")?;
    let (status, body) = health::http_get(&host, port, "/").await?;
    say!("\n==> GET {}/ answered {status}: {}", job.url, body.trim())?;
    if status != 200 {
        bail!("the deployed service answered {status} on {}/", job.url);
    }
    let (status, _) = health::http_get(&host, port, sample::HEALTH_PATH).await?;
    if status != 200 {
        bail!(
            "the deployed service answered {status} on its health URL {}{}",
            job.url,
            sample::HEALTH_PATH
        );
    }
    say!(
        "==> {APP} is deployed to dev and healthy: {}{} answered 200",
        job.url,
        sample::HEALTH_PATH
    )?;
    say!("==> open {}/ to see it", job.url)?;
    Ok(())
}

async fn remove_demo_objects(engine: &bollard::Docker) -> anyhow::Result<()> {
    Ok(docker::remove_app_objects(engine, APP).await?)
}
