//! The coordinator's domain logic, free of gRPC types: deploying, placing
//! jobs onto agents, applying what agents report, cancelling, and noticing
//! lost agents. Both gRPC services are thin layers over [`Core`].

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use gantry_shared::{
    config::{fetch_token, CoordinatorConfig},
    messages::{Event, Finished, JobEvent, LogLine},
    proto, AgentName, JobId, JobState, Redactor,
};
use tracing::{info, warn};

mod agents;
mod approval;
mod branches;
mod deploy;
mod logs;
mod releases;
mod roll;
mod trust;

pub use deploy::BranchRequest;

use crate::{
    auth::Auth,
    error::Error,
    fleet::{Decision, Fleet, Placement, Sender},
    hub::LogHub,
    job::{Approval, BranchCommit, JobKind, JobRecord, RollStep},
    release::{retained_images, ReleaseRecord, ServerRelease},
    store::Store,
    tail::Tails,
    trust::Authority,
};

/// The coordinator's state and behaviour, shared by its services and loops.
pub struct Core {
    /// The configuration it started with.
    pub config: Arc<CoordinatorConfig>,
    /// Durable state.
    pub store: Store,
    /// Live log fan-out.
    pub hub: LogHub,
    /// Open `gantry logs --app --env` streams.
    pub tails: Tails,
    fleet: Mutex<Fleet>,
    mirrors: branches::MirrorLocks,
    /// Operators' tokens and rates.
    pub auth: Auth,
    /// The CA that enrols agents; `None` when serving plaintext.
    pub authority: Option<Authority>,
}

impl Core {
    /// Builds the core over `store`, reading back queued and active jobs.
    pub fn new(
        config: Arc<CoordinatorConfig>,
        store: Store,
        authority: Option<Authority>,
    ) -> Result<Arc<Self>, Error> {
        let mut fleet = Fleet::default();
        let now = Instant::now();
        for job in store.jobs() {
            let mut job = job?;
            match job.state {
                JobState::Queued => {
                    fleet.queued.insert(job.id);
                }
                state if state.is_active() => {
                    let agent = job.agent.clone().expect("active jobs have an agent");
                    job.reason = format!(
                        "the coordinator restarted; waiting up to {}s for agent {agent} to reconnect",
                        config.agent_lease_secs
                    );
                    store.put_job(&job)?;
                    fleet.lost_since.insert(agent.clone(), now);
                    fleet.active.insert(
                        job.id,
                        Placement {
                            app: job.app,
                            env: job.env,
                            agent,
                            certificate: job.certificate,
                        },
                    );
                }
                _ => {}
            }
        }
        info!(
            queued = fleet.queued.len(),
            active = fleet.active.len(),
            "state read back"
        );
        store.put_config_snapshot("apps", format!("{:?}", config.apps).into_bytes())?;
        store.put_config_snapshot(
            "environments",
            format!("{:?}", config.environments).into_bytes(),
        )?;
        Ok(Arc::new(Self {
            auth: Auth::new(&config),
            authority,
            config,
            store,
            hub: LogHub::default(),
            fleet: Mutex::new(fleet),
            mirrors: Default::default(),
            tails: Tails::default(),
        }))
    }

    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().expect("fleet lock poisoned")
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Result<JobRecord, Error> {
        self.store.job(id)?.ok_or(Error::UnknownJob(id))
    }

    /// Cancels a job: at once if it waits, through its agent if it runs.
    pub async fn cancel(&self, id: JobId) -> Result<JobRecord, Error> {
        {
            let mut fleet = self.fleet();
            let mut job = self.job(id)?;
            if job.state.is_terminal() {
                return Err(Error::FailedPrecondition(format!(
                    "job {id} already ended ({}); nothing to cancel",
                    job.state.as_str()
                )));
            }
            let session = job.agent.as_ref().and_then(|a| fleet.sessions.get(a));
            match (job.state, session) {
                (state, Some(session)) if state.is_active() => {
                    session.outbox.cancel(id);
                    job.cancel_requested = true;
                    job.reason = format!(
                        "cancel requested; agent {} is stopping it",
                        session.record.name
                    );
                    self.store.put_job(&job)?;
                }
                (state, _) => {
                    let why = match &job.agent {
                        Some(agent) if state.is_active() => format!(
                            "cancelled by operator while agent {agent} was away; \
                             it stops the job when it reconnects"
                        ),
                        _ => "cancelled by operator before it started".to_owned(),
                    };
                    job.transition(JobState::Cancelled, why);
                    self.store.put_job(&job)?;
                    fleet.queued.remove(&id);
                    fleet.release(id);
                    self.hub.end(id);
                    self.place_queued(&mut fleet);
                }
            }
            info!(job = %id, "cancel requested");
        }
        self.store.flush().await?;
        self.job(id)
    }

