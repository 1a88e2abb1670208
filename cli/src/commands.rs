//! The CLI's commands against a coordinator's operator API.

use crate::{say, tell};
use anyhow::Context;
use gantry_shared::{
    proto,
    url::{CoordinatorList, CoordinatorUrl},
    JobState,
};
use serde_json::json;
use tonic::codegen::InterceptedService;

use crate::failover::Failover;

use crate::output::{self, Format};

/// A connected operator client: to one coordinator, or to whichever of a
/// list leads.
pub type Client =
    proto::operator_service_client::OperatorServiceClient<InterceptedService<Failover, WhoAsks>>;

/// Puts the caller's identity on every request: `authorization: Bearer
/// TOKEN` when there is a token, and the `gantry-user` header (the login
/// name, `$GANTRY_USER` or `$USER`), which a coordinator without tokens
/// records as the requester.
#[derive(Clone)]
pub struct WhoAsks {
    user: Option<tonic::metadata::AsciiMetadataValue>,
    bearer: Option<tonic::metadata::AsciiMetadataValue>,
}

impl tonic::service::Interceptor for WhoAsks {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(name) = &self.user {
            request.metadata_mut().insert("gantry-user", name.clone());
        }
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

/// Connects to the coordinator at `url` without a token (a coordinator
/// serving plaintext on loopback with no users).
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    connect_with(url, None, None).await
}

/// Connects to the coordinator at `url` with an API token, trusting
/// `ca_pem` for https://. `url` may list several coordinators sharing one
/// store, separated by commas: each request then goes to the one that
/// leads (see [`crate::failover`]), the token and CA serving them all.
pub async fn connect_with(
    url: &str,
    token: Option<String>,
    ca_pem: Option<String>,
) -> anyhow::Result<Client> {
    gantry_shared::tls::install_crypto_provider();
    let list = CoordinatorList::parse(url)?;
    let mut channels = Vec::with_capacity(list.len());
    for (index, url) in list.urls().enumerate() {
        let endpoint = endpoint(url, list.parsed(index), token.is_some(), ca_pem.as_deref())?;
        let channel = match list.len() {
            // One coordinator: reached now, as before lists, so a wrong
            // address is said before anything is sent.
            1 => endpoint
                .connect()
                .await
                .with_context(|| format!("cannot reach the coordinator at {url}; is it running? (set --coordinator or GANTRY_COORDINATOR)"))?,
            // Several: each when a request first needs it. Pings notice a
            // leader whose host died under a followed log.
            _ => endpoint
                .http2_keep_alive_interval(LIST_KEEPALIVE)
                .keep_alive_timeout(LIST_KEEPALIVE)
                .connect_lazy(),
        };
        channels.push(channel);
    }
    let user = std::env::var("GANTRY_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .and_then(|n| n.parse().ok());
    let bearer = match token {
        Some(token) => Some(
            format!("Bearer {}", token.trim())
                .parse()
                .context("the API token must be printable ASCII")?,
        ),
        None => None,
    };
    Ok(
        proto::operator_service_client::OperatorServiceClient::with_interceptor(
            Failover::new(list, channels),
            WhoAsks { user, bearer },
        ),
    )
}

/// How often a client of several coordinators pings the one it talks to,
/// and how long it waits for the answer: a followed log whose leader's
/// host died breaks within twice this, and goes on at the new leader.
const LIST_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// The endpoint for one coordinator, refusing a token in the clear off
/// this machine and https:// without the CA.
fn endpoint(
    url: &str,
    parsed: &CoordinatorUrl,
    with_token: bool,
    ca_pem: Option<&str>,
) -> anyhow::Result<tonic::transport::Endpoint> {
    if with_token && !parsed.tls && !parsed.is_loopback() {
        anyhow::bail!(
            "refusing to send an API token in the clear to {url}; use the coordinator's https:// address"
        );
    }
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid coordinator address {url:?}"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if parsed.tls {
        let ca = ca_pem.with_context(|| {
            format!("{url} uses TLS: run `gantry login --coordinator {url} --ca ca.pem --token TOKEN` first")
        })?;
        endpoint = gantry_shared::tls::with_tls(endpoint, ca, None)?;
    }
    Ok(endpoint)
}

