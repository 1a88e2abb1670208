//! A job's moves in the scheduler: [`Scheduler::advance`] is the one place
//! a job changes, through the job machine, carrying out the effects it
//! returns (send a server its part, stop it, record the release, close the
//! job); and placement of queued jobs.

use gantry_shared::{messages::Finished, AgentName, JobId, JobState};
use tracing::info;

use super::{spec::StepKind, Scheduler};
use crate::{
    error::Error,
    fleet::{Decision, Placement},
    job::{
        machine::{self, Effect, Event, Outcome, Phase, Server},
        JobRecord, RollStep,
    },
    release::{ReleaseRecord, ServerRelease},
};

impl Scheduler {
    /// Moves job `id` on `event` through the machine: records what the
    /// event carried (`why`, for people; `done`, a server's report), takes
    /// on the machine's next state, carries out its effects, and stores
    /// the job. Refused, changing nothing, when the machine refuses.
    pub(super) async fn advance(
        &mut self,
        id: JobId,
        event: Event,
        why: String,
        done: Option<Finished>,
    ) -> Result<(), Error> {
        let job = self.live.get(&id).ok_or(Error::UnknownJob(id))?;
        let (life, effects) = machine::advance(&job.life, event.clone())
            .map_err(|e| Error::FailedPrecondition(format!("job {id}: {e}")))?;
        let mut job = self.live.remove(&id).expect("looked up above");
        let before = job.life.clone();
        if matches!(
            event,
            Event::ServerDone | Event::ServerFailed(_) | Event::NotSent
        ) {
            self.fleet.release(id);
        }
        self.record(&mut job, &before, &life, &event, &why, done)
            .await?;
        let mut reason = why;
        if life.phase == Phase::Queued && !before.servers.is_empty() {
            // Its first server never got it: placed again later.
            job.roll.clear();
            job.release = None;
            job.agent = None;
            reason = "waiting to be placed".into();
        }
        job.live(life, reason);
        let mut then = None;
        let mut closed = false;
        for effect in effects {
            match effect {
                Effect::Deploy { at } | Effect::PutBack { at } => {
                    let kind = match effect {
                        Effect::Deploy { .. } => StepKind::Deploy,
                        _ => StepKind::PutBack,
                    };
                    if self.send_step(&mut job, at, kind).await? {
                        job.reason = step_reason(&job, at, kind);
                    } else {
                        let agent = &job.roll[at].agent;
                        then = Some((
                            Event::NotSent,
                            format!(
                                "agent {agent} could not take its part of the roll (not connected)"
                            ),
                        ));
                    }
                }
                Effect::StopServer { at } => {
                    let agent = job.roll[at].agent.clone();
                    match self.fleet.sessions.get(&agent) {
                        Some(session) if self.fleet.active.contains_key(&id) => {
                            session.outbox.cancel(id);
                            job.reason = format!("cancel requested; agent {agent} is stopping it");
                        }
                        _ => {
                            then = Some((
                                Event::ServerFailed(Outcome::Cancelled),
                                format!(
                                    "cancelled by operator while agent {agent} was away; \
                                     it stops the job when it reconnects"
                                ),
                            ))
                        }
                    }
                }
                Effect::Release => self.release(&job).await?,
                Effect::Close => closed = true,
            }
        }
        if closed {
            job.reason = end_reason(&job);
            info!(job = %id, app = %job.app, env = %job.env, state = job.state.as_str(), reason = %job.reason, "job ended");
        }
        self.store.write_job(&job).await?;
        match job.life.phase {
            Phase::Queued | Phase::AwaitingApproval => self.fleet.queued.insert(id),
            _ => self.fleet.queued.remove(&id),
        };
        if closed {
            self.fleet.release(id);
            self.hub.end(id);
        } else {
            self.live.insert(id, job);
        }
        match then {
            // The follow-up of a failed act: the same way through the machine.
            Some((event, why)) => Box::pin(self.advance(id, event, why, None)).await,
            None => Ok(()),
        }
    }

