//! One deploy job on the agent, stage by stage: fetch, checkout, build,
//! image, deploy, health. A failure at any stage removes what this job
//! created and leaves the release that was serving untouched.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bollard::Docker;
use gantry_shared::{
    messages::{AppSpec, Assignment, BranchSet},
    AgentName, AppName, EnvName, JobId, JobState,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{docker, docker::label, git, report::Reporter, stages};

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
    fn of(&self, workspace: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.0.lock().expect("turns lock");
        turns.entry(workspace.to_owned()).or_default().clone()
    }
}

/// A job as the agent runs it, from an [`Assignment`] checked at the edge.
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// The branches requested, comma-separated (for labels and logs).
    pub branch: String,
    /// The commit to build.
    pub commit: String,
    /// The app's configuration.
    pub spec: AppSpec,
    /// The environment's variables.
    pub env_vars: BTreeMap<String, String>,
    /// The environment's secrets, given to the build and the container.
    pub secrets: BTreeMap<String, String>,
    /// The release number it becomes.
    pub release: u64,
    /// For a rollback: the retained image to run instead of building.
    pub rollback_image: Option<String>,
    /// Images of this (app, env) to keep besides the one deployed.
    pub keep_images: Vec<String>,
    /// For a branch set: what to merge onto what.
    pub set: Option<BranchSet>,
    /// This assignment puts the server back on the release before.
    pub put_back: bool,
}

impl From<Assignment> for Job {
    fn from(a: Assignment) -> Self {
        Self {
            id: a.job,
            branch: a.branch_list(),
            app: a.app.name.clone(),
            env: a.env,
            commit: a.commit,
            spec: a.app,
            env_vars: a.env_vars,
            secrets: a.secrets,
            release: a.release,
            rollback_image: a.image,
            keep_images: a.keep_images,
            set: a.set,
            put_back: a.put_back,
        }
    }
}

impl Job {
    /// What this assignment's Docker objects are labelled and named with:
    /// the job id, set apart for a put-back, so cleaning up a failed
    /// put-back never removes what the job deployed before.
    pub(crate) fn object_id(&self) -> String {
        if self.put_back {
            format!("{}-put-back", self.id)
        } else {
            self.id.to_string()
        }
    }

    pub(crate) fn labels(&self, agent: &AgentName, agent_id: &str) -> HashMap<String, String> {
        let mut labels = self.identity_labels(agent, agent_id);
        if let Some(public) = self.spec.public_port {
            let ports = format!("{public}:{}", self.spec.container_port);
            labels.insert(label::PROXY.to_owned(), ports);
        }
        labels
    }

    fn identity_labels(&self, agent: &AgentName, agent_id: &str) -> HashMap<String, String> {
        HashMap::from([
            (label::APP.to_owned(), self.app.to_string()),
            (label::ENV.to_owned(), self.env.to_string()),
            (label::JOB.to_owned(), self.object_id()),
            (label::COMMIT.to_owned(), self.commit.clone()),
            (label::BRANCH.to_owned(), self.branch.clone()),
            (label::RELEASE.to_owned(), self.release.to_string()),
            (label::AGENT.to_owned(), agent.to_string()),
            (label::AGENT_ID.to_owned(), agent_id.to_owned()),
        ])
    }

    /// `GANTRY_*` variables describing this release, for the build and the container.
    pub(crate) fn identity(&self) -> [(String, String); 6] {
        [
            ("GANTRY_APP".into(), self.app.to_string()),
            ("GANTRY_ENV".into(), self.env.to_string()),
            ("GANTRY_RELEASE".into(), self.release.to_string()),
            ("GANTRY_JOB".into(), self.id.to_string()),
            ("GANTRY_BRANCH".into(), self.branch.clone()),
            ("GANTRY_COMMIT".into(), self.commit.clone()),
        ]
    }
}

/// A running job's handle: stops it with a reason (operator cancel, deploy
/// timeout, agent shutdown). The job then stops its build's process group
/// and removes what it created.
#[derive(Clone, Default)]
pub struct JobHandle {
    token: CancellationToken,
    why: Arc<std::sync::Mutex<Option<(JobState, String)>>>,
}

