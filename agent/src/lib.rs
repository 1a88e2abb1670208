//! The Gantry agent: installed on each environment's servers, it dials the
//! coordinator, takes the deploy jobs pushed to it, and runs them with git,
//! the app's build command and the local Docker engine.
//!
//! [`run`] takes a shutdown token, so tests and the demo run agents in-process.

pub mod assignment;
pub mod batch;
pub mod build;
pub mod build_user;
pub mod connection;
pub mod docker;
pub mod git;
pub mod health;
pub mod install;
pub mod job;
pub mod join;
pub mod lease;
pub mod leftovers;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod spool;
mod stages;
pub mod tail;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use gantry_shared::{AgentName, EnvName, JobState};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

/// How long, after the running jobs are done, the agent waits for the
/// coordinator to acknowledge their last events before it exits anyway (they
/// stay in the spool and are sent by the next run).
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Default time running jobs get to finish when the agent is stopped.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(60);

/// How an agent is started.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The coordinator's URL, e.g. `http://10.0.0.1:7700`, or the URLs of
    /// several sharing one store, separated by commas: the agent finds the
    /// one that leads (see [`connection::maintain`]).
    pub coordinator: String,
    /// This agent's name.
    pub name: AgentName,
    /// The environment whose servers it runs on.
    pub env: EnvName,
    /// Root of its mirrors, workspaces and spool.
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
    /// How long running jobs may take to finish once the agent is stopped;
    /// past it they are stopped and end cancelled.
    pub drain_grace: Duration,
    /// The `gantry-agent` binary that runs app proxies (`None`: this
    /// process's own executable).
    pub proxy_program: Option<PathBuf>,
    /// Where `gantry-agent join` wrote the certificate, for an https://
    /// coordinator (`None`: /etc/gantry/tls).
    pub tls_dir: Option<PathBuf>,
    /// The unprivileged user builds run as (`None`: the agent's own user).
    pub build_user: Option<String>,
}