/// `gantry apps`
pub async fn apps(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let apps = client
        .list_apps(proto::ListAppsRequest {})
        .await?
        .into_inner()
        .apps;
    if format == Format::Json {
        let list: Vec<_> = apps
            .iter()
            .map(|a| json!({"name": a.name, "remote": a.remote, "default_branch": a.default_branch, "build_command": a.build_command, "artifact": a.artifact, "base_image": a.base_image, "dockerfile": a.dockerfile, "container_port": a.container_port, "health_path": a.health_path}))
            .collect();
        say!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let image = if a.dockerfile.is_empty() {
                a.base_image.clone()
            } else {
                format!("Dockerfile {}", a.dockerfile)
            };
            vec![
                a.name.clone(),
                a.default_branch.clone(),
                a.remote.clone(),
                image,
                a.container_port.to_string(),
            ]
        })
        .collect();
    output::table(&["APP", "BRANCH", "REMOTE", "IMAGE", "PORT"], &rows)?;
    Ok(())
}

/// `gantry envs`
pub async fn envs(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let envs = client
        .list_environments(proto::ListEnvironmentsRequest {})
        .await?
        .into_inner()
        .environments;
    if format == Format::Json {
        let list: Vec<_> = envs
            .iter()
            .map(|e| json!({"name": e.name, "variables": e.variable_names, "connected_agents": e.connected_agents}))
            .collect();
        say!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = envs
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.connected_agents.to_string(),
                e.variable_names.join(","),
            ]
        })
        .collect();
    output::table(&["ENV", "AGENTS", "VARIABLES"], &rows)?;
    Ok(())
}

/// `gantry agents`
pub async fn agents(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let agents = client
        .list_agents(proto::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    if format == Format::Json {
        let list: Vec<_> = agents
            .iter()
            .map(|a| json!({"name": a.name, "env": a.env, "connected": a.connected, "labels": a.labels, "capacity": a.capacity, "version": a.version, "last_seen_ms": a.last_seen_ms, "running_jobs": a.running_jobs, "releases": a.releases}))
            .collect();
        say!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let jobs: Vec<String> = a.running_jobs.iter().map(ToString::to_string).collect();
            vec![
                a.name.clone(),
                a.env.clone(),
                if a.connected {
                    "connected".into()
                } else {
                    "offline".into()
                },
                format!("{}/{}", a.running_jobs.len(), a.capacity),
                jobs.join(","),
                a.releases.join(", "),
                a.version.clone(),
                output::time(a.last_seen_ms),
            ]
        })
        .collect();
    output::table(
        &[
            "AGENT",
            "ENV",
            "STATUS",
            "LOAD",
            "JOBS",
            "SERVES",
            "VERSION",
            "LAST SEEN",
        ],
        &rows,
    )?;
    Ok(())
}

/// `gantry jobs`
pub async fn jobs(
    client: &mut Client,
    app: Option<String>,
    env: Option<String>,
    limit: u32,
    format: Format,
) -> anyhow::Result<()> {
    let request = proto::ListJobsRequest {
        app: app.unwrap_or_default(),
        env: env.unwrap_or_default(),
        limit,
    };
    let jobs = client.list_jobs(request).await?.into_inner().jobs;
    if format == Format::Json {
        let list: Vec<_> = jobs.iter().map(output::job_json).collect();
        say!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.app.clone(),
                j.env.clone(),
                j.branch.clone(),
                output::short(&j.commit).to_owned(),
                output::state(j).to_owned(),
                output::stage(j.stage).to_owned(),
                j.agent.clone(),
                output::time(j.created_ms),
                j.reason.lines().next().unwrap_or_default().to_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "JOB", "APP", "ENV", "BRANCH", "COMMIT", "STATE", "STAGE", "AGENT", "CREATED", "REASON",
        ],
        &rows,
    )?;
    Ok(())
}

