//! What a job runs on, and how its work stops early: the agent's host
//! ([`Runtime`]), one turn per workspace ([`Turns`]), and the [`Stop`] every
//! step ends with when it fails or the job is cancelled, with the two
//! helpers that make a step watch the cancel and keep blocking git calls
//! off the async runtime.
//!
//! Everything that runs a job's work imports this (the stages, the proxy
//! client, container tails); it imports none of them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use bollard::Docker;
use gantry_shared::{AgentName, EnvName};
use tokio_util::sync::CancellationToken;

use crate::git;

/// What an agent needs from its host to run jobs.
pub struct Runtime {
    /// The Docker engine.
    pub docker: Docker,
    /// Root of mirrors and workspaces.
    pub work_dir: PathBuf,
    /// This agent's name, put on every object it creates.
    pub agent: AgentName,
    /// Its environment.
    pub env: EnvName,
    /// This installation's identity (see [`crate::agent_id`]).
    pub agent_id: String,
    /// Host address containers publish their port on.
    pub publish_ip: String,
    /// Host the agent reaches published ports on, for health checks.
    pub health_host: String,
    /// Host put in the URL operators are given.
    pub public_host: String,
    /// PATH given to build commands.
    pub build_path: String,
    /// The binary that runs app proxies.
    pub proxy_program: PathBuf,
    /// The lease the coordinator holds this agent's jobs under.
    pub lease: Arc<crate::lease::Lease>,
    /// Whose turn it is in each workspace.
    pub turns: Turns,
    /// The user builds run as (`None`: the agent's own).
    pub build_user: Option<crate::build_user::BuildUser>,
}

/// One job at a time per workspace, that is per (app, env) on this agent.
/// The coordinator deploys an (app, env) one job at a time, but a job it
/// has already ended (cancelled while this agent was away, or lost with
/// it) may still be stopping here when the next one arrives; the next one
/// waits until it has stopped and cleaned up, or its stop would remove the
/// workspace and containers the next one is using.
#[derive(Default)]
pub struct Turns(std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>);

impl Turns {
    /// The turn of `workspace`: held by the job running there.
    pub(crate) fn of(&self, workspace: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.0.lock().expect("turns lock");
        turns.entry(workspace.to_owned()).or_default().clone()
    }
}

/// Why a job stopped early.
pub(crate) enum Stop {
    Failed(String),
    Cancelled,
}

impl<E: std::fmt::Display> From<E> for Stop {
    fn from(err: E) -> Self {
        Stop::Failed(err.to_string())
    }
}

/// Runs `fut` unless the job is cancelled first.
pub(crate) async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T, Stop>>,
) -> Result<T, Stop> {
    tokio::select! {
        _ = cancel.cancelled() => Err(Stop::Cancelled),
        out = fut => out,
    }
}

/// Runs a git call on the blocking pool, so it never stalls the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, git::AgentGitError> + Send + 'static,
) -> Result<T, Stop> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Stop::Failed(format!("git task failed: {e}")))?
        .map_err(Stop::from)
}
