//! The operator-facing gRPC service. Handlers validate the request into
//! domain types, call [`Core`], and convert the answer back.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use gantry_shared::{proto, AppName, BranchName, EnvName, JobId};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    core::{BranchRequest, Core},
    error::{redact_url, Error},
    follow,
    tail::TailStream,
};

/// The `gantry.v1.OperatorService` implementation.
pub struct OperatorService {
    core: Arc<Core>,
    shutdown: CancellationToken,
}

impl OperatorService {
    /// Serves operators from `core`; log streams end when `shutdown` fires.
    pub fn new(core: Arc<Core>, shutdown: CancellationToken) -> Self {
        Self { core, shutdown }
    }

    /// A log request checked: the job exists; (job, first seq, follow).
    fn log_request(&self, req: proto::StreamJobLogsRequest) -> Result<(JobId, u64, bool), Error> {
        let id = JobId::new(req.job_id)?;
        self.core.job(id)?;
        Ok((id, req.from_seq.max(1), req.follow))
    }

    fn job_proto(&self, id: JobId) -> Result<proto::Job, Error> {
        let job = self.core.job(id)?;
        Ok(job.to_proto(self.core.store.last_seq(id)?))
    }
}

/// An optional name: empty means "not given".
fn optional<T>(
    value: String,
    parse: impl FnOnce(String) -> Result<T, gantry_shared::NameError>,
) -> Result<Option<T>, Error> {
    if value.is_empty() {
        Ok(None)
    } else {
        Ok(Some(parse(value)?))
    }
}

fn required<T>(
    what: &str,
    value: String,
    parse: impl FnOnce(String) -> Result<T, gantry_shared::NameError>,
) -> Result<T, Error> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} is required")));
    }
    Ok(parse(value)?)
}

/// Who is asking: the `gantry-user` request header (the CLI sends the
/// login name), or "anonymous".
fn requester<T>(request: &Request<T>) -> Result<String, Error> {
    let Some(value) = request.metadata().get(USER_HEADER) else {
        return Ok("anonymous".into());
    };
    let name = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the {USER_HEADER} header must be 1 to 64 visible ASCII characters"
            ))
        })?;
    Ok(name.to_owned())
}

/// The request header naming the person asking.
pub const USER_HEADER: &str = "gantry-user";

fn names(values: Vec<String>) -> Result<Vec<BranchName>, Error> {
    values
        .into_iter()
        .map(|v| BranchName::new(v).map_err(Error::from))
        .collect()
}

/// `branch` and `branches` together: the single field is kept for simple
/// clients, the list for sets; both at once is ambiguous.
fn branch_list(branch: Option<BranchName>, list: Vec<String>) -> Result<Vec<BranchName>, Error> {
    match (branch, list.is_empty()) {
        (None, _) => names(list),
        (Some(branch), true) => Ok(vec![branch]),
        (Some(_), false) => Err(Error::InvalidArgument(
            "give the branch either in `branch` or in `branches`, not both".into(),
        )),
    }
}

