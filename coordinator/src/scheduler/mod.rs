//! The scheduler: one task that owns the fleet (connected agents and what
//! they hold), every job that has not ended, and placement. The services
//! send it typed [`Command`]s and await the answer, so nothing about
//! scheduling is shared behind a lock, and every change to a job goes
//! through the job machine ([`crate::job::machine::advance`]) here, in
//! [`jobs`].
//!
//! The scheduler writes each change to the store as it makes it, and
//! answers a command once what the command wrote is durable; it goes on
//! with the next command meanwhile (see [`crate::store`] on why). What it
//! sends agents goes at once. A store error stops it: its memory may then
//! be ahead of the disk, and it does not run on a state the disk does not
//! hold. The process exits (see `crate::serve`) and a restart reads the
//! durable state back.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{future::BoxFuture, stream::FuturesUnordered, StreamExt};
use gantry_shared::{config::CoordinatorConfig, AgentName, EnvName, JobId, JobState};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

mod agents;
mod jobs;
mod requests;
mod spec;
mod writes;

pub use agents::Attach;
pub use requests::Report;

use crate::{
    auth::Principal,
    error::Error,
    fleet::{Fleet, Outbox, Placement, Sender},
    hub::LogHub,
    job::JobRecord,
    store::{IssuedCert, JobQuery, SharedStore, StoreError},
    tail::Tails,
};

/// Commands waiting for the scheduler. Each is handled in microseconds; a
/// full queue holds its senders back rather than growing.
const QUEUE: usize = 1024;

/// How often lost agents are looked for: the lease is checked to the second,
/// so a lost agent's job fails within a second of its lease running out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Where a command's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// What the scheduler is asked to do.
pub enum Command {
    /// Queue a new job (stored by no one yet).
    Enqueue(Box<JobRecord>, Reply<JobRecord>),
    /// An operator cancels a job.
    Cancel(JobId, Reply<JobRecord>),
    /// An approver decides on a job.
    Decide {
        /// The job.
        id: JobId,
        /// Who decides.
        who: Principal,
        /// Approve (or reject).
        approve: bool,
        /// Their comment.
        comment: String,
        /// The answer.
        reply: Reply<JobRecord>,
    },
    /// An agent's stream registered.
    Attach(Box<Attach>, Reply<u64>),
    /// An agent's session said something.
    Touch(AgentName, u64),
    /// An agent's session is shutting down.
    Drain(AgentName, u64),
    /// An agent's stream closed.
    Detach(AgentName, u64),
    /// An agent reported on a job.
    Report(Sender, JobId, Report, Reply<()>),
    /// Close the stream of an agent whose certificates were replaced.
    CutOff(AgentName),
    /// Revoke an agent's certificates and close its stream.
    Revoke(AgentName, Reply<Vec<IssuedCert>>),
    /// The connected agents and the jobs they hold.
    Connected(oneshot::Sender<Vec<(AgentName, Vec<JobId>)>>),
    /// The connected agents of an environment and their outboxes.
    Servers(EnvName, oneshot::Sender<Vec<(AgentName, Outbox)>>),
    /// Answered once every command sent before it is handled: what they
    /// wrote is in the store by then.
    Settled(oneshot::Sender<()>),
}

/// The services' side of the scheduler.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
}

impl Handle {
    /// Sends the command `make` builds and waits for its answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.tell(make(reply)).await?;
        answer.await.map_err(|_| stopped())?
    }

    /// Sends a command that has no answer.
    pub async fn tell(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).await.map_err(|_| stopped())
    }

    /// Asks for something that cannot fail but for the scheduler stopping.
    pub async fn get<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.tell(make(reply)).await?;
        answer.await.map_err(|_| stopped())
    }
}

fn stopped() -> Error {
    Error::Unavailable("the coordinator's scheduler has stopped; the coordinator is exiting".into())
}

/// A scheduler and its commands, to be run by its owner.
pub struct Runner {
    scheduler: Scheduler,
    inbox: mpsc::Receiver<Command>,
    /// The leader's term it schedules in, when coordinators share the
    /// store: it acts only while the term surely holds.
    term: Option<Arc<crate::lead::Term>>,
}