    /// Applies one event an agent's session sent about a job it holds.
    /// Events about a job that `sender` never held (another agent's, or
    /// one of the same name in another environment or with another
    /// certificate) are refused with [`Error::NotHolder`] and change
    /// nothing.
    pub fn apply_event(&self, sender: &Sender, event: JobEvent) -> Result<(), Error> {
        let (id, body) = (event.job, event.body);
        let agent = &sender.agent;
        let mut fleet = self.fleet();
        let holds = fleet.active.get(&id).is_some_and(|p| p.held_by(sender));
        if !holds {
            // Lines of a job that ended while its agent was away (lost, or
            // the agent restarted) are still its log: keep them. Other
            // events of an ended job change nothing.
            let job = self.store.job(id)?;
            let ran_it = job.as_ref().is_some_and(|j| {
                j.agent
                    .as_ref()
                    .is_some_and(|a| sender.is(a, &j.env, j.certificate.as_deref()))
            });
            if !ran_it {
                return Err(Error::NotHolder(format!(
                    "agent {agent} of env {} sent an event for job {id}, which it does not hold",
                    sender.env
                )));
            }
            if !matches!(&body, Event::Lines(_)) {
                return Err(Error::FailedPrecondition(format!(
                    "job {id} is no longer held by agent {agent}"
                )));
            }
        }
        match body {
            Event::Lines(lines) => {
                drop(fleet);
                self.append_lines(id, lines)?;
            }
            Event::Stage(stage) => {
                let mut job = self.job(id)?;
                let reason = format!("{} on agent {agent}", stage.as_str());
                if job.transition(JobState::Running, reason) {
                    job.stage = Some(stage);
                    self.store.put_job(&job)?;
                }
            }
            Event::Finished(done) => {
                let done = redact_finished(&self.redactor_of_job(id)?, done);
                let (state, summary) = (done.state, done.summary.clone());
                self.end_step(&mut fleet, id, state, summary, Some(done.into()));
                self.place_queued(&mut fleet);
            }
        }
        Ok(())
    }

    /// Stores lines of `id`'s log (each once, capped at the line limit,
    /// its environment's secrets replaced by `***` even if an agent missed
    /// one) and hands the new ones to its followers.
    fn append_lines(&self, id: JobId, lines: Vec<LogLine>) -> Result<(), Error> {
        let redactor = self.redactor_of_job(id)?;
        let lines = lines
            .into_iter()
            .map(|line| LogLine {
                text: gantry_shared::limits::cap_log_line(redactor.redact(line.text)),
                ..line
            })
            .collect();
        if let Some(run) = self.store.append_logs(id, lines)? {
            self.hub.publish(id, run);
        }
        Ok(())
    }

    /// The redactor of `id`'s environment (one without secrets costs no
    /// lookup).
    fn redactor_of_job(&self, id: JobId) -> Result<Redactor, Error> {
        if self
            .config
            .environments
            .iter()
            .all(|e| e.secrets.is_empty())
        {
            return Ok(Redactor::default());
        }
        let job = self.job(id)?;
        Ok(self.redactor_of(&job.env))
    }

    /// The redactor of `env`'s secrets.
    pub fn redactor_of(&self, env: &gantry_shared::EnvName) -> Redactor {
        self.config
            .environment(env)
            .map(|e| e.redactor())
            .unwrap_or_default()
    }

    /// Ends an active job and frees its (app, env) and agent slot; a
    /// succeeded job becomes a release of every server it switched.
    fn finish_locked(
        &self,
        fleet: &mut Fleet,
        mut job: JobRecord,
        state: JobState,
        reason: String,
        done: Option<proto::JobFinished>,
    ) {
        let id = job.id;
        fleet.release(id);
        if !job.transition(state, reason) {
            return;
        }
        if let Some(done) = done {
            job.url = done.url;
            if !done.image.is_empty() {
                job.image = done.image;
            }
            job.container = done.container;
        }
        if let (JobState::Succeeded, Some(agent)) = (state, job.agent.clone()) {
            let last = ServerRelease {
                agent,
                container: job.container.clone(),
                url: job.url.clone(),
                image: job.image.clone(),
            };
            match job.roll.get_mut(job.step) {
                Some(step) => step.switched = Some(last),
                None => job.roll.push(RollStep {
                    agent: last.agent.clone(),
                    switched: Some(last),
                    put_back: None,
                }),
            }
        }
        if let Err(e) = self.store.put_job(&job) {
            warn!(job = %id, error = %e, "cannot store job end");
        }
        if let (JobState::Succeeded, Some(number)) = (job.state, job.release) {
            let servers = job.roll.iter().filter_map(|s| s.switched.clone()).collect();
            let release = ReleaseRecord::from_job(&job, number, servers);
            match self.store.put_release(&release) {
                Ok(()) => {
                    info!(job = %id, app = %job.app, env = %job.env, release = number, "released")
                }
                Err(e) => warn!(job = %id, error = %e, "cannot store the release"),
            }
        }
        info!(job = %id, app = %job.app, env = %job.env, state = job.state.as_str(), reason = %job.reason, "job ended");
        self.hub.end(id);
    }