/// `gantry job JOB`
pub async fn job(client: &mut Client, id: u64, format: Format) -> anyhow::Result<()> {
    let job = client
        .get_job(proto::GetJobRequest { id })
        .await?
        .into_inner();
    if format == Format::Json {
        say!("{}", serde_json::to_string_pretty(&output::job_json(&job))?)?;
        return Ok(());
    }
    print_job(&job)?;
    Ok(())
}

/// A job for people, one field per line.
pub fn print_job(job: &proto::Job) -> std::io::Result<()> {
    let fields = [
        ("job", job.id.to_string()),
        ("app", job.app.clone()),
        ("env", job.env.clone()),
        ("kind", output::kind(job.kind).to_owned()),
        ("branch", job.branch.clone()),
        ("commit", job.commit.clone()),
        ("release", output::nonzero(job.release)),
        ("requested", job.requested_by.clone()),
        ("approval", job.approval.clone()),
        ("state", output::state(job).to_owned()),
        ("stage", output::stage(job.stage).to_owned()),
        ("agent", job.agent.clone()),
        ("created", output::time(job.created_ms)),
        ("updated", output::time(job.updated_ms)),
        ("image", job.image.clone()),
        ("container", job.container.clone()),
        ("url", job.url.clone()),
        ("log lines", job.last_seq.to_string()),
        ("reason", job.reason.clone()),
    ];
    for (name, value) in fields.iter().filter(|(_, v)| !v.is_empty()) {
        let lines: Vec<_> = value.split('\n').map(output::printable).collect();
        say!("{name:>10}: {}", lines.join("\n            "))?;
    }
    Ok(())
}

pub use crate::follow::logs;

/// What `gantry deploy` asks for.
pub struct DeployArgs {
    /// The app.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The branches (none: the default branch; several: a branch set).
    pub branches: Vec<String>,
    /// Branches added to the environment's current set.
    pub add: Vec<String>,
    /// Branches removed from it.
    pub remove: Vec<String>,
}

/// `gantry deploy`: queues the deploy, then (unless detached) follows it.
/// Returns whether the job succeeded (true when detached).
pub async fn deploy(
    client: &mut Client,
    args: DeployArgs,
    detach: bool,
    format: Format,
) -> anyhow::Result<bool> {
    let request = proto::DeployRequest {
        app: args.app,
        env: args.env,
        branch: String::new(),
        branches: args.branches,
        add: args.add,
        remove: args.remove,
    };
    let job = client.deploy(request).await?.into_inner();
    follow_job(client, job, detach, format).await
}

/// Announces a queued job, then (unless detached) follows its log to the
/// end; returns whether it succeeded (true when detached).
pub async fn follow_job(
    client: &mut Client,
    job: proto::Job,
    detach: bool,
    format: Format,
) -> anyhow::Result<bool> {
    match format {
        Format::Json if detach => say!("{}", output::job_json(&job))?,
        Format::Json => {}
        Format::Table => {
            tell!(
                "job {} {}: {} {} -> {} ({})",
                job.id,
                output::state(&job),
                job.app,
                job.branch,
                job.env,
                output::short(&job.commit)
            );
            if JobState::from_proto(job.state) == Some(JobState::Queued) {
                tell!("waiting: {}", job.reason);
            }
        }
    }
    if detach {
        if format == Format::Table {
            say!("{}", job.id)?;
        }
        return Ok(true);
    }
    let done = logs(client, job.id, true, format).await?;
    match format {
        Format::Json => say!("{}", output::job_json(&done))?,
        Format::Table => {
            tell!(
                "job {} {}: {}",
                done.id,
                output::state(&done),
                done.reason.lines().next().unwrap_or_default()
            );
            if !done.url.is_empty() {
                tell!("url: {}", done.url);
            }
        }
    }
    Ok(JobState::from_proto(done.state) == Some(JobState::Succeeded))
}

/// `gantry cancel JOB`
pub async fn cancel(client: &mut Client, id: u64, format: Format) -> anyhow::Result<()> {
    let job = client
        .cancel_job(proto::CancelJobRequest { id })
        .await?
        .into_inner();
    match format {
        Format::Json => say!("{}", output::job_json(&job))?,
        Format::Table => say!("job {} {}: {}", job.id, output::state(&job), job.reason)?,
    }
    Ok(())
}