impl Runner {
    /// Schedules only while `term` holds: a coordinator paused past its
    /// lease stops before it sends an agent anything, even before it
    /// learns that another took over.
    pub fn in_term(mut self, term: Arc<crate::lead::Term>) -> Self {
        self.term = Some(term);
        self
    }

    /// Handles commands, and sweeps for lost agents once a second, until
    /// `stop` is cancelled (`Ok`) or a store error stops it (the error).
    /// Commands sent after it stopped are answered `Unavailable`.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), Stopped> {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let scheduler = &mut self.scheduler;
        loop {
            let turn = tokio::select! {
                _ = stop.cancelled() => None,
                Some(synced) = scheduler.waiting.next(), if !scheduler.waiting.is_empty() => {
                    Some(Turn::Synced(synced))
                }
                command = self.inbox.recv() => command.map(Turn::Command),
                _ = tick.tick() => Some(Turn::Sweep),
            };
            if let (Some(term), Some(_)) = (&self.term, &turn) {
                if !term.held() {
                    warn!(
                        epoch = term.epoch(),
                        "the lease may have run out; scheduling stops"
                    );
                    return Err(Stopped(format!(
                        "the lease of epoch {} may have run out",
                        term.epoch()
                    )));
                }
            }
            let outcome = match turn {
                Some(Turn::Command(command)) => scheduler.handle(command).await,
                Some(Turn::Sweep) => scheduler.sweep().await,
                Some(Turn::Synced(synced)) => synced.map_err(Error::Store),
                // Answers still waiting for the disk are given first.
                None => return scheduler.synced().await.map_err(stopping),
            };
            scheduler.settle();
            outcome.map_err(stopping)?;
        }
    }
}

/// What the scheduler does next.
enum Turn {
    /// Handle a command.
    Command(Command),
    /// Look for lost agents.
    Sweep,
    /// Writes became durable (or failed to), and their answers went out.
    Synced(Result<(), StoreError>),
}

