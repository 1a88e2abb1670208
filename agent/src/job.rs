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

    fn labels(&self, agent: &AgentName) -> HashMap<String, String> {
        HashMap::from([
            (label::APP.to_owned(), self.app.to_string()),
            (label::ENV.to_owned(), self.env.to_string()),
            (label::JOB.to_owned(), self.id.to_string()),
            (label::COMMIT.to_owned(), self.commit.clone()),
            (label::BRANCH.to_owned(), self.branch.to_string()),
            (label::AGENT.to_owned(), agent.to_string()),
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
pub async fn run(rt: Arc<Runtime>, job: Job, report: Reporter, cancel: CancellationToken) {
    info!(job = %job.id, app = %job.app, env = %job.env, commit = %job.commit, "job started");
    let outcome = stages(&rt, &job, &report, &cancel).await;
    let (state, summary, deployed) = match outcome {
        Ok(deployed) => (
            JobState::Succeeded,
            format!("{} is serving at {}", deployed.image, deployed.url),
            Some(deployed),
        ),
        Err(Stop::Failed(why)) => (JobState::Failed, why, None),
        Err(Stop::Cancelled) => (
            JobState::Cancelled,
            "cancelled by operator".to_owned(),
            None,
        ),
    };
    if state != JobState::Succeeded {
        let removed = docker::remove_job_objects(
            &rt.docker,
            job.app.as_str(),
            job.env.as_str(),
            &job.id.to_string(),
        )
        .await;
        if let Err(e) = removed {
            warn!(job = %job.id, error = %e, "cannot remove what the job created");
            report
                .system(format!("warning: cannot remove what this job created: {e}"))
                .await;
        }
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
    let workspace = rt
        .work_dir
        .join("workspaces")
        .join(job.env.as_str())
        .join(job.app.as_str());

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
    let labels = job.labels(&rt.agent);
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
                match docker::remove_container(&rt.docker, &id).await {
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

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}
