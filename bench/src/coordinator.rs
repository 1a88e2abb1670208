//! The coordinator under measurement: the real one, in this process, on
//! loopback, over a scratch data dir.

use std::time::Duration;

use gantry_shared::config::CoordinatorConfig;
use tokio_util::sync::CancellationToken;

use crate::Client;

/// A coordinator serving on loopback over a scratch data dir.
pub struct Coordinator {
    pub url: String,
    /// With TLS: the operator's API token and the CA certificate (PEM).
    pub trust: Option<(String, String)>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: tempfile::TempDir,
}

impl Coordinator {
    /// Plain gRPC, as on a single machine.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// With `tls`, as a fleet runs it: agents on mutual TLS with enrolled
    /// certificates, operators on TLS with an API token.
    pub async fn start_with(tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let repo = dir.path().join("repo");
        empty_repo(&repo)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut trust = None;
        let (mut plaintext, mut users) = ("plaintext = true\n", String::new());
        if tls {
            gantry_coordinator::trust::ca::init(&dir.path().join("data").join("tls"), &[])?;
            let token = gantry_coordinator::trust::ca::new_api_token();
            plaintext = "";
            users = format!(
                "[[users]]\nname = \"bench\"\nroles = [\"ops\"]\ntoken_sha256 = \"{}\"\n",
                gantry_shared::tls::fingerprint(token.as_bytes())
            );
            let ca = std::fs::read_to_string(dir.path().join("data").join("tls").join("ca.pem"))?;
            trust = Some((token, ca));
        }
        // The bench's client polls and deploys far past what one operator
        // may (600 requests a minute by default): it measures the
        // coordinator, not its rate limit.
        let text = format!(
            "{plaintext}rate_limit_per_minute = 1000000000\ndata_dir = \"data\"\nlisten = \"{}\"\n[[environments]]\nname = \"bench\"\n[[environments]]\nname = \"idle\"\n[[apps]]\nname = \"app\"\nremote = \"{}\"\n\
             build_command = \"true\"\nartifact = \"a.jar\"\nbase_image = \"none\"\ncontainer_port = 80\n{users}",
            listener.local_addr()?,
            repo.display()
        );
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text)?;
        let config = CoordinatorConfig::load(&path)?;
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gantry_coordinator::serve(
            config,
            listener,
            shutdown.clone(),
        ));
        Ok(Self {
            url,
            trust,
            shutdown,
            task,
            dir,
        })
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let (token, ca) = self.trust.clone().unzip();
        gantry_cli::commands::connect_with(&self.url, token, ca).await
    }

    /// How agent `name` of `env` dials in: with TLS, enrolled first as
    /// `gantry-agent join` does.
    pub async fn agent_endpoint(
        &self,
        env: &str,
        name: &str,
    ) -> anyhow::Result<tonic::transport::Endpoint> {
        if self.trust.is_none() {
            return Ok(tonic::transport::Endpoint::from_shared(self.url.clone())?);
        }
        let tls = self.dir.path().join("data").join("tls");
        let token = gantry_coordinator::trust::Authority::load(&tls)?.enroll(
            gantry_shared::EnvName::new(env)?,
            gantry_shared::AgentName::new(name)?,
            Duration::from_secs(600),
        );
        let dir = self.dir.path().join("agents").join(name);
        gantry_agent::join::join(&self.url, &token.to_string(), &dir).await?;
        gantry_agent::join::agent_endpoint(&self.url, Some(&dir))
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }
}

/// A repository with one empty commit on `main`: the bench app's remote.
pub fn empty_repo(path: &std::path::Path) -> anyhow::Result<()> {
    let git = git2::Repository::init_opts(
        path,
        git2::RepositoryInitOptions::new().initial_head("main"),
    )?;
    let tree = git.find_tree(git.index()?.write_tree()?)?;
    let sig = git2::Signature::now("bench", "bench@example.com")?;
    git.commit(Some("HEAD"), &sig, &sig, "empty", &tree, &[])?;
    Ok(())
}
