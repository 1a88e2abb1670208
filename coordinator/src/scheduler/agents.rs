//! Agents in the scheduler: a stream registering and the jobs it says it
//! holds reconciled with those it was given, a stream closing, the lease
//! sweep that fails the jobs of lost agents, and revocation.

use std::{collections::BTreeSet, time::Duration};

use gantry_shared::{now_ms, AgentName, JobId};
use tracing::{info, warn};

use super::Scheduler;
use crate::{
    error::Error,
    fleet::{Outbox, Sender, Session},
    job::{
        machine::{self, Event, Outcome, Phase},
        AgentRecord, Approval,
    },
    store::IssuedCert,
};

/// An agent's stream, registered.
pub struct Attach {
    /// What it said of itself.
    pub record: AgentRecord,
    /// The jobs it says it runs.
    pub running: BTreeSet<JobId>,
    /// Where its messages go.
    pub outbox: Outbox,
    /// Fired when the session is dropped, so its reader stops at once.
    pub closed: tokio_util::sync::CancellationToken,
    /// The serial of its certificate (`None`: plaintext).
    pub certificate: Option<String>,
}

impl Scheduler {
    /// Registers an agent's stream; reconciles the jobs it says it holds
    /// with the jobs it was given. Returns the session's id.
    pub(super) async fn attach(&mut self, attach: Attach) -> Result<u64, Error> {
        let Attach {
            record,
            running,
            outbox,
            closed,
            certificate,
        } = attach;
        if record.capacity == 0 {
            return Err(Error::InvalidArgument("capacity must be at least 1".into()));
        }
        // Checked here, where a revocation is applied too: an agent
        // revoked between its certificate check and now is refused.
        if let Some(serial) = &certificate {
            if self
                .store
                .cert(serial)
                .await?
                .is_none_or(|c| c.revoked_ms.is_some())
            {
                return Err(Error::PermissionDenied(format!(
                    "the certificate of agent {} was revoked; enrol it again to reconnect",
                    record.name
                )));
            }
        }
        if let Some(other) = self
            .fleet
            .sessions
            .get(&record.name)
            .filter(|s| s.record.env != record.env)
        {
            return Err(Error::PermissionDenied(format!(
                "agent {} is connected for env {}; an agent name belongs to one environment",
                record.name, other.record.env
            )));
        }
        self.store.write_agent(&record).await?;
        self.fleet.next_session += 1;
        let id = self.fleet.next_session;
        let name = record.name.clone();
        let sender = Sender {
            agent: name.clone(),
            env: record.env.clone(),
            certificate,
        };

        // Jobs given to this agent that it no longer holds were lost with
        // its previous process: fail them, never replay them.
        let mut kept = BTreeSet::new();
        for job_id in self.fleet.jobs_of(&name) {
            let held = self
                .fleet
                .active
                .get(&job_id)
                .is_some_and(|p| p.held_by(&sender));
            let why = if !held {
                // Given to a session of this name that is gone for good
                // (its certificate revoked, or the name now serving another
                // environment): it can never report this job again.
                format!(
                    "agent {name} is now connected for env {} with another certificate; \
                     the session that held this job is gone",
                    record.env
                )
            } else if running.contains(&job_id) {
                kept.insert(job_id);
                continue;
            } else {
                format!("agent {name} restarted and no longer runs this job")
            };
            self.lost(job_id, why).await?;
        }
        // Jobs it holds that are not its own here: a job still queued was
        // assigned just before a crash lost the record of it, so adopt it;
        // anything else (ended, or given to another agent) it must stop.
        for stray in running.difference(&kept).copied().collect::<Vec<_>>() {
            let adoptable = self.live.get(&stray).is_some_and(|job| {
                job.life.phase == Phase::Queued
                    && job.env == record.env
                    && !matches!(job.approval, Approval::Waiting { .. })
            });
            if adoptable {
                self.adopt(stray, &sender).await?;
                kept.insert(stray);
            } else {
                outbox.cancel(stray);
            }
        }
        for job_id in &kept {
            if let Some(job) = self.live.get_mut(job_id) {
                if job.life.cancel_requested {
                    // The cancel may have gone down with the last stream.
                    outbox.cancel(*job_id);
                    job.reason = format!("cancel requested; agent {name} is stopping it");
                } else {
                    job.reason = format!("running on agent {name}");
                }
                self.store.write_job(job).await?;
            }
        }
        self.fleet.lost_since.remove(&name);
        info!(agent = %name, env = %record.env, session = id, held = kept.len(), "agent attached");
        self.fleet.sessions.insert(
            name,
            Session {
                id,
                record,
                jobs: kept,
                outbox,
                last_seen: std::time::Instant::now(),
                draining: false,
                closed,
                certificate: sender.certificate,
            },
        );
        self.place_queued().await?;
        Ok(id)
    }

