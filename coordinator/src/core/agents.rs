//! The agent side of [`Core`]: registering an agent's stream and
//! reconciling the jobs it reports, heartbeats, draining, disconnects, and
//! the lease sweep that fails the jobs of lost agents.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use gantry_shared::{now_ms, AgentName, JobId, JobState};
use tracing::{info, warn};

use super::{names, Core};
use crate::{
    error::Error,
    fleet::{Outbox, Placement, Sender, Session},
    job::{AgentRecord, Approval},
};

impl Core {
    /// Registers an agent's stream; reconciles the jobs it says it holds with
    /// the jobs the coordinator gave it.
    pub fn attach_agent(
        &self,
        record: AgentRecord,
        running: BTreeSet<JobId>,
        outbox: Outbox,
        closed: tokio_util::sync::CancellationToken,
        certificate: Option<&str>,
    ) -> Result<u64, Error> {
        if self.config.environment(&record.env).is_none() {
            return Err(Error::UnknownEnv {
                known: names(self.config.environments.iter().map(|e| e.name().as_str())),
                env: record.env,
            });
        }
        if record.capacity == 0 {
            return Err(Error::InvalidArgument("capacity must be at least 1".into()));
        }
        let mut fleet = self.fleet();
        // Checked under the fleet lock, which a revocation also holds: an
        // agent revoked between its certificate check and now is refused.
        if let Some(serial) = certificate {
            if self
                .store
                .cert(serial)?
                .is_none_or(|c| c.revoked_ms.is_some())
            {
                return Err(Error::PermissionDenied(format!(
                    "the certificate of agent {} was revoked; enrol it again to reconnect",
                    record.name
                )));
            }
        }
        if let Some(other) = fleet
            .sessions
            .get(&record.name)
            .filter(|s| s.record.env != record.env)
        {
            return Err(Error::PermissionDenied(format!(
                "agent {} is connected for env {}; an agent name belongs to one environment",
                record.name, other.record.env
            )));
        }
        self.store.put_agent(&record)?;
        fleet.next_session += 1;
        let id = fleet.next_session;
        let name = record.name.clone();

        // Jobs we gave this agent that it no longer holds were lost with its
        // previous process: fail them, never replay them.
        let mut kept = BTreeSet::new();
        let sender = Sender {
            agent: name.clone(),
            env: record.env.clone(),
            certificate: certificate.map(str::to_owned),
        };
        for job_id in fleet.jobs_of(&name) {
            let held = fleet
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
            self.end_step(&mut fleet, job_id, JobState::Failed, why, None);
        }
        // Jobs it holds that we do not consider its own: a job still queued
        // here was assigned just before a crash lost the record of it, so
        // adopt it; anything else (ended, or given to another agent) it must stop.
        for stray in running.difference(&kept).copied().collect::<Vec<_>>() {
            match self.store.job(stray)? {
                Some(mut job)
                    if job.state == JobState::Queued
                        && job.env == record.env
                        && !matches!(job.approval, Approval::Waiting { .. }) =>
                {
                    job.transition(JobState::Assigned, format!("assigned to agent {name}"));
                    job.agent = Some(name.clone());
                    job.certificate = sender.certificate.clone();
                    self.store.put_job(&job)?;
                    fleet.queued.remove(&stray);
                    let placement = Placement {
                        app: job.app,
                        env: job.env,
                        agent: name.clone(),
                        certificate: sender.certificate.clone(),
                    };
                    fleet.active.insert(stray, placement);
                    kept.insert(stray);
                }
                _ => outbox.cancel(stray),
            }
        }
        for job_id in &kept {
            if let Ok(mut job) = self.job(*job_id) {
                if job.cancel_requested {
                    // The cancel may have gone down with the last stream.
                    outbox.cancel(*job_id);
                    job.reason = format!("cancel requested; agent {name} is stopping it");
                } else {
                    job.reason = format!("running on agent {name}");
                }
                let _ = self.store.put_job(&job);
            }
        }
        fleet.lost_since.remove(&name);
        info!(agent = %name, env = %record.env, session = id, held = kept.len(), "agent attached");
        fleet.sessions.insert(
            name,
            Session {
                id,
                record,
                jobs: kept,
                outbox,
                last_seen: Instant::now(),
                draining: false,
                closed,
                certificate: sender.certificate,
            },
        );
        self.place_queued(&mut fleet);
        Ok(id)
    }

    /// Notes that the agent is alive.
    pub fn touch(&self, agent: &AgentName, session: u64) {
        if let Some(s) = self
            .fleet()
            .sessions
            .get_mut(agent)
            .filter(|s| s.id == session)
        {
            s.last_seen = Instant::now();
        }
    }

    /// The agent is shutting down: it finishes what it holds but gets nothing new.
    pub fn drain_agent(&self, agent: &AgentName, session: u64) {
        if let Some(s) = self
            .fleet()
            .sessions
            .get_mut(agent)
            .filter(|s| s.id == session)
        {
            s.draining = true;
            info!(agent = %agent, "agent draining");
        }
    }

    /// The agent's stream closed; its jobs get a lease to come back.
    pub fn detach_agent(&self, agent: &AgentName, session: u64) {
        let mut fleet = self.fleet();
        if fleet.sessions.get(agent).is_none_or(|s| s.id != session) {
            return;
        }
        let mut gone = fleet.sessions.remove(agent).expect("checked above");
        self.tails.server_gone(agent);
        gone.closed.cancel();
        gone.record.last_seen_ms = now_ms() - gone.last_seen.elapsed().as_millis() as i64;
        let _ = self.store.put_agent(&gone.record);
        let lease = self.config.agent_lease_secs;
        for job_id in fleet.jobs_of(agent) {
            if let Ok(mut job) = self.job(job_id) {
                job.reason =
                    format!("agent {agent} disconnected; waiting up to {lease}s for it to return");
                let _ = self.store.put_job(&job);
            }
        }
        // The lease runs from the last sign of life, not from when the stream broke.
        fleet.lost_since.insert(agent.clone(), gone.last_seen);
        warn!(agent = %agent, session, "agent detached");
    }

    /// Fails the jobs of agents gone longer than their lease, and drops
    /// streams that went silent. Called once a second.
    pub fn sweep(&self) {
        let lease = Duration::from_secs(self.config.agent_lease_secs);
        let fleet = self.fleet();
        let silent: Vec<(AgentName, u64)> = fleet
            .sessions
            .values()
            .filter(|s| s.last_seen.elapsed() > lease)
            .map(|s| (s.record.name.clone(), s.id))
            .collect();
        drop(fleet);
        for (agent, session) in silent {
            warn!(agent = %agent, "no heartbeat within the lease; dropping its stream");
            self.detach_agent(&agent, session);
        }
        let mut fleet = self.fleet();
        let expired: Vec<AgentName> = fleet
            .lost_since
            .iter()
            .filter(|(_, since)| since.elapsed() > lease)
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in expired {
            for job in fleet.jobs_of(&agent) {
                let reason = format!(
                    "agent lost: {agent} was unreachable for more than {}s",
                    lease.as_secs()
                );
                self.end_step(&mut fleet, job, JobState::Failed, reason, None);
            }
            fleet.lost_since.remove(&agent);
        }
        self.place_queued(&mut fleet);
    }
}