    /// Keeps what `event` carried in `job`'s record, and notes for people
    /// what happened to each server whose place in the roll changed.
    async fn record(
        &mut self,
        job: &mut JobRecord,
        before: &machine::Job,
        after: &machine::Job,
        event: &Event,
        why: &str,
        done: Option<Finished>,
    ) -> Result<(), Error> {
        if let (Event::ServerDone, Some(done)) = (event, done) {
            match before.phase {
                Phase::Rolling { at, .. } => {
                    job.roll[at].switched = Some(ServerRelease {
                        agent: job.roll[at].agent.clone(),
                        container: done.container.clone(),
                        url: done.url.clone(),
                        image: done.image.clone(),
                    });
                    job.url = done.url;
                    if !done.image.is_empty() {
                        job.image = done.image;
                    }
                    job.container = done.container;
                }
                Phase::PuttingBack { at, .. } => self.update_current_server(job, at, &done).await?,
                _ => {}
            }
        }
        let stops = matches!(before.phase, Phase::Rolling { .. })
            && match after.phase {
                Phase::PuttingBack { .. } => true,
                Phase::Ended(outcome) => outcome != Outcome::Succeeded,
                _ => false,
            };
        if stops {
            job.stopped = Some(match event {
                Event::ServerDone => "cancelled by operator between two servers".to_owned(),
                _ => why.to_owned(),
            });
        }
        for (at, (was, now)) in before.servers.iter().zip(&after.servers).enumerate() {
            if was == now {
                continue;
            }
            let note = match now {
                Server::Failed => match event {
                    Event::ServerFailed(Outcome::Cancelled) => "cancelled".to_owned(),
                    _ => "failed".to_owned(),
                },
                Server::PutBack => match self.release_before(job).await? {
                    Some(n) => format!("put back on release {n}"),
                    None => "put back on the release before".to_owned(),
                },
                Server::NotPutBack if matches!(event, Event::NotSent) => {
                    "could not be put back: its agent is not connected".to_owned()
                }
                Server::NotPutBack => format!("could not be put back: {why}"),
                Server::KeepsNew => "keeps the new release: it ran no earlier one".to_owned(),
                Server::Pending | Server::Switched => continue,
            };
            job.roll[at].put_back = Some(note);
        }
        Ok(())
    }

    /// The number of the release `job` would replace (not released, so
    /// the newest there is).
    async fn release_before(&mut self, job: &JobRecord) -> Result<Option<u64>, Error> {
        let current = self.store.current_release(&job.app, &job.env).await?;
        Ok(current.map(|r| r.number))
    }

    /// Records the release a succeeded job became: every switched server.
    async fn release(&mut self, job: &JobRecord) -> Result<(), Error> {
        let Some(number) = job.release else {
            return Ok(());
        };
        let servers = job.roll.iter().filter_map(|s| s.switched.clone()).collect();
        let release = ReleaseRecord::from_job(job, number, servers);
        self.store.write_release(&release).await?;
        info!(job = %job.id, app = %job.app, env = %job.env, release = number, "released");
        Ok(())
    }

    /// A put-back on server `at` ran a new container: the current release
    /// now runs there.
    async fn update_current_server(
        &mut self,
        job: &JobRecord,
        at: usize,
        done: &Finished,
    ) -> Result<(), Error> {
        let Some(mut current) = self.store.current_release(&job.app, &job.env).await? else {
            return Ok(());
        };
        let agent = &job.roll[at].agent;
        for server in current.servers.iter_mut().filter(|s| &s.agent == agent) {
            server.container = done.container.clone();
            server.url = done.url.clone();
            server.image = done.image.clone();
        }
        self.store.write_release(&current).await?;
        Ok(())
    }

    /// Places every queued job that can run now, and records why the
    /// others wait.
    pub(super) async fn place_queued(&mut self) -> Result<(), Error> {
        for id in self.queued() {
            let Some(job) = self.live.get(&id) else {
                continue;
            };
            if job.life.phase != Phase::Queued {
                continue;
            }
            match self.fleet.decide(job) {
                Decision::Wait(reason) => {
                    if job.reason != reason {
                        let job = self.live.get_mut(&id).expect("looked up above");
                        job.reason = reason;
                        self.store.write_job(job).await?;
                    }
                }
                Decision::Assign(agent) => self.place(id, &agent).await?,
            }
        }
        Ok(())
    }