    /// Places every queued job that can run now, and records why the others wait.
    fn place_queued(&self, fleet: &mut Fleet) {
        let queued: Vec<JobId> = fleet.queued.iter().copied().collect();
        for id in queued {
            let Ok(mut job) = self.job(id) else {
                fleet.queued.remove(&id);
                continue;
            };
            if matches!(job.approval, Approval::Waiting { .. }) {
                continue;
            }
            match fleet.decide(&job) {
                Decision::Wait(reason) => {
                    if job.reason != reason {
                        job.reason = reason;
                        let _ = self.store.put_job(&job);
                    }
                }
                Decision::Assign(agent) => {
                    // One job per (app, env) is active, so the next number
                    // is this job's; it is kept only if the job succeeds.
                    let Ok(releases) = self.store.releases(&job.app, &job.env) else {
                        continue;
                    };
                    job.release = Some(releases.first().map_or(1, |r| r.number + 1));
                    job.roll = self.roll_order(fleet, &job, &agent);
                    job.step = 0;
                    if !self.assign_step(fleet, &mut job, &agent, roll::StepKind::Deploy) {
                        continue;
                    }
                    let servers = job.roll.len();
                    let reason = match servers {
                        1 => format!("assigned to agent {agent}"),
                        n => format!("assigned to agent {agent}, first of {n} servers"),
                    };
                    job.transition(JobState::Assigned, reason);
                    if let Err(e) = self.store.put_job(&job) {
                        warn!(job = %id, error = %e, "cannot store assignment");
                    }
                    fleet.queued.remove(&id);
                    info!(job = %id, app = %job.app, env = %job.env, agent = %agent, servers, "job assigned");
                }
            }
        }
    }

    /// What the agent needs to run `job`: the configuration, and the
    /// images of `releases` (newest first) it must keep.
    fn job_spec(&self, job: &JobRecord, releases: &[ReleaseRecord]) -> Option<proto::JobSpec> {
        let app = self.config.app(&job.app)?;
        let env = self.config.environment(&job.env)?;
        let keep_images = retained_images(releases, app.keep_releases.saturating_sub(1));
        // The read-only credential of this environment; the app's own
        // `git_token` can push and stays here.
        let (fetch_username, fetch_token) = match fetch_token(app, env) {
            Some((username, token)) => (username.unwrap_or_default(), token),
            None => Default::default(),
        };
        let set = job.base.as_ref().map(|base| proto::BranchSet {
            base: Some(base.to_proto()),
            branches: job.branches.iter().map(BranchCommit::to_proto).collect(),
            time_secs: job.created_ms / 1000,
        });
        Some(proto::JobSpec {
            job_id: job.id.get(),
            app: Some(proto::AppSpec {
                name: app.name().to_string(),
                // A password in the URL is the coordinator's credential too.
                remote: gantry_shared::git::without_password(&app.remote),
                build_command: app.build_command.clone(),
                artifact: app.artifact.clone(),
                base_image: app.base_image.clone().unwrap_or_default(),
                dockerfile: app.dockerfile.clone().unwrap_or_default(),
                container_port: app.container_port.get().into(),
                health_path: app.health_path.clone(),
                health_timeout_secs: app.health_timeout_secs,
                build_timeout_secs: app.build_timeout_secs,
                deploy_timeout_secs: app.deploy_timeout_secs,
                public_port: app.public_port.map_or(0, |p| p.get().into()),
                drain_timeout_secs: app.drain_timeout_secs,
                fetch_username,
                fetch_token,
            }),
            env: job.env.to_string(),
            env_vars: env.variables.clone().into_iter().collect(),
            secrets: env
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect(),
            branch: job
                .branches
                .iter()
                .map(|b| b.branch.as_str())
                .collect::<Vec<_>>()
                .join(","),
            commit: job.commit.clone(),
            release: job.release.unwrap_or(0),
            image: match job.kind {
                JobKind::Rollback { .. } => job.image.clone(),
                JobKind::Deploy => String::new(),
            },
            keep_images,
            set,
            first_seq: 1,
            put_back: false,
        })
    }

    /// Connected agents' names and the jobs they hold.
    pub fn connected(&self) -> Vec<(AgentName, Vec<JobId>)> {
        self.fleet()
            .sessions
            .values()
            .map(|s| (s.record.name.clone(), s.jobs.iter().copied().collect()))
            .collect()
    }
}

/// `done` with each of its texts redacted: whatever an agent sends is
/// treated as able to carry a secret.
fn redact_finished(redactor: &Redactor, done: Finished) -> Finished {
    Finished {
        state: done.state,
        summary: redactor.redact(done.summary),
        url: redactor.redact(done.url),
        image: redactor.redact(done.image),
        container: redactor.redact(done.container),
    }
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let list: Vec<&str> = items.collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}
