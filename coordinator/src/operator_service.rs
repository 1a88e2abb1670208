//! The operator-facing gRPC service. Handlers validate the request into
//! domain types, call [`Core`], and convert the answer back.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use gantry_shared::{proto, AgentName, AppName, BranchName, EnvName, JobId};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    audit::AuditEntry,
    auth::Action,
    core::Core,
    error::{redact_url, Error},
    follow,
    guard::field,
    request::{deploy_request, optional, release_limit, required},
    store::JobQuery,
    tail::TailStream,
};

/// Longest `from` of a branch creation: a branch name (at most 200 bytes)
/// or a commit id.
const MAX_REVISION_BYTES: usize = 200;

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
    async fn log_request(
        &self,
        req: proto::StreamJobLogsRequest,
    ) -> Result<(JobId, u64, bool), Error> {
        let id = JobId::new(req.job_id)?;
        self.core.job(id).await?;
        Ok((id, req.from_seq.max(1), req.follow))
    }

    async fn job_proto(&self, id: JobId) -> Result<proto::Job, Error> {
        let job = self.core.job(id).await?;
        Ok(job.to_proto(self.core.store.last_seq(id).await?))
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<proto::LogBatch, Status>> + Send>>;

type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl proto::operator_service_server::OperatorService for OperatorService {
    async fn list_apps(
        &self,
        request: Request<proto::ListAppsRequest>,
    ) -> Result<Response<proto::ListAppsResponse>, Status> {
        self.core.caller(&request, "read").await?;
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
        request: Request<proto::ListEnvironmentsRequest>,
    ) -> Result<Response<proto::ListEnvironmentsResponse>, Status> {
        self.core.caller(&request, "read").await?;
        let connected = self.core.connected().await?;
        let agents = self.core.store.agents().await.map_err(Error::from)?;
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
        request: Request<proto::ListAgentsRequest>,
    ) -> Result<Response<proto::ListAgentsResponse>, Status> {
        self.core.caller(&request, "read").await?;
        let connected = self.core.connected().await?;
        let mut agents = Vec::new();
        for a in self.core.store.agents().await.map_err(Error::from)? {
            let live = connected.iter().find(|(n, _)| n == &a.name);
            let releases = self.core.serving_on(&a.name, &a.env).await?;
            agents.push(proto::Agent {
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
            });
        }
        agents.sort_by(|a, b| (&a.env, &a.name).cmp(&(&b.env, &b.name)));
        Ok(Response::new(proto::ListAgentsResponse { agents }))
    }

    async fn deploy(
        &self,
        request: Request<proto::DeployRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = self.core.caller(&request, "deploy").await?;
        let req = request.into_inner();
        let target = format!("app {} env {}", field(&req.app), field(&req.env));
        let job = async {
            let (app, env, wanted) = deploy_request(req)?;
            self.core
                .permit(&who, Action::Deploy(self.core.environment_config(&env)?))?;
            self.core.deploy(app, env, wanted, who.name.clone()).await
        }
        .await;
        let job = self
            .core
            .audited(&who, "deploy", &target, job, |j| format!("job {}", j.id))
            .await?;
        Ok(Response::new(self.job_proto(job.id).await?))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        self.core.caller(&request, "read").await?;
        let id = JobId::new(request.into_inner().id).map_err(Error::from)?;
        Ok(Response::new(self.job_proto(id).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        self.core.caller(&request, "read").await?;
        let req = request.into_inner();
        let app = optional(req.app, AppName::new)?;
        let env = optional(req.env, EnvName::new)?;
        let limit = match req.limit {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let query = JobQuery {
            app,
            env,
            unended: false,
            limit: Some(limit),
        };
        let store = &self.core.store;
        let mut jobs = Vec::new();
        for job in store.jobs(&query).await.map_err(Error::from)? {
            let last_seq = store.last_seq(job.id).await.map_err(Error::from)?;
            jobs.push(job.to_proto(last_seq));
        }
        Ok(Response::new(proto::ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = self.core.caller(&request, "cancel").await?;
        let raw = request.into_inner().id;
        let job = async {
            let id = JobId::new(raw)?;
            let job = self.core.job(id).await?;
            if job.requested_by != who.name {
                self.core.permit(
                    &who,
                    Action::Cancel(self.core.environment_config(&job.env)?),
                )?;
            }
            self.core.cancel(id).await
        }
        .await;
        let target = format!("job {raw}");
        let job = self
            .core
            .audited(&who, "cancel", &target, job, |j| j.reason.clone())
            .await?;
        Ok(Response::new(self.job_proto(job.id).await?))
    }

    async fn rollback(
        &self,
        request: Request<proto::RollbackRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let who = self.core.caller(&request, "rollback").await?;
        let req = request.into_inner();
        let target = format!(
            "app {} env {} to {}",
            field(&req.app),
            field(&req.env),
            req.to_release
        );
        let job = async {
            let app = required("app", req.app, AppName::new)?;
            let env = required("env", req.env, EnvName::new)?;
            self.core
                .permit(&who, Action::Rollback(self.core.environment_config(&env)?))?;
            let to = (req.to_release > 0).then_some(req.to_release);
            self.core.rollback(app, env, to, who.name.clone()).await
        }
        .await;
        let job = self
            .core
            .audited(&who, "rollback", &target, job, |j| format!("job {}", j.id))
            .await?;
        Ok(Response::new(self.job_proto(job.id).await?))
    }

    async fn list_releases(
        &self,
        request: Request<proto::ListReleasesRequest>,
    ) -> Result<Response<proto::ListReleasesResponse>, Status> {
        self.core.caller(&request, "read").await?;
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let releases = self
            .core
            .releases(&app, &env, release_limit(req.limit))
            .await?
            .into_iter()
            .map(|v| v.release.to_proto(v.retained))
            .collect();
        Ok(Response::new(proto::ListReleasesResponse { releases }))
    }

    async fn get_environment_state(
        &self,
        request: Request<proto::GetEnvironmentStateRequest>,
    ) -> Result<Response<proto::EnvironmentState>, Status> {
        self.core.caller(&request, "read").await?;
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let view = self.core.environment(&app, &env).await?;
        let mut pending = Vec::new();
        for job in view.pending {
            pending.push(self.job_proto(job.id).await?);
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
        self.core.caller(&request, "read").await?;
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let from = required("from_env", req.from_env, EnvName::new)?;
        let to = required("to_env", req.to_env, EnvName::new)?;
        let branches = self
            .core
            .diff(&app, &from, &to)
            .await?
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
        self.core.caller(&request, "read").await?;
        let app = required("app", request.into_inner().app, AppName::new)?;
        let branches = self.core.branches(&app).await?;
        Ok(Response::new(proto::ListBranchesResponse { branches }))
    }

    async fn create_branch(
        &self,
        request: Request<proto::CreateBranchRequest>,
    ) -> Result<Response<proto::Branch>, Status> {
        let who = self.core.caller(&request, "create-branch").await?;
        let req = request.into_inner();
        let target = format!("app {} branch {}", field(&req.app), field(&req.name));
        let branch = async {
            let app = required("app", req.app, AppName::new)?;
            let name = required("name", req.name, BranchName::new)?;
            if req.from.len() > MAX_REVISION_BYTES {
                return Err(Error::InvalidArgument(format!(
                    "from must be a branch or commit of at most {MAX_REVISION_BYTES} bytes"
                )));
            }
            self.core.permit(&who, Action::CreateBranch)?;
            let from = (!req.from.is_empty()).then_some(req.from);
            self.core
                .create_branch(&app, name, from, who.name.clone())
                .await
        }
        .await;
        let branch = self
            .core
            .audited(&who, "create-branch", &target, branch, |b| {
                format!("created at {}", b.commit)
            })
            .await?;
        Ok(Response::new(branch))
    }

    type StreamAppLogsStream = TailStream;

    async fn stream_app_logs(
        &self,
        request: Request<proto::StreamAppLogsRequest>,
    ) -> Result<Response<TailStream>, Status> {
        let who = self.core.caller(&request, "read").await?;
        let req = request.into_inner();
        let app = required("app", req.app, AppName::new)?;
        let env = required("env", req.env, EnvName::new)?;
        let stream = self
            .core
            .tail_app(&who.name, app, env, req.follow, req.tail)
            .await?;
        Ok(Response::new(stream))
    }

    type FollowJobLogsStream = BatchStream;

    async fn follow_job_logs(
        &self,
        request: Request<proto::StreamJobLogsRequest>,
    ) -> Result<Response<BatchStream>, Status> {
        self.core.caller(&request, "read").await?;
        let (id, from, follow) = self.log_request(request.into_inner()).await?;
        let stream =
            follow::job_log_batches(self.core.clone(), id, from, follow, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    type StreamJobLogsStream = LogStream;

    async fn stream_job_logs(
        &self,
        request: Request<proto::StreamJobLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        self.core.caller(&request, "read").await?;
        let (id, from, follow) = self.log_request(request.into_inner()).await?;
        let stream = follow::job_logs(self.core.clone(), id, from, follow, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn approve(
        &self,
        request: Request<proto::ApproveRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        self.decide(request, true).await
    }

    async fn reject(
        &self,
        request: Request<proto::ApproveRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        self.decide(request, false).await
    }

    async fn revoke_agent(
        &self,
        request: Request<proto::RevokeAgentRequest>,
    ) -> Result<Response<proto::RevokeAgentResponse>, Status> {
        let who = self.core.caller(&request, "revoke").await?;
        let raw = request.into_inner().name;
        let target = format!("agent {}", field(&raw));
        let revoked = async {
            let name = required("name", raw, AgentName::new)?;
            self.core.permit(&who, Action::Admin)?;
            self.core.revoke(&name).await
        }
        .await;
        let revoked = self
            .core
            .audited(&who, "revoke", &target, revoked, |certs| {
                let serials: Vec<&str> = certs.iter().map(|c| c.serial.as_str()).collect();
                format!("certificates {}", serials.join(", "))
            })
            .await?;
        let serials = revoked.into_iter().map(|c| c.serial).collect();
        Ok(Response::new(proto::RevokeAgentResponse { serials }))
    }

    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        let who = self.core.caller(&request, "read-audit").await?;
        let permitted = self.core.permit(&who, Action::Admin);
        self.core
            .audited(&who, "read-audit", "audit trail", permitted, |_| {
                String::new()
            })
            .await?;
        let req = request.into_inner();
        let page = self.core.audit_page(req.before_seq, req.limit).await?;
        Ok(Response::new(proto::ListAuditResponse {
            entries: page.entries.iter().map(AuditEntry::to_proto).collect(),
            next_before_seq: page.next_before_seq.unwrap_or(0),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let who = self.core.caller(&request, "read").await?;
        let config = &self.core.config;
        let envs = |approve: bool| {
            let check = |e| match approve {
                true => Action::Approve(e),
                false => Action::Deploy(e),
            };
            config
                .environments
                .iter()
                .filter(|e| who.may(check(e), config))
                .map(|e| e.name().to_string())
                .collect()
        };
        Ok(Response::new(proto::WhoAmIResponse {
            deploy: envs(false),
            approve: envs(true),
            name: who.name.clone(),
            roles: who.roles.iter().cloned().collect(),
        }))
    }
}

impl OperatorService {
    /// Approve or reject, audited.
    async fn decide(
        &self,
        request: Request<proto::ApproveRequest>,
        approve: bool,
    ) -> Result<Response<proto::Job>, Status> {
        let action = if approve { "approve" } else { "reject" };
        let who = self.core.caller(&request, action).await?;
        let req = request.into_inner();
        let target = format!("job {}", req.job_id);
        let job = async {
            let id = JobId::new(req.job_id)?;
            let comment = req.comment.trim();
            if comment.len() > 500 || comment.chars().any(char::is_control) {
                return Err(Error::InvalidArgument(
                    "the comment must be one line of at most 500 bytes".into(),
                ));
            }
            self.core
                .decide_approval(id, &who, approve, comment.to_owned())
                .await
        }
        .await;
        let job = self
            .core
            .audited(&who, action, &target, job, |j| {
                format!("{} {} {}", j.app, j.env, j.approval.describe())
            })
            .await?;
        Ok(Response::new(self.job_proto(job.id).await?))
    }
}
