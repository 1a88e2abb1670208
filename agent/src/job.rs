//! One deploy job on the agent, stage by stage: fetch, checkout, build,
//! image, deploy, health. A failure at any stage removes what this job
//! created and leaves the release that was serving untouched.

use std::{collections::BTreeMap, collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use bollard::Docker;
use gantry_shared::{proto, AgentName, AppName, BranchName, EnvName, JobId, JobState, Stage};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    build, docker,
    docker::{label, ContainerSpec, ImageSource},
    git,
    health::{self, Probe},
    report::{Deployed, Reporter},
};

/// Images of an (app, env) kept after a successful deploy, newest first:
/// the serving one and a few before it, for a quick rollback.
const KEEP_IMAGES: usize = 5;

/// What an agent needs from its host to run jobs.
pub struct Runtime {
    /// The Docker engine.
    pub docker: Docker,
    /// Root of mirrors and workspaces.
    pub work_dir: PathBuf,
    /// This agent's name, put on every object it creates.
    pub agent: AgentName,
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
}

/// A job spec checked at the edge.
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// The branch requested.
    pub branch: BranchName,
    /// The commit to build.
    pub commit: String,
    /// The app's configuration.
    pub spec: proto::AppSpec,
    /// The environment's variables.
    pub env_vars: BTreeMap<String, String>,
}

impl Job {
    /// Validates what the coordinator sent.
    pub fn from_proto(spec: proto::JobSpec) -> Result<Self, String> {
        let app = spec.app.ok_or("job without an app")?;
        let commit = spec.commit;
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("invalid commit id {commit:?}"));
        }
        let port = u16::try_from(app.container_port).ok().filter(|p| *p > 0);
        port.ok_or_else(|| format!("invalid container port {}", app.container_port))?;
        Ok(Self {
            id: JobId::new(spec.job_id).map_err(|e| e.to_string())?,
            app: AppName::new(app.name.clone()).map_err(|e| e.to_string())?,
            env: EnvName::new(spec.env).map_err(|e| e.to_string())?,
            branch: BranchName::new(spec.branch).map_err(|e| e.to_string())?,
            commit,
            spec: app,
            env_vars: spec.env_vars.into_iter().collect(),
        })
    }

    fn labels(&self, agent: &AgentName, agent_id: &str) -> HashMap<String, String> {
        HashMap::from([
            (label::APP.to_owned(), self.app.to_string()),
            (label::ENV.to_owned(), self.env.to_string()),
            (label::JOB.to_owned(), self.id.to_string()),
            (label::COMMIT.to_owned(), self.commit.clone()),
            (label::BRANCH.to_owned(), self.branch.to_string()),
            (label::AGENT.to_owned(), agent.to_string()),
            (label::AGENT_ID.to_owned(), agent_id.to_owned()),
        ])
    }

    /// `GANTRY_*` variables describing this release, for the build and the container.
    fn identity(&self) -> [(String, String); 5] {
        [
            ("GANTRY_APP".into(), self.app.to_string()),
            ("GANTRY_ENV".into(), self.env.to_string()),
            ("GANTRY_JOB".into(), self.id.to_string()),
            ("GANTRY_BRANCH".into(), self.branch.to_string()),
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
enum Stop {
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
    info!(job = %job.id, app = %job.app, env = %job.env, commit = %job.commit, "job started");
    let limit = Duration::from_secs(job.spec.deploy_timeout_secs.max(1));
    let work = stages(&rt, &job, &report, &handle.token);
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
        let (app, env, id) = (job.app.as_str(), job.env.as_str(), job.id.to_string());
        if let Err(e) = docker::remove_job_objects(&rt.docker, app, env, &id).await {
            warn!(job = %job.id, error = %e, "cannot remove what the job created");
            let msg = format!("warning: cannot remove what this job created: {e}");
            report.system(msg).await;
        }
        // The workspace holds this job's half-built tree; the next deploy
        // checks out afresh anyway.
        let _ = std::fs::remove_dir_all(workspace_dir(&rt, &job));
    }
    info!(job = %job.id, app = %job.app, env = %job.env, state = state.as_str(), "job ended");
    report.finish(state, summary, deployed).await;
}

/// Runs `fut` unless the job is cancelled first.
async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T, Stop>>,
) -> Result<T, Stop> {
    tokio::select! {
        _ = cancel.cancelled() => Err(Stop::Cancelled),
        out = fut => out,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, git::GitError> + Send + 'static,
) -> Result<T, Stop> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Stop::Failed(format!("git task failed: {e}")))?
        .map_err(Stop::from)
}

