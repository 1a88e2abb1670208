//! Test harness for Gantry's end-to-end tests: a real coordinator and real
//! agents in this process (on port 0), real git repositories of the sample
//! Java service, the real Docker engine. Every object a test creates in
//! Docker carries its app's label and is removed when the test ends, pass or
//! fail.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use gantry_agent::{docker, AgentOptions};
use gantry_cli::{jre_image, sample};
use gantry_coordinator::store::postgres::testdb::TestDb;
use gantry_shared::{config::CoordinatorConfig, AgentName, EnvName};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

mod app;
mod cleanup;
mod client;
mod coordinators;
pub mod node_image;
mod prereq;
mod relay;
mod secure;
pub mod trust;

pub use app::TestApp;
use cleanup::stop_proxies;
pub use cleanup::{remove_app_objects, KillOnDrop};
pub use client::*;
pub use coordinators::{leader_of, CoordinatorProcess};
pub use prereq::grpc_python;
pub use relay::Relay;
pub use secure::Secure;

pub use gantry_cli::commands::Client;

/// Longest a deploy of the sample app may take in a test (a cold JVM build
/// and image build on a loaded 2-core machine take well under a minute).
pub const DEPLOY_DEADLINE: Duration = Duration::from_secs(240);

/// A running coordinator with its agents, repositories and data.
pub struct Harness {
    /// Scratch space: repositories, data, agent work dirs.
    pub dir: tempfile::TempDir,
    /// The coordinator's URL.
    pub url: String,
    apps: Vec<TestApp>,
    envs: Vec<(String, BTreeMap<String, String>)>,
    /// (environment, name, value) of each secret.
    secrets: Vec<(String, String, String)>,
    coordinator: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    agents: Vec<(String, CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    /// TLS, users and policies; `None`: plaintext on loopback, no tokens.
    secure: Option<Secure>,
    /// Top-level settings added to the config, e.g. `agent_lease_secs = 4`.
    settings: String,
    /// The Postgres database the coordinators keep their records in;
    /// `None`: sled in their data dir.
    postgres: Option<std::sync::Arc<TestDb>>,
}

/// The variable that runs every harness's coordinator on Postgres
/// (`GANTRY_TEST_STORE=postgres`) instead of sled.
pub const STORE_VARIABLE: &str = "GANTRY_TEST_STORE";

/// Logs for tests, once per process (RUST_LOG to see them).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Harness {
    /// Creates a repository for each app, writes the config and starts the
    /// coordinator. `envs` are (name, variables).
    pub async fn start(apps: &[TestApp], envs: &[(&str, &[(&str, &str)])]) -> anyhow::Result<Self> {
        Self::start_with_secrets(apps, envs, &[]).await
    }

    /// As [`Harness::start`], with secrets given as (environment, name, value).
    pub async fn start_with_secrets(
        apps: &[TestApp],
        envs: &[(&str, &[(&str, &str)])],
        secrets: &[(&str, &str, &str)],
    ) -> anyhow::Result<Self> {
        let mut harness = Self::prepare(apps, envs, secrets).await?;
        harness.start_coordinator().await?;
        Ok(harness)
    }