fn stopping(e: impl std::fmt::Display) -> Stopped {
    error!(error = %e, "cannot store the scheduler's state; stopping");
    Stopped(e.to_string())
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
#[error("the scheduler stopped: {0}")]
pub struct Stopped(String);

/// The scheduler's state: it alone reads and writes it.
pub struct Scheduler {
    config: Arc<CoordinatorConfig>,
    /// The store, and what was written since the last answer.
    store: writes::Writes,
    /// Answers waiting for their writes to be durable.
    waiting: FuturesUnordered<BoxFuture<'static, Result<(), StoreError>>>,
    hub: LogHub,
    tails: Arc<Tails>,
    fleet: Fleet,
    /// Every job that has not ended, by id: the scheduler's copy is the
    /// one it changes; each change is written to the store.
    live: HashMap<JobId, JobRecord>,
}

impl Scheduler {
    /// Reads back the jobs that had not ended. Active ones wait for their
    /// agent to reconnect for twice its lease: the agent's own patience
    /// before it stops the job itself. An agent of a coordinator that was
    /// paused, and replaced by a standby, first notices the silence after
    /// a lease, then dials the next coordinator.
    pub async fn new(
        config: Arc<CoordinatorConfig>,
        store: SharedStore,
        hub: LogHub,
        tails: Arc<Tails>,
    ) -> Result<Self, Error> {
        let mut fleet = Fleet::default();
        let mut live = HashMap::new();
        let now = Instant::now();
        let mut store = writes::Writes::new(store);
        let unended = JobQuery {
            unended: true,
            ..JobQuery::default()
        };
        for mut job in store.jobs(&unended).await? {
            if job.state == JobState::Queued {
                fleet.queued.insert(job.id);
            } else {
                let agent = job.agent.clone().expect("active jobs have an agent");
                job.reason = format!(
                    "the coordinator restarted; waiting up to {}s for agent {agent} to reconnect",
                    2 * config.agent_lease_secs
                );
                store.write_job(&job).await?;
                // The sweep fails it once a lease has passed since then.
                let lease = Duration::from_secs(config.agent_lease_secs);
                fleet.lost_since.insert(agent.clone(), now + lease);
                let placement = Placement::of(&job, agent, job.certificate.clone());
                fleet.active.insert(job.id, placement);
            }
            live.insert(job.id, job);
        }
        if let Some(written) = store.take() {
            written.await?;
        }
        info!(
            queued = fleet.queued.len(),
            active = fleet.active.len(),
            "state read back"
        );
        Ok(Self {
            config,
            store,
            waiting: FuturesUnordered::new(),
            hub,
            tails,
            fleet,
            live,
        })
    }

    /// The scheduler's handle, and what runs it (see [`Runner::run`]).
    pub fn start(self) -> (Handle, Runner) {
        let (commands, inbox) = mpsc::channel(QUEUE);
        (
            Handle { commands },
            Runner {
                scheduler: self,
                inbox,
                term: None,
            },
        )
    }

    /// Handles one command; only a store error is returned (the caller's
    /// own errors are answered to it).
    async fn handle(&mut self, command: Command) -> Result<(), Error> {
        match command {
            Command::Enqueue(job, reply) => {
                let queued = self.enqueue(*job).await;
                self.answer(reply, queued)
            }
            Command::Cancel(id, reply) => {
                let cancelled = self.cancel(id).await;
                self.answer(reply, cancelled)
            }
            Command::Decide {
                id,
                who,
                approve,
                comment,
                reply,
            } => {
                let decided = self.decide(id, &who, approve, comment).await;
                self.answer(reply, decided)
            }
            Command::Attach(attach, reply) => {
                let attached = self.attach(*attach).await;
                self.answer(reply, attached)
            }
            Command::Touch(agent, session) => {
                if let Some(s) = self.session(&agent, session) {
                    s.last_seen = Instant::now();
                }
                Ok(())
            }
            Command::Drain(agent, session) => {
                if let Some(s) = self.session(&agent, session) {
                    s.draining = true;
                    info!(agent = %agent, "agent draining");
                }
                Ok(())
            }
            Command::Detach(agent, session) => self.detach(&agent, session).await,
            Command::Report(sender, id, report, reply) => {
                let applied = self.report(&sender, id, report).await;
                self.answer(reply, applied)
            }
            Command::Revoke(name, reply) => {
                let revoked = self.revoke(&name).await;
                self.answer(reply, revoked)
            }
            Command::CutOff(name) => self.cut_off(&name).await,
            Command::Settled(reply) => {
                let _ = reply.send(());
                Ok(())
            }
            Command::Connected(reply) => {
                let connected = self
                    .fleet
                    .sessions
                    .values()
                    .map(|s| (s.record.name.clone(), s.jobs.iter().copied().collect()))
                    .collect();
                let _ = reply.send(connected);
                Ok(())
            }
            Command::Servers(env, reply) => {
                let servers = self
                    .fleet
                    .sessions
                    .values()
                    .filter(|s| s.record.env == env)
                    .map(|s| (s.record.name.clone(), s.outbox.clone()))
                    .collect();
                let _ = reply.send(servers);
                Ok(())
            }
        }
    }

    fn session(&mut self, agent: &AgentName, session: u64) -> Option<&mut crate::fleet::Session> {
        self.fleet
            .sessions
            .get_mut(agent)
            .filter(|s| s.id == session)
    }

    /// The ids of the queued jobs, oldest first.
    fn queued(&self) -> BTreeSet<JobId> {
        self.fleet.queued.clone()
    }
}

impl Scheduler {
    /// Sends `result` to its asker once what the command wrote is
    /// durable; a store error is also returned, to stop the scheduler.
    fn answer<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        result: Result<T, Error>,
    ) -> Result<(), Error> {
        if let Err(Error::Store(e)) = result {
            let message = e.to_string();
            let _ = reply.send(Err(Error::Store(e)));
            return Err(Error::Unavailable(message));
        }
        match self.store.take() {
            None => {
                let _ = reply.send(result);
            }
            Some(written) => self.waiting.push(Box::pin(async move {
                written.await?;
                let _ = reply.send(result);
                Ok(())
            })),
        }
        Ok(())
    }

    /// Watches what a command that answers nobody (or the sweep) wrote, so
    /// that a failed commit stops the scheduler too.
    fn settle(&mut self) {
        if let Some(written) = self.store.take() {
            self.waiting.push(Box::pin(written));
        }
    }

    /// Waits until every answer waiting for the disk has gone out.
    async fn synced(&mut self) -> Result<(), StoreError> {
        self.settle();
        while let Some(synced) = self.waiting.next().await {
            synced?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
