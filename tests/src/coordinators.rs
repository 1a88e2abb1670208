//! Coordinators as processes of their own (the `gantry-coordinator`
//! binary) sharing one Postgres database, so a test can SIGKILL one, or
//! SIGSTOP it past its lease and let it run again.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use gantry_shared::proto;

use crate::{cleanup::KillOnDrop, eventually, node_image, Client, Harness};

/// A coordinator process.
pub struct CoordinatorProcess {
    /// Its name in the test (and in its config and log file names).
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its log (stderr and stdout).
    pub log: PathBuf,
    /// The CA its clients trust, with TLS.
    ca_pem: Option<String>,
    process: Option<KillOnDrop>,
}

impl Harness {
    /// Starts a coordinator process named `name` on a free loopback port,
    /// with this harness's config (and its settings, e.g. `store = ...`)
    /// and a data dir of its own.
    pub fn spawn_coordinator_process(&self, name: &str) -> anyhow::Result<CoordinatorProcess> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        // A data dir of its own (its git mirrors), and, with TLS, the one
        // CA of all the harness's coordinators.
        let mut own = format!("data_dir = \"data-{name}\"");
        let ca_pem = match self.is_secure() {
            true => {
                own += &format!("\ntls_dir = \"{}\"", self.tls_dir().display());
                Some(self.ca_pem()?)
            }
            false => None,
        };
        let text = self.config_text(addr).replace("data_dir = \"data\"", &own);
        let scheme = if ca_pem.is_some() { "https" } else { "http" };
        let config = self.dir.path().join(format!("coordinator-{name}.toml"));
        std::fs::write(&config, text)?;
        let mut coordinator = CoordinatorProcess {
            name: name.to_owned(),
            url: format!("{scheme}://{addr}"),
            ca_pem,
            log: self.dir.path().join(format!("coordinator-{name}.log")),
            config,
            process: None,
        };
        coordinator.start()?;
        Ok(coordinator)
    }
}

impl CoordinatorProcess {
    /// Starts it (again), on the same address and config.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = std::process::Command::new(node_image::bin_dir()?.join("gantry-coordinator"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start gantry-coordinator")?;
        self.process = Some(KillOnDrop(child));
        Ok(())
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Sends it `signal` (SIGSTOP, SIGCONT, SIGTERM).
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let process = self.process.as_ref().context("not running")?;
        // SAFETY: kill(2) with a child's pid has no memory effects.
        let sent = unsafe { libc::kill(process.0.id() as i32, signal) };
        anyhow::ensure!(sent == 0, "cannot signal {}", self.name);
        Ok(())
    }

    /// Waits until it has exited; its exit status.
    pub async fn exited(&mut self, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut process = self.process.take().context("not running")?;
        let status = eventually(&format!("{} to exit", self.name), deadline, || {
            let polled = process.0.try_wait();
            async move { Ok(polled?) }
        })
        .await?;
        drop(process);
        Ok(status)
    }

    /// What it has logged so far.
    pub fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of its operator API.
    pub async fn client(&self) -> anyhow::Result<Client> {
        gantry_cli::commands::connect_with(&self.url, None, self.ca_pem.clone()).await
    }

    /// A client of its operator API with an API token.
    pub async fn client_as(&self, token: &str) -> anyhow::Result<Client> {
        gantry_cli::commands::connect_with(&self.url, Some(token.to_owned()), self.ca_pem.clone())
            .await
    }

    /// Whether it leads now: it answers an operator request (a refusal of
    /// the request's token is an answer; a standby's is `UNAVAILABLE`, as
    /// is no answer at all).
    pub async fn leads(&self) -> bool {
        let Ok(mut client) = self.client().await else {
            return false;
        };
        match client.list_jobs(proto::ListJobsRequest::default()).await {
            Ok(_) => true,
            Err(status) => status.code() != tonic::Code::Unavailable,
        }
    }

    /// Its answer to an operator request while it stands by: the refusal.
    pub async fn refusal(&self) -> anyhow::Result<tonic::Status> {
        let mut client = self.client().await?;
        match client.list_jobs(proto::ListJobsRequest::default()).await {
            Ok(_) => anyhow::bail!("{} answered: it leads", self.name),
            Err(status) => Ok(status),
        }
    }
}

/// Waits until one of `coordinators` leads; its index.
pub async fn leader_of(
    coordinators: &[&CoordinatorProcess],
    deadline: Duration,
) -> anyhow::Result<usize> {
    eventually("a coordinator to lead", deadline, || async {
        for (i, c) in coordinators.iter().enumerate() {
            if c.leads().await {
                return Ok(Some(i));
            }
        }
        Ok(None)
    })
    .await
}