    /// The repositories and config of [`Harness::start_with_secrets`],
    /// with no coordinator started: a test that runs coordinators as
    /// processes of their own starts them.
    pub async fn prepare(
        apps: &[TestApp],
        envs: &[(&str, &[(&str, &str)])],
        secrets: &[(&str, &str, &str)],
    ) -> anyhow::Result<Self> {
        init_tracing();
        let engine = docker::connect().await?;
        jre_image::ensure(&engine).await?;
        for app in apps {
            remove_app_objects(&app.name).await?;
        }
        let dir = tempfile::tempdir()?;
        // Every app gets a repository (a test may serve it over its own
        // remote URL); the config points at `remote` when one is given.
        for app in apps {
            let repo = dir.path().join("repos").join(&app.name);
            std::fs::create_dir_all(&repo)?;
            sample::create_repo(&repo, "Hello v1")?;
            // The remote is bare, as on a git server; commits are made in
            // the working clone and pushed to it.
            git2::Repository::init_bare(
                dir.path().join("repos").join(format!("{}.git", app.name)),
            )?;
            push_branch(&git2::Repository::open(&repo)?, "main")?;
        }
        let envs = envs
            .iter()
            .map(|(name, vars)| {
                (
                    name.to_string(),
                    vars.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            })
            .collect();
        let mut harness = Self {
            dir,
            url: String::new(),
            apps: apps.to_vec(),
            envs,
            secrets: secrets
                .iter()
                .map(|(e, k, v)| (e.to_string(), k.to_string(), v.to_string()))
                .collect(),
            coordinator: None,
            agents: Vec::new(),
            secure: None,
            settings: String::new(),
            postgres: None,
        };
        if std::env::var(STORE_VARIABLE).is_ok_and(|v| v == "postgres") {
            harness.postgres = Some(std::sync::Arc::new(TestDb::create().await));
        }
        Ok(harness)
    }

    /// Adds top-level `settings` (e.g. `agent_lease_secs = 8`) to the
    /// config of coordinators started from now on.
    pub fn set_settings(&mut self, settings: &str) {
        self.settings = settings.to_owned();
    }

    /// Keeps the records of coordinators started from now on in `db`.
    pub fn use_postgres(&mut self, db: std::sync::Arc<TestDb>) {
        self.postgres = Some(db);
    }

    /// The config file text.
    pub fn config_text(&self, listen: std::net::SocketAddr) -> String {
        let mut text = format!("listen = \"{listen}\"\ndata_dir = \"data\"\n");
        if let Some(db) = &self.postgres {
            text += &format!("store = \"{}\"\n", db.postgres_url());
        }
        text += &self.settings;
        match &self.secure {
            None => text += "plaintext = true\n",
            Some(secure) => text += &secure.settings,
        }
        for (name, vars) in &self.envs {
            text += &format!("\n[[environments]]\nname = \"{name}\"\n");
            if let Some(policy) = self.secure.as_ref().and_then(|s| s.policies.get(name)) {
                text += policy;
                text += "\n";
            }
            text += "[environments.variables]\n";
            for (k, v) in vars {
                text += &format!("{k} = \"{v}\"\n");
            }
            text += "[environments.secrets]\n";
            for (_, k, v) in self.secrets.iter().filter(|(e, _, _)| e == name) {
                text += &format!("{k} = \"{v}\"\n");
            }
        }
        for app in &self.apps {
            let remote = app
                .remote
                .clone()
                .unwrap_or_else(|| format!("file://{}", self.remote(&app.name).display()));
            text += &format!(
                "\n[[apps]]\nname = \"{}\"\nremote = \"{remote}\"\nbuild_command = '''{}'''\nartifact = \"{}\"\n\
                 {}\ncontainer_port = {}\nhealth_path = \"{}\"\nhealth_timeout_secs = {}\n\
                 build_timeout_secs = {}\ndeploy_timeout_secs = {}\nkeep_releases = {}\n",
                app.name,
                app.build_command,
                sample::ARTIFACT,
                match &app.dockerfile {
                    Some(path) => format!("dockerfile = \"{path}\""),
                    None => format!("base_image = \"{}\"", jre_image::JRE_IMAGE),
                },
                sample::PORT,
                sample::HEALTH_PATH,
                app.health_timeout_secs,
                app.build_timeout_secs,
                app.deploy_timeout_secs,
                app.keep_releases,
            );
            if let Some((user, token)) = &app.git_credentials {
                text += &format!("git_username = \"{user}\"\ngit_token = \"{token}\"\n");
            }
            if let Some(port) = app.public_port {
                text += &format!("public_port = {port}\ndrain_timeout_secs = 20\n");
            }
            if let Some((user, secret)) = &app.fetch_credentials {
                text += &format!(
                    "[apps.fetch_credentials]\nusername = \"{user}\"\ntoken_secret = \"{secret}\"\n"
                );
            }
        }
        if let Some(secure) = &self.secure {
            text += &secure.users;
        }
        text
    }

    /// (Re)starts the coordinator over the same data, on the same address
    /// as before (so agents find it again), or a free port the first time.
    pub async fn start_coordinator(&mut self) -> anyhow::Result<()> {
        let addr = self
            .url
            .split_once("://")
            .map_or("127.0.0.1:0", |(_, addr)| addr)
            .to_owned();
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        let addr = listener.local_addr()?;
        let path = self.dir.path().join("coordinator.toml");
        std::fs::write(&path, self.config_text(addr))?;
        let config = CoordinatorConfig::load(&path)?;
        let token = CancellationToken::new();
        let task = tokio::spawn(gantry_coordinator::serve(config, listener, token.clone()));
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        self.url = format!("{scheme}://{addr}");
        self.coordinator = Some((token, task));
        Ok(())
    }

    /// Stops the coordinator and waits until it has flushed and exited.
    pub async fn stop_coordinator(&mut self) -> anyhow::Result<()> {
        if let Some((token, task)) = self.coordinator.take() {
            token.cancel();
            task.await??;
        }
        Ok(())
    }

    /// The working clone of an app's repository, where tests commit.
    pub fn repo(&self, app: &str) -> PathBuf {
        self.dir.path().join("repos").join(app)
    }

    /// Stops every app proxy the agents started, as a host reboot would.
    pub fn stop_proxies(&self) {
        stop_proxies(&self.dir.path().join("agents"));
    }

    /// The app's bare remote, which Gantry fetches from and pushes to.
    pub fn remote(&self, app: &str) -> PathBuf {
        self.dir.path().join("repos").join(format!("{app}.git"))
    }

    /// An agent's work dir.
    pub fn work_dir(&self, agent: &str) -> PathBuf {
        self.dir.path().join("agents").join(agent)
    }

    /// Restarts the coordinator with top-level `settings` added to its
    /// config (e.g. `heartbeat_secs = 1\nagent_lease_secs = 4\n`).
    pub async fn restart_with_settings(&mut self, settings: &str) -> anyhow::Result<()> {
        self.stop_coordinator().await?;
        self.settings = settings.to_owned();
        self.start_coordinator().await
    }

    /// Starts an agent for `env` in this process that dials `url` (a
    /// [`Relay`]) instead of the coordinator.
    pub fn start_agent_through(&mut self, env: &str, name: &str, url: &str) -> anyhow::Result<()> {
        let direct = std::mem::replace(&mut self.url, url.to_owned());
        let started = self.start_agent(env, name);
        self.url = direct;
        started
    }

    /// Starts an agent for `env` in this process.
    pub fn start_agent(&mut self, env: &str, name: &str) -> anyhow::Result<()> {
        self.start_agent_with(env, name, gantry_agent::DEFAULT_DRAIN_GRACE)
    }

    /// Starts an agent for `env` in this process, with a drain grace period.
    pub fn start_agent_with(
        &mut self,
        env: &str,
        name: &str,
        drain_grace: Duration,
    ) -> anyhow::Result<()> {
        self.start_agent_at(env, name, drain_grace, None, None)
    }

    /// Starts an agent for `env` whose builds run as `build_user`.
    pub fn start_agent_as(
        &mut self,
        env: &str,
        name: &str,
        build_user: &str,
    ) -> anyhow::Result<()> {
        let grace = gantry_agent::DEFAULT_DRAIN_GRACE;
        self.start_agent_at(env, name, grace, None, Some(build_user.to_owned()))
    }

    /// Starts an agent that dials with the certificate in `tls_dir`.
    pub fn start_enrolled_agent(
        &mut self,
        env: &str,
        name: &str,
        tls_dir: PathBuf,
    ) -> anyhow::Result<()> {
        self.start_agent_at(
            env,
            name,
            gantry_agent::DEFAULT_DRAIN_GRACE,
            Some(tls_dir),
            None,
        )
    }

    fn start_agent_at(
        &mut self,
        env: &str,
        name: &str,
        drain_grace: Duration,
        tls_dir: Option<PathBuf>,
        build_user: Option<String>,
    ) -> anyhow::Result<()> {
        let options = AgentOptions {
            coordinator: self.url.clone(),
            name: AgentName::new(name)?,
            env: EnvName::new(env)?,
            work_dir: self.work_dir(name),
            capacity: 2,
            labels: BTreeMap::from([("test".to_owned(), "yes".to_owned())]),
            publish_ip: "127.0.0.1".into(),
            health_host: "127.0.0.1".into(),
            public_host: "127.0.0.1".into(),
            drain_grace,
            proxy_program: Some(node_image::bin_dir()?.join("gantry-agent")),
            tls_dir,
            build_user,
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(gantry_agent::run(options, token.clone()));
        self.agents.push((name.to_owned(), token, task));
        Ok(())
    }

    /// The in-process agents: (name, shutdown token, task).
    pub fn agents_mut(
        &mut self,
    ) -> &mut Vec<(String, CancellationToken, JoinHandle<anyhow::Result<()>>)> {
        &mut self.agents
    }

    /// Stops (drains) one agent, as SIGTERM does, and waits until it exits.
    pub async fn stop_agent(&mut self, name: &str) -> anyhow::Result<()> {
        let at = self
            .agents
            .iter()
            .position(|(n, _, _)| n == name)
            .context("no such agent")?;
        let (_, token, task) = self.agents.remove(at);
        token.cancel();
        task.await?
    }

    /// Starts the `gantry-agent` binary for `env` as its own process.
    pub fn spawn_agent_process(&self, env: &str, name: &str) -> anyhow::Result<KillOnDrop> {
        let child = std::process::Command::new(node_image::bin_dir()?.join("gantry-agent"))
            .args([
                "--coordinator",
                &self.url,
                "--env",
                env,
                "--name",
                name,
                "--publish-ip",
                "127.0.0.1",
            ])
            .arg("--work-dir")
            .arg(self.work_dir(name))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(KillOnDrop(child))
    }

    /// A client of the operator API.
    pub async fn client(&self) -> anyhow::Result<Client> {
        gantry_cli::commands::connect(&self.url).await
    }

    /// Commits the sample app with `greeting` on `branch` (created from main
    /// if new) of `app`'s repository; returns the commit id.
    pub fn commit_version(
        &self,
        app: &str,
        branch: &str,
        greeting: &str,
    ) -> anyhow::Result<String> {
        self.commit_file(app, branch, "src/Main.java", &sample::main_java(greeting))
    }

    /// Commits, on `branch`, a version of the sample app whose health path
    /// answers 503: it starts, but never becomes healthy.
    pub fn commit_unhealthy(&self, app: &str, branch: &str) -> anyhow::Result<String> {
        let sick = sample::main_java("Sick")
            .replace("reply(ex, 200, \"ok\")", "reply(ex, 503, \"db down\")");
        self.commit_file(app, branch, "src/Main.java", &sick)
    }

    /// Commits `content` at `path` on `branch` of `app`'s repository.
    pub fn commit_file(
        &self,
        app: &str,
        branch: &str,
        path: &str,
        content: &str,
    ) -> anyhow::Result<String> {
        let repo = git2::Repository::open(self.repo(app))?;
        checkout_branch(&repo, branch)?;
        let file = self.repo(app).join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(file, content)?;
        let commit = sample::commit_all(&repo, &format!("change {path}"))?;
        checkout_branch(&repo, "main")?;
        push_branch(&repo, branch)?;
        Ok(commit)
    }

    /// Stops everything this harness started.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for (_, token, task) in self.agents.drain(..) {
            token.cancel();
            task.await??;
        }
        self.stop_coordinator().await
    }
}