    /// Places queued job `id` with `first` as the first server of its roll.
    async fn place(&mut self, id: JobId, first: &AgentName) -> Result<(), Error> {
        let ran_before = self.fix_roll(id, first).await?;
        self.advance(id, Event::Placed { ran_before }, String::new(), None)
            .await?;
        if let Some(job) = self.live.get(&id).filter(|j| j.state == JobState::Assigned) {
            info!(job = %id, app = %job.app, env = %job.env, agent = %first, servers = job.roll.len(), "job assigned");
        }
        Ok(())
    }

    /// Fixes queued job `id`'s release number and roll order (`first`, then
    /// the other connected agents of its environment by name); returns for
    /// each server whether it ran the release before.
    pub(super) async fn fix_roll(
        &mut self,
        id: JobId,
        first: &AgentName,
    ) -> Result<Vec<bool>, Error> {
        let job = self.live.get(&id).ok_or(Error::UnknownJob(id))?;
        let releases = self.store.releases(&job.app, &job.env, None).await?;
        let mut others: Vec<AgentName> = self
            .fleet
            .sessions
            .values()
            .filter(|s| s.record.env == job.env && !s.draining && &s.record.name != first)
            .map(|s| s.record.name.clone())
            .collect();
        others.sort();
        let roll: Vec<RollStep> = std::iter::once(first.clone())
            .chain(others)
            .map(|agent| RollStep {
                agent,
                switched: None,
                put_back: None,
            })
            .collect();
        let current = releases.first();
        let ran_before = roll
            .iter()
            .map(|s| current.is_some_and(|r| r.servers.iter().any(|r| r.agent == s.agent)))
            .collect();
        let job = self.live.get_mut(&id).expect("looked up above");
        // One job per (app, env) is active, so the next number is this
        // job's; it is kept only if the job succeeds.
        job.release = Some(current.map_or(1, |r| r.number + 1));
        job.roll = roll;
        Ok(ran_before)
    }

    /// Whether job `id` has not ended, or why `action` cannot be done to it.
    pub(super) async fn live_job(&mut self, id: JobId, action: &str) -> Result<(), Error> {
        if self.live.contains_key(&id) {
            return Ok(());
        }
        let job = self.job(id).await?;
        Err(Error::FailedPrecondition(format!(
            "job {id} already ended ({}); {action}",
            job.state.as_str()
        )))
    }

    /// One job, as stored.
    pub(super) async fn job(&mut self, id: JobId) -> Result<JobRecord, Error> {
        match self.live.get(&id) {
            Some(job) => Ok(job.clone()),
            None => self.store.job(id).await?.ok_or(Error::UnknownJob(id)),
        }
    }

    /// Registers that server `at` of `job` holds it now.
    pub(super) fn hold(&mut self, job: &mut JobRecord, at: usize, certificate: Option<String>) {
        let agent = job.roll[at].agent.clone();
        if let Some(session) = self.fleet.sessions.get_mut(&agent) {
            session.jobs.insert(job.id);
        }
        job.agent = Some(agent.clone());
        job.certificate = certificate;
        let placement = Placement::of(job, agent, job.certificate.clone());
        self.fleet.active.insert(job.id, placement);
    }
}

/// What a job that was just sent to server `at` waits for.
fn step_reason(job: &JobRecord, at: usize, kind: StepKind) -> String {
    let agent = &job.roll[at].agent;
    let servers = job.roll.len();
    match (kind, at, servers) {
        (StepKind::PutBack, ..) => format!("putting {agent} back on the release before"),
        (StepKind::Deploy, 0, 1) => format!("assigned to agent {agent}"),
        (StepKind::Deploy, 0, n) => format!("assigned to agent {agent}, first of {n} servers"),
        (StepKind::Deploy, at, n) => format!("{at} of {n} servers switched; deploying to {agent}"),
    }
}

/// How an ended job reads: why it ended, and, if servers were put back,
/// what happened to each server the roll stopped on.
fn end_reason(job: &JobRecord) -> String {
    let handled = job
        .life
        .servers
        .iter()
        .any(|s| matches!(s, Server::PutBack | Server::NotPutBack | Server::KeepsNew));
    match (&job.stopped, handled) {
        (Some(why), true) => {
            let servers: Vec<String> = job
                .roll
                .iter()
                .filter(|s| s.put_back.is_some())
                .map(RollStep::describe)
                .collect();
            format!("{why}; {}", servers.join(", "))
        }
        _ => job.reason.clone(),
    }
}