/// This installation's identity: made once and kept in the work dir, so it
/// survives restarts and differs between agents sharing a Docker host.
pub fn agent_id(work_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = work_dir.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_owned());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let id = format!("{:x}-{:x}", nanos, std::process::id());
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Runs the agent until `shutdown` is cancelled, then drains: it takes no
/// new work, lets running jobs finish within the grace period (stopping
/// them after it), waits for their last events to be acknowledged, and
/// returns.
pub async fn run(options: AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("cannot create work dir {}", options.work_dir.display()))?;
    gantry_shared::tls::install_crypto_provider();
    let coordinators = gantry_shared::url::CoordinatorList::parse(&options.coordinator)
        .context("the coordinator URL (--coordinator, GANTRY_COORDINATOR)")?;
    // A missing certificate is a set-up error: say so now, not on every retry.
    for url in coordinators.urls() {
        join::agent_endpoint(url, options.tls_dir.as_deref())?;
    }
    let docker = docker::connect()
        .await
        .context("the agent needs the local Docker engine")?;
    let agent_id = agent_id(&options.work_dir)?;
    let build_user = match &options.build_user {
        Some(name) => {
            let user = build_user::BuildUser::lookup(name)?;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if me != 0 && me != user.uid {
                anyhow::bail!(
                    "only an agent running as root can run builds as {name}; \
                     drop build_user to run them as this agent's own user"
                );
            }
            build_user::lock_down(&options.work_dir, options.env.as_str()).with_context(|| {
                format!(
                    "cannot make {} private to the agent",
                    options.work_dir.display()
                )
            })?;
            info!(user = %user.name, uid = user.uid, "builds run as an unprivileged user");
            Some(user)
        }
        None => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                warn!("builds run as root: set build_user (--build-user) to an unprivileged user");
            }
            None
        }
    };
    let killed = leftovers::kill_orphaned_builds(&agent_id);
    let cleared = leftovers::remove_unfinished_workspaces(&options.work_dir);
    if killed + cleared > 0 {
        info!(
            killed,
            cleared, "stopped builds and removed workspaces an earlier run of this agent left"
        );
    }
    let spool = spool::Spool::open(&options.work_dir.join("spool"))
        .with_context(|| format!("cannot open the spool in {}", options.work_dir.display()))?;
    let removed = docker::remove_unreleased(&docker, &agent_id).await?;
    let unfinished: Vec<String> = spool.unfinished().iter().map(|j| j.to_string()).collect();
    // A Docker refusal here must not keep the agent from starting.
    let images = leftovers::remove_unfinished_images(&docker, &agent_id, &unfinished)
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "cannot remove images of unfinished jobs");
            0
        });
    if removed + images > 0 {
        info!(
            removed,
            images,
            "removed containers and images of jobs an earlier run of this agent did not finish"
        );
    }
    let runtime = Arc::new(runtime::Runtime {
        docker,
        work_dir: options.work_dir.clone(),
        agent: options.name.clone(),
        env: options.env.clone(),
        agent_id,
        publish_ip: options.publish_ip.clone(),
        health_host: options.health_host.clone(),
        public_host: options.public_host.clone(),
        build_path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        proxy_program: match &options.proxy_program {
            Some(program) => program.clone(),
            None => std::env::current_exe().context("cannot find this binary's path")?,
        },
        lease: Default::default(),
        turns: Default::default(),
        build_user,
    });
    // Released apps keep their stable ports, even after a host reboot.
    proxy::client::reconcile(&runtime).await;
    // Jobs an earlier run of this agent died in: say how they ended.
    for job in spool.unfinished() {
        // Numbered on from the job's last spooled line (see `spool`).
        let report = report::Reporter::new(job, spool.clone());
        report
            .finish(
                JobState::Failed,
                "the agent restarted while running this job".into(),
                None,
            )
            .await;
    }
    let link = Arc::new(connection::Link {
        options,
        coordinators,
        runtime,
        spool,
        running: Default::default(),
        tasks: TaskTracker::new(),
        draining: shutdown.clone(),
        tails: Default::default(),
    });
    let name = link.options.name.clone();
    info!(agent = %name, env = %link.options.env, coordinator = %link.options.coordinator, "agent starting");
    let stop = CancellationToken::new();
    let mut connection = tokio::spawn(connection::maintain(link.clone(), stop.clone()));
    let watchdog = tokio::spawn(stop_jobs_past_the_lease(link.clone()));
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        ended = &mut connection => ended
            .context("the connection task failed")
            .and_then(|()| anyhow::bail!("the connection task stopped by itself")),
    };
    watchdog.abort();
    outcome?;

    info!(agent = %name, jobs = link.running.lock().expect("running lock").len(), "draining");
    link.tasks.close();
    if tokio::time::timeout(link.options.drain_grace, link.tasks.wait())
        .await
        .is_err()
    {
        let grace = link.options.drain_grace.as_secs();
        for handle in link.running.lock().expect("running lock").values() {
            handle.stop(
                JobState::Cancelled,
                format!("the agent was stopped and the job did not finish within {grace}s"),
            );
        }
        link.tasks.wait().await;
    }
    let acked = tokio::time::timeout(ACK_WAIT, async {
        while !link.spool.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if acked.is_err() {
        warn!(agent = %name, "the coordinator did not acknowledge every event; they stay spooled for the next run");
    }
    stop.cancel();
    connection.await.context("the connection task failed")?;
    info!(agent = %name, "agent stopped");
    Ok(())
}

/// Stops the running jobs whenever the coordinator has not been heard for
/// twice its lease: it has failed them as lost by then, and a deploy must not
/// go on behind the operator's back. Each job removes what it created, so
/// the release that was serving keeps serving.
async fn stop_jobs_past_the_lease(link: Arc<connection::Link>) {
    let lease = link.runtime.lease.clone();
    loop {
        lease.expired().await;
        let Some(patience) = lease.patience() else {
            continue;
        };
        let lost = lease::LeaseLost(patience).to_string();
        for (job, handle) in link.running.lock().expect("running lock").iter() {
            warn!(job = %job, agent = %link.options.name, "stopping a job: the lease ran out");
            handle.stop(JobState::Failed, lost.clone());
        }
        // Until the coordinator is heard again, nothing new can start.
        let mut heard = lease.heard_changes();
        let _ = heard.changed().await;
    }
}
