//! The coordinator's domain logic, free of gRPC types: both gRPC services
//! are thin layers over [`Core`]. What concerns one request (deploy
//! checks, branch sets, releases, trust, tails) is done here; every change
//! to a job or the fleet is a command to the [`scheduler`](crate::scheduler),
//! the one owner of scheduling state.

use std::sync::{Arc, Mutex};

use gantry_shared::{
    config::CoordinatorConfig,
    messages::{Finished, JobEvent, LogLine},
    AgentName, JobId, Redactor,
};

mod agents;
mod approval;
mod audit;
mod branches;
mod deploy;
mod logs;
mod releases;
mod trust;

pub use audit::{AuditPage, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE};
pub use deploy::BranchRequest;

use crate::{
    auth::Auth,
    error::Error,
    fleet::Sender,
    hub::LogHub,
    job::JobRecord,
    scheduler::{self, Command, Report, Scheduler},
    store::{Durable, SharedStore},
    tail::Tails,
    trust::Authority,
};

/// The coordinator's state and behaviour, shared by its services.
pub struct Core {
    /// The configuration it started with.
    pub config: Arc<CoordinatorConfig>,
    /// Durable state.
    pub store: SharedStore,
    /// Live log fan-out.
    pub hub: LogHub,
    /// Open `gantry logs --app --env` streams.
    pub tails: Arc<Tails>,
    /// The owner of the fleet, the queue and every job that has not ended.
    scheduler: scheduler::Handle,
    /// What runs the scheduler, until `serve` takes it to supervise.
    runner: Mutex<Option<scheduler::Runner>>,
    mirrors: branches::MirrorLocks,
    /// Operators' tokens and rates.
    pub auth: Auth,
    /// The CA that enrols agents; `None` when serving plaintext.
    pub authority: Option<Authority>,
}

impl Core {
    /// Builds the core over `store`, with its scheduler, which reads back
    /// queued and active jobs (`serve` runs it: [`Core::take_scheduler`]).
    pub async fn new(
        config: Arc<CoordinatorConfig>,
        store: SharedStore,
        authority: Option<Authority>,
    ) -> Result<Arc<Self>, Error> {
        let hub = LogHub::default();
        let tails = Arc::new(Tails::default());
        let scheduler =
            Scheduler::new(config.clone(), store.clone(), hub.clone(), tails.clone()).await?;
        let snapshots = vec![
            store
                .put_config_snapshot("apps", format!("{:?}", config.apps))
                .await?,
            store
                .put_config_snapshot("environments", format!("{:?}", config.environments))
                .await?,
        ];
        Durable::all(snapshots).await?;
        let (scheduler, runner) = scheduler.start();
        Ok(Arc::new(Self {
            auth: Auth::new(&config),
            authority,
            config,
            store,
            hub,
            tails,
            scheduler,
            runner: Mutex::new(Some(runner)),
            mirrors: Default::default(),
        }))
    }

    /// What runs the scheduler, for `serve` to run and supervise (once).
    pub fn take_scheduler(&self) -> Option<scheduler::Runner> {
        self.runner.lock().expect("runner lock").take()
    }

    /// One job.
    pub async fn job(&self, id: JobId) -> Result<JobRecord, Error> {
        self.store.job(id).await?.ok_or(Error::UnknownJob(id))
    }

    /// Cancels a job: at once if it waits, through its agent if it runs.
    pub async fn cancel(&self, id: JobId) -> Result<JobRecord, Error> {
        self.scheduler
            .ask(|reply| Command::Cancel(id, reply))
            .await?;
        self.job(id).await
    }

    /// Applies a run of a job's log an agent's session sent: stores its
    /// lines (each once), then applies the stage each flagged line opens
    /// and the end the last may carry, in order, every time they are sent
    /// (applying one again changes nothing, and a resend after a crash
    /// between storing and applying must still apply it). Resolves once
    /// what it stored is durable; the scheduler answers only once what a
    /// report changed is. Lines about a job that `sender` never ran
    /// (another agent's, or one of the same name in another environment or
    /// with another certificate) are refused with [`Error::NotHolder`] and
    /// change nothing.
    pub async fn apply_event(&self, sender: &Sender, event: JobEvent) -> Result<Durable, Error> {
        let id = event.job;
        let stages = event.lines.iter().filter(|l| l.opens_stage);
        let mut reports: Vec<(u64, Report)> = stages
            .filter_map(|l| Some((l.seq, Report::Stage(l.stage?))))
            .collect();
        if let Some(done) = event.finished {
            let done = redact_finished(&self.redactor_of(&sender.env), done);
            reports.push((
                event.lines.last().map_or(0, |l| l.seq),
                Report::Finished(done),
            ));
        }
        let durable = self.append_lines(sender, id, event.lines).await?;
        for (seq, report) in reports {
            let asked = self
                .scheduler
                .ask(|reply| Command::Report(sender.clone(), id, report, reply))
                .await;
            match asked {
                Ok(()) => {}
                Err(e @ Error::Unavailable(_)) => return Err(e),
                Err(Error::Store(e)) if e.is_failure() => return Err(e.into()),
                // Its lines are the job's log still (a job that ended while
                // its agent was away); what they report no longer applies.
                Err(e) => tracing::warn!(job = %id, seq, agent = %sender.agent, error = %e,
                    "a job's line reported what cannot be applied"),
            }
        }
        Ok(durable)
    }

    /// Stores lines of `id`'s log (each once, capped at the line limit,
    /// its environment's secrets replaced by `***` even if an agent missed
    /// one, without the stage flag, which the job's record keeps) and hands
    /// the new ones to its followers. Lines count only from a session that
    /// ran the job (holds it, or held it when it ended while the agent was
    /// away: they are still its log).
    async fn append_lines(
        &self,
        sender: &Sender,
        id: JobId,
        lines: Vec<LogLine>,
    ) -> Result<Durable, Error> {
        let ran = |job: &Option<JobRecord>| {
            job.as_ref().is_some_and(|j| {
                j.agent
                    .as_ref()
                    .is_some_and(|a| sender.is(a, &j.env, j.certificate.as_deref()))
            })
        };
        let mut job = self.store.job(id).await?;
        if !ran(&job) {
            // The scheduler sends a server its part before it records
            // the job, and a fast agent's first line can come before the
            // record (a database's round trip): once the scheduler has
            // handled what it had, the record is written.
            self.scheduler.get(Command::Settled).await?;
            job = self.store.job(id).await?;
        }
        if !ran(&job) {
            return Err(Error::NotHolder(format!(
                "agent {} of env {} sent an event for job {id}, which it does not hold",
                sender.agent, sender.env
            )));
        }
        let redactor = self.redactor_of(&sender.env);
        let lines = lines
            .into_iter()
            .map(|line| LogLine {
                text: gantry_shared::limits::cap_log_line(redactor.redact(line.text)),
                opens_stage: false,
                ..line
            })
            .collect();
        let (run, durable) = self.store.append_logs(id, lines).await?;
        if let Some(run) = run {
            self.hub.publish(id, run);
        }
        Ok(durable)
    }

    /// The redactor of `env`'s secrets.
    pub fn redactor_of(&self, env: &gantry_shared::EnvName) -> Redactor {
        self.config
            .environment(env)
            .map(|e| e.redactor())
            .unwrap_or_default()
    }

    /// Connected agents' names and the jobs they hold.
    pub async fn connected(&self) -> Result<Vec<(AgentName, Vec<JobId>)>, Error> {
        self.scheduler.get(Command::Connected).await
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