impl JobHandle {
    /// Stops the job; it ends in `state` saying `reason` (the first stop wins).
    pub fn stop(&self, state: JobState, reason: impl Into<String>) {
        self.why
            .lock()
            .expect("stop lock")
            .get_or_insert((state, reason.into()));
        self.token.cancel();
    }

    fn outcome(&self) -> (JobState, String) {
        self.why
            .lock()
            .expect("stop lock")
            .clone()
            .unwrap_or((JobState::Cancelled, "cancelled".into()))
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

/// Runs `job` to its end and reports the outcome.
pub async fn run(rt: Arc<Runtime>, job: Job, report: Reporter, handle: JobHandle) {
    let turn = rt.turns.of(&workspace_dir(&rt, &job));
    let _turn = match turn.clone().try_lock_owned() {
        Ok(turn) => turn,
        Err(_) => {
            let msg = format!(
                "waiting for an earlier job of {} in {} to stop on this server: it still holds the workspace",
                job.app, job.env
            );
            report.system(msg).await;
            tokio::select! {
                turn = turn.lock_owned() => turn,
                _ = handle.token.cancelled() => {
                    let (state, summary) = handle.outcome();
                    info!(job = %job.id, app = %job.app, env = %job.env, state = state.as_str(), "job ended before its turn");
                    report.finish(state, summary, None).await;
                    return;
                }
            }
        }
    };
    info!(job = %job.id, app = %job.app, env = %job.env, commit = %job.commit, "job started");
    let limit = job.spec.deploy_timeout.max(Duration::from_secs(1));
    let work = stages::run(&rt, &job, &report, &handle.token);
    let timer = tokio::time::sleep(limit);
    tokio::pin!(work, timer);
    let mut timed_out = false;
    // The timer stops the job through its handle, so the stages clean up
    // exactly as for a cancel.
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = &mut timer, if !timed_out => {
                timed_out = true;
                let why = format!(
                    "deploy timed out after {}s and was stopped; raise deploy_timeout_secs if it needs longer",
                    limit.as_secs()
                );
                handle.stop(JobState::Failed, why);
            }
        }
    };
    let (state, summary, deployed) = match outcome {
        Ok(deployed) => {
            let summary = format!("{} is serving at {}", deployed.image, deployed.url);
            (JobState::Succeeded, summary, Some(deployed))
        }
        Err(Stop::Failed(why)) => (JobState::Failed, why, None),
        Err(Stop::Cancelled) => {
            let (state, why) = handle.outcome();
            (state, why, None)
        }
    };
    if state != JobState::Succeeded {
        let (app, env, id) = (job.app.as_str(), job.env.as_str(), job.object_id());
        if let Err(e) = docker::remove_job_objects(&rt.docker, app, env, &id).await {
            warn!(job = %job.id, error = %e, "cannot remove what the job created");
            let msg = format!("warning: cannot remove what this job created: {e}");
            report.system(msg).await;
        }
        // The workspace holds this job's half-built tree; the next deploy
        // checks out afresh anyway.
        let _ = std::fs::remove_dir_all(workspace_dir(&rt, &job));
    }
    let _ = std::fs::remove_file(crate::leftovers::building_marker(&workspace_dir(&rt, &job)));
    info!(job = %job.id, app = %job.app, env = %job.env, state = state.as_str(), "job ended");
    report.finish(state, summary, deployed).await;
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

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, git::AgentGitError> + Send + 'static,
) -> Result<T, Stop> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Stop::Failed(format!("git task failed: {e}")))?
        .map_err(Stop::from)
}

/// The workspace of the job's (app, env) on this agent.
pub(crate) fn workspace_dir(rt: &Runtime, job: &Job) -> PathBuf {
    rt.work_dir
        .join("workspaces")
        .join(job.env.as_str())
        .join(job.app.as_str())
}

pub(crate) fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}
