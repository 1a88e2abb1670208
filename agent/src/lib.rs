//! The Gantry agent: installed on each environment's servers, it dials the
//! coordinator, takes the deploy jobs pushed to it, and runs them with git,
//! the app's build command and the local Docker engine.
//!
//! [`run`] takes a shutdown token, so tests and the demo run agents in-process.

pub mod build;
pub mod connection;
pub mod docker;
pub mod git;
pub mod health;
pub mod job;
pub mod report;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use gantry_shared::{AgentName, EnvName};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::info;

/// Job events buffered while the coordinator is away; a job producing more
/// waits for the stream to return instead of growing memory.
const OUTBOX: usize = 8192;

/// How long running jobs get to stop when the agent shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// How an agent is started.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The coordinator's URL, e.g. `http://10.0.0.1:7700`.
    pub coordinator: String,
    /// This agent's name.
    pub name: AgentName,
    /// The environment whose servers it runs on.
    pub env: EnvName,
    /// Root of its mirrors and workspaces.
    pub work_dir: PathBuf,
    /// Jobs it runs at once.
    pub capacity: u32,
    /// Labels shown to operators.
    pub labels: BTreeMap<String, String>,
    /// Host address containers publish their port on.
    pub publish_ip: String,
    /// Host the agent reaches published ports on for health checks.
    pub health_host: String,
    /// Host put in the URLs operators are given.
    pub public_host: String,
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(options: AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("cannot create work dir {}", options.work_dir.display()))?;
    let docker = docker::connect()
        .await
        .context("the agent needs the local Docker engine")?;
    let runtime = Arc::new(job::Runtime {
        docker,
        work_dir: options.work_dir.clone(),
        agent: options.name.clone(),
        publish_ip: options.publish_ip.clone(),
        health_host: options.health_host.clone(),
        public_host: options.public_host.clone(),
        build_path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    });
    let (outbox_tx, outbox) = mpsc::channel(OUTBOX);
    let mut link = connection::Link {
        options,
        runtime,
        outbox,
        outbox_tx,
        running: Default::default(),
        tasks: TaskTracker::new(),
        carry: None,
    };
    info!(agent = %link.options.name, env = %link.options.env, coordinator = %link.options.coordinator, "agent starting");
    connection::maintain(&mut link, &shutdown).await;

    // Stop what still runs, and let it clean up.
    for token in link.running.lock().expect("running lock").values() {
        token.cancel();
    }
    link.tasks.close();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        loop {
            tokio::select! {
                _ = link.tasks.wait() => return,
                _ = link.outbox.recv() => {}
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("jobs did not stop within the grace period");
    }
    info!("agent stopped");
    Ok(())
}