fn checkout_branch(repo: &git2::Repository, branch: &str) -> anyhow::Result<()> {
    if repo.find_branch(branch, git2::BranchType::Local).is_err() {
        let head = repo.head()?.peel_to_commit()?;
        repo.branch(branch, &head, false)?;
    }
    let refname = format!("refs/heads/{branch}");
    let tree = repo.revparse_single(&refname)?;
    repo.checkout_tree(&tree, Some(git2::build::CheckoutBuilder::new().force()))?;
    repo.set_head(&refname)?;
    Ok(())
}

impl Drop for Harness {
    fn drop(&mut self) {
        for (_, token, task) in &self.agents {
            token.cancel();
            task.abort();
        }
        if let Some((token, task)) = &self.coordinator {
            token.cancel();
            task.abort();
        }
        stop_proxies(&self.dir.path().join("agents"));
        let apps: Vec<String> = self.apps.iter().map(|a| a.name.clone()).collect();
        // Drop cannot await; clean up on a thread with its own runtime so
        // this works from inside a test's runtime too.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                for app in apps {
                    if let Err(e) = remove_app_objects(&app).await {
                        eprintln!("cleanup of {app} failed: {e:#}");
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Pushes `branch` of the working clone `repo` to its bare remote
/// (`<repo>.git` beside it), replacing what the remote had.
fn push_branch(repo: &git2::Repository, branch: &str) -> anyhow::Result<()> {
    let work = repo
        .workdir()
        .context("the working clone has a work tree")?;
    sample::push_to_bare(repo, &work.with_extension("git"), branch)
}