    /// Takes queued job `id`, which `sender` already runs, as placed on it.
    async fn adopt(&mut self, id: JobId, sender: &Sender) -> Result<(), Error> {
        let ran_before = self.fix_roll(id, &sender.agent).await?;
        let mut job = self.live.remove(&id).expect("checked adoptable");
        let life = machine::advance(&job.life, Event::Placed { ran_before })
            .map(|(life, _)| life)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        job.live(life, format!("assigned to agent {}", sender.agent));
        // It runs there already: only the record of it is made again.
        self.hold(&mut job, 0, sender.certificate.clone());
        self.store.write_job(&job).await?;
        self.fleet.queued.remove(&id);
        self.live.insert(id, job);
        info!(job = %id, agent = %sender.agent, "running job adopted");
        Ok(())
    }

    /// The server working on `id` is lost to it (its agent restarted
    /// without it, or was away past its lease): its part failed.
    async fn lost(&mut self, id: JobId, why: String) -> Result<(), Error> {
        match self
            .advance(id, Event::ServerFailed(Outcome::Failed), why, None)
            .await
        {
            Err(Error::Store(e)) => Err(Error::Store(e)),
            Err(e) => {
                warn!(job = %id, error = %e, "lost job not failed");
                self.fleet.release(id);
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// The agent's stream closed; its jobs get a lease to come back.
    pub(super) async fn detach(&mut self, agent: &AgentName, session: u64) -> Result<(), Error> {
        if self.session(agent, session).is_none() {
            return Ok(());
        }
        let mut gone = self.fleet.sessions.remove(agent).expect("checked above");
        self.tails.server_gone(agent);
        gone.closed.cancel();
        gone.record.last_seen_ms = now_ms() - gone.last_seen.elapsed().as_millis() as i64;
        self.store.write_agent(&gone.record).await?;
        let lease = self.config.agent_lease_secs;
        for job_id in self.fleet.jobs_of(agent) {
            if let Some(job) = self.live.get_mut(&job_id) {
                job.reason =
                    format!("agent {agent} disconnected; waiting up to {lease}s for it to return");
                self.store.write_job(job).await?;
            }
        }
        // The lease runs from the last sign of life, not from when the stream broke.
        self.fleet.lost_since.insert(agent.clone(), gone.last_seen);
        warn!(agent = %agent, session, "agent detached");
        Ok(())
    }

    /// Fails the jobs of agents gone longer than their lease, and drops
    /// streams that went silent. Runs once a second.
    pub(super) async fn sweep(&mut self) -> Result<(), Error> {
        let lease = Duration::from_secs(self.config.agent_lease_secs);
        let silent: Vec<(AgentName, u64)> = self
            .fleet
            .sessions
            .values()
            .filter(|s| s.last_seen.elapsed() > lease)
            .map(|s| (s.record.name.clone(), s.id))
            .collect();
        for (agent, session) in silent {
            warn!(agent = %agent, "no heartbeat within the lease; dropping its stream");
            self.detach(&agent, session).await?;
        }
        let expired: Vec<AgentName> = self
            .fleet
            .lost_since
            .iter()
            .filter(|(_, since)| since.elapsed() > lease)
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in expired {
            for job in self.fleet.jobs_of(&agent) {
                let why = format!(
                    "agent lost: {agent} was unreachable for more than {}s",
                    lease.as_secs()
                );
                self.lost(job, why).await?;
            }
            self.fleet.lost_since.remove(&agent);
        }
        self.place_queued().await
    }

    /// Revokes every certificate of agent `name` and closes its stream.
    pub(super) async fn revoke(&mut self, name: &AgentName) -> Result<Vec<IssuedCert>, Error> {
        if self.store.certs_of(name).await?.is_empty() {
            return Err(Error::UnknownAgent(format!(
                "agent {name} holds no certificate issued by this coordinator"
            )));
        }
        let revoked = self.store.write_revocation(name, now_ms()).await?;
        if revoked.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "every certificate of agent {name} is revoked already"
            )));
        }
        self.cut_off(name).await?;
        info!(agent = %name, certificates = revoked.len(), "agent revoked");
        Ok(revoked)
    }

    /// Closes the stream of agent `name`, whose certificates were revoked
    /// or replaced.
    pub(super) async fn cut_off(&mut self, name: &AgentName) -> Result<(), Error> {
        match self.fleet.sessions.get(name).map(|s| s.id) {
            Some(session) => self.detach(name, session).await,
            None => Ok(()),
        }
    }
}