fn release_limit(limit: u32) -> usize {
    match limit {
        0 => 20,
        n => n.min(1000) as usize,
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<proto::LogBatch, Status>> + Send>>;

type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl proto::operator_service_server::OperatorService for OperatorService {
    async fn list_apps(
        &self,
        _: Request<proto::ListAppsRequest>,
    ) -> Result<Response<proto::ListAppsResponse>, Status> {
        let apps = self
            .core
            .config
            .apps
            .iter()
            .map(|a| proto::App {
                name: a.name().to_string(),
                remote: redact_url(&a.remote),
                default_branch: a.default_branch.to_string(),
                build_command: a.build_command.clone(),
                artifact: a.artifact.clone(),
                base_image: a.base_image.clone().unwrap_or_default(),
                dockerfile: a.dockerfile.clone().unwrap_or_default(),
                container_port: a.container_port.get().into(),
                health_path: a.health_path.clone(),
            })
            .collect();
        Ok(Response::new(proto::ListAppsResponse { apps }))
    }

    async fn list_environments(
        &self,
        _: Request<proto::ListEnvironmentsRequest>,
    ) -> Result<Response<proto::ListEnvironmentsResponse>, Status> {
        let connected = self.core.connected();
        let agents = self.core.store.agents().map_err(Error::from)?;
        let environments = self
            .core
            .config
            .environments
            .iter()
            .map(|e| proto::Environment {
                name: e.name().to_string(),
                variable_names: e.variables.keys().cloned().collect(),
                secret_names: e.secrets.keys().cloned().collect(),
                connected_agents: agents
                    .iter()
                    .filter(|a| &a.env == e.name() && connected.iter().any(|(n, _)| n == &a.name))
                    .count() as u32,
            })
            .collect();
        Ok(Response::new(proto::ListEnvironmentsResponse {
            environments,
        }))
    }

    async fn list_agents(
        &self,
        _: Request<proto::ListAgentsRequest>,
    ) -> Result<Response<proto::ListAgentsResponse>, Status> {
        let connected = self.core.connected();
        let mut agents: Vec<proto::Agent> = self
            .core
            .store
            .agents()
            .map_err(Error::from)?
            .into_iter()
            .map(|a| {
                let live = connected.iter().find(|(n, _)| n == &a.name);
                let releases = self.core.serving_on(&a.name, &a.env);
                proto::Agent {
                    releases,
                    connected: live.is_some(),
                    running_jobs: live
                        .map(|(_, jobs)| jobs.iter().map(|j| j.get()).collect())
                        .unwrap_or_default(),
                    name: a.name.to_string(),
                    env: a.env.to_string(),
                    labels: a.labels.into_iter().collect(),
                    capacity: a.capacity,
                    version: a.version,
                    last_seen_ms: a.last_seen_ms,
                }
            })
            .collect();
        agents.sort_by(|a, b| (&a.env, &a.name).cmp(&(&b.env, &b.name)));
        Ok(Response::new(proto::ListAgentsResponse { agents }))
    }

    async fn deploy(
        &self,
        request: Request<proto::DeployRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = requester(&request)?;
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let branches = branch_list(optional(req.branch, BranchName::new)?, req.branches)?;
        let add = names(req.add)?;
        let remove = names(req.remove)?;
        let wanted = match (branches.is_empty(), add.is_empty() && remove.is_empty()) {
            (_, true) => BranchRequest::set(branches)?,
            (true, false) => BranchRequest::change(add, remove)?,
            (false, false) => {
                return Err(Error::InvalidArgument(
                    "give either the branches to deploy or --add/--remove changes to the \
                     current set, not both"
                        .into(),
                )
                .into())
            }
        };
        let job = self.core.deploy(app, env, wanted, who).await?;
        Ok(Response::new(self.job_proto(job.id)?))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let id = JobId::new(request.into_inner().id).map_err(Error::from)?;
        Ok(Response::new(self.job_proto(id)?))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let app = optional(req.app, AppName::new)?;
        let env = optional(req.env, EnvName::new)?;
        let limit = match req.limit {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let mut jobs = Vec::new();
        for job in self.core.store.jobs().rev() {
            let job = job.map_err(Error::from)?;
            if app.as_ref().is_some_and(|a| a != &job.app)
                || env.as_ref().is_some_and(|e| e != &job.env)
            {
                continue;
            }
            jobs.push(job.to_proto(self.core.store.last_seq(job.id).map_err(Error::from)?));
            if jobs.len() == limit {
                break;
            }
        }
        Ok(Response::new(proto::ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let id = JobId::new(request.into_inner().id).map_err(Error::from)?;
        let job = self.core.cancel(id).await?;
        Ok(Response::new(self.job_proto(job.id)?))
    }

    async fn rollback(
        &self,
        request: Request<proto::RollbackRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = requester(&request)?;
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let to = (req.to_release > 0).then_some(req.to_release);
        let job = self.core.rollback(app, env, to, who).await?;
        Ok(Response::new(self.job_proto(job.id)?))
    }

    async fn list_releases(
        &self,
        request: Request<proto::ListReleasesRequest>,
    ) -> Result<Response<proto::ListReleasesResponse>, Status> {
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let releases = self
            .core
            .releases(&app, &env, release_limit(req.limit))?
            .into_iter()
            .map(|v| v.release.to_proto(v.retained))
            .collect();
        Ok(Response::new(proto::ListReleasesResponse { releases }))
    }

    async fn get_environment_state(
        &self,
        request: Request<proto::GetEnvironmentStateRequest>,
    ) -> Result<Response<proto::EnvironmentState>, Status> {
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let view = self.core.environment(&app, &env)?;
        let mut pending = Vec::new();
        for job in view.pending {
            pending.push(self.job_proto(job.id)?);
        }
        Ok(Response::new(proto::EnvironmentState {
            app: app.to_string(),
            env: env.to_string(),
            current: view.current.map(|v| v.release.to_proto(v.retained)),
            pending,
        }))
    }

    async fn diff_environments(
        &self,
        request: Request<proto::DiffEnvironmentsRequest>,
    ) -> Result<Response<proto::DiffEnvironmentsResponse>, Status> {
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let from = required("from_env", req.from_env, EnvName::new)?;
        let to = required("to_env", req.to_env, EnvName::new)?;
        let branches = self
            .core
            .diff(&app, &from, &to)?
            .into_iter()
            .map(|d| proto::BranchDiff {
                branch: d.branch,
                from_commit: d.from.unwrap_or_default(),
                to_commit: d.to.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(proto::DiffEnvironmentsResponse { branches }))
    }

    async fn list_branches(
        &self,
        request: Request<proto::ListBranchesRequest>,
    ) -> Result<Response<proto::ListBranchesResponse>, Status> {
        let app = required("app", request.into_inner().app, AppName::new)?;
        let branches = self.core.branches(&app).await?;
        Ok(Response::new(proto::ListBranchesResponse { branches }))
    }

    async fn create_branch(
        &self,
        request: Request<proto::CreateBranchRequest>,
    ) -> Result<Response<proto::Branch>, Status> {
        let who = requester(&request)?;
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let name = required("name", req.name, BranchName::new)?;
        let from = (!req.from.is_empty()).then_some(req.from);
        let branch = self.core.create_branch(&app, name, from, who).await?;
        Ok(Response::new(branch))
    }

    type StreamAppLogsStream = TailStream;

    async fn stream_app_logs(
        &self,
        request: Request<proto::StreamAppLogsRequest>,
    ) -> Result<Response<TailStream>, Status> {
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let stream = self.core.tail_app(app, env, req.follow, req.tail)?;
        Ok(Response::new(stream))
    }

    type FollowJobLogsStream = BatchStream;

    async fn follow_job_logs(
        &self,
        request: Request<proto::StreamJobLogsRequest>,
    ) -> Result<Response<BatchStream>, Status> {
        let (id, from, follow) = self.log_request(request.into_inner())?;
        let stream =
            follow::job_log_batches(self.core.clone(), id, from, follow, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    type StreamJobLogsStream = LogStream;

    async fn stream_job_logs(
        &self,
        request: Request<proto::StreamJobLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let (id, from, follow) = self.log_request(request.into_inner())?;
        let stream = follow::job_logs(self.core.clone(), id, from, follow, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }
}