async fn stages(
    rt: &Runtime,
    job: &Job,
    report: &Reporter,
    cancel: &CancellationToken,
) -> Result<Deployed, Stop> {
    let mirror = rt.work_dir.join("mirrors").join(format!("{}.git", job.app));
    let workspace = workspace_dir(rt, job);

    report.stage(Stage::Fetch).await;
    let (remote, commit) = (job.spec.remote.clone(), job.commit.clone());
    let fetch_mirror = mirror.clone();
    let fetched = cancellable(
        cancel,
        blocking(move || git::fetch(&fetch_mirror, &remote, &commit)),
    )
    .await?;
    report
        .system(format!(
            "fetched {} new objects ({} bytes) into the mirror",
            fetched.received_objects, fetched.received_bytes
        ))
        .await;

    report.stage(Stage::Checkout).await;
    let (commit, dir) = (job.commit.clone(), workspace.clone());
    let checked = cancellable(
        cancel,
        blocking(move || git::checkout(&mirror, &commit, &dir)),
    )
    .await?;
    report
        .system(format!(
            "checked out {} \"{}\" by {} into {}",
            short(&job.commit),
            checked.subject,
            checked.author,
            checked.dir.display()
        ))
        .await;

    report.stage(Stage::Build).await;
    let mut env: BTreeMap<String, String> = job.identity().into_iter().collect();
    env.insert("PATH".into(), rt.build_path.clone());
    env.insert(
        "HOME".into(),
        std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
    );
    env.insert("LANG".into(), "C.UTF-8".into());
    if let Ok(java_home) = std::env::var("JAVA_HOME") {
        env.insert("JAVA_HOME".into(), java_home);
    }
    report.system(format!("$ {}", job.spec.build_command)).await;
    let timeout = Duration::from_secs(job.spec.build_timeout_secs.max(1));
    match build::run(
        &job.spec.build_command,
        &workspace,
        &env,
        timeout,
        cancel,
        report,
    )
    .await
    {
        Ok(()) => {}
        Err(build::BuildError::Cancelled) => return Err(Stop::Cancelled),
        Err(e) => return Err(e.into()),
    }
    let artifact = build::find_artifact(&workspace, &job.spec.artifact)?;
    let size = std::fs::metadata(&artifact).map(|m| m.len()).unwrap_or(0);
    report
        .system(format!(
            "artifact {} ({size} bytes)",
            artifact
                .strip_prefix(&workspace)
                .unwrap_or(&artifact)
                .display()
        ))
        .await;

    report.stage(Stage::Image).await;
    let tag = format!("{}:{}-{}", job.app, job.env, job.id);
    let port = job.spec.container_port as u16;
    let source = if job.spec.dockerfile.is_empty() {
        ImageSource::Base {
            image: &job.spec.base_image,
            artifact: &artifact,
            port,
        }
    } else {
        ImageSource::Dockerfile {
            workspace: &workspace,
            path: &job.spec.dockerfile,
        }
    };
    let labels = job.labels(&rt.agent, &rt.agent_id);
    cancellable(cancel, async {
        Ok(docker::build_image(&rt.docker, source, &tag, &labels, report).await?)
    })
    .await?;
    report.system(format!("built image {tag}")).await;

    report.stage(Stage::Deploy).await;
    let name = format!("gantry-{}-{}-{}", job.app, job.env, job.id);
    let mut vars: Vec<String> = job
        .env_vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.extend(job.identity().iter().map(|(k, v)| format!("{k}={v}")));
    let spec = ContainerSpec {
        name: &name,
        image: &tag,
        env: vars,
        labels,
        port,
        publish_ip: &rt.publish_ip,
    };
    let (container, host_port) = cancellable(cancel, async {
        Ok(docker::run_container(&rt.docker, spec).await?)
    })
    .await?;
    report
        .system(format!(
            "started container {name} with port {port} published on {host_port}"
        ))
        .await;

    report.stage(Stage::Health).await;
    let probe = Probe {
        host: &rt.health_host,
        port: host_port,
        path: &job.spec.health_path,
        timeout: Duration::from_secs(job.spec.health_timeout_secs.max(1)),
    };
    cancellable(cancel, async {
        health::wait_healthy(&rt.docker, &container, probe, report)
            .await
            .map_err(Stop::Failed)
    })
    .await?;
    report
        .system(format!(
            "healthy: GET {} answered 200",
            job.spec.health_path
        ))
        .await;
    docker::keep_running(&rt.docker, &container).await?;

    retire_previous(rt, job, &container, report).await;
    Ok(Deployed {
        url: format!("http://{}:{host_port}", rt.public_host),
        image: tag,
        container: name,
    })
}

/// Removes the containers of earlier releases of this (app, env), and images
/// beyond the newest [`KEEP_IMAGES`]. Failures here are reported, not fatal:
/// the new release already serves.
async fn retire_previous(rt: &Runtime, job: &Job, current: &str, report: &Reporter) {
    let scope = [
        (label::APP, job.app.as_str()),
        (label::ENV, job.env.as_str()),
    ];
    match docker::containers(&rt.docker, &scope).await {
        Ok(list) => {
            for (id, labels) in list.into_iter().filter(|(id, _)| id != current) {
                let old_job = labels.get(label::JOB).cloned().unwrap_or_default();
                match docker::retire_container(&rt.docker, &id).await {
                    Ok(()) => {
                        report
                            .system(format!("removed the container of job {old_job}"))
                            .await
                    }
                    Err(e) => report.system(format!("warning: {e}")).await,
                }
            }
        }
        Err(e) => report.system(format!("warning: {e}")).await,
    }
    if let Ok(mut images) = docker::images(&rt.docker, &scope).await {
        let job_of = |labels: &HashMap<String, String>| {
            labels
                .get(label::JOB)
                .and_then(|j| j.parse::<u64>().ok())
                .unwrap_or(0)
        };
        images.sort_by_key(|(_, labels)| std::cmp::Reverse(job_of(labels)));
        for (id, _) in images.into_iter().skip(KEEP_IMAGES) {
            let _ = docker::remove_image(&rt.docker, &id).await;
        }
    }
}

/// The workspace of the job's (app, env) on this agent.
fn workspace_dir(rt: &Runtime, job: &Job) -> PathBuf {
    rt.work_dir
        .join("workspaces")
        .join(job.env.as_str())
        .join(job.app.as_str())
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}
