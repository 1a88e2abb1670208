//! The operator-facing gRPC service. Handlers validate the request into
//! domain types, call [`Core`], and convert the answer back.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use gantry_shared::{proto, AppName, BranchName, EnvName, JobId};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    core::Core,
    error::{redact_url, Error},
    follow,
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
                proto::Agent {
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
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let branch = optional(req.branch, BranchName::new)?;
        let job = self.core.deploy(app, env, branch).await?;
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

    type StreamJobLogsStream = LogStream;

    async fn stream_job_logs(
        &self,
        request: Request<proto::StreamJobLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let req = request.into_inner();
        let id = JobId::new(req.job_id).map_err(Error::from)?;
        self.core.job(id)?;
        let stream = follow::job_logs(
            self.core.clone(),
            id,
            req.from_seq.max(1),
            req.follow,
            self.shutdown.clone(),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
