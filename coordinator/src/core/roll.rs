//! Rolling a job over an environment's servers, one at a time. Each server
//! runs the whole deploy in turn; when one fails (or is cancelled, or its
//! agent is lost), the roll stops and every server already switched is put
//! back on the release before, so an environment never stays half on the
//! new release. One job, one log: each server continues the log's sequence.

use gantry_shared::{proto, AgentName, JobId, JobState};
use tracing::{info, warn};

use super::Core;
use crate::{
    fleet::{Fleet, Placement},
    job::{JobRecord, RollStep},
    release::{retained_images, ServerRelease},
};

/// What an assignment asks of a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum StepKind {
    /// Deploy the job's release.
    Deploy,
    /// Put the release before back, after a later server failed.
    PutBack,
}

impl Core {
    /// The roll order for a job placed on `first`: it, then the other
    /// connected agents of the environment by name.
    pub(super) fn roll_order(
        &self,
        fleet: &Fleet,
        job: &JobRecord,
        first: &AgentName,
    ) -> Vec<RollStep> {
        let mut others: Vec<AgentName> = fleet
            .sessions
            .values()
            .filter(|s| s.record.env == job.env && !s.draining && &s.record.name != first)
            .map(|s| s.record.name.clone())
            .collect();
        others.sort();
        std::iter::once(first.clone())
            .chain(others)
            .map(|agent| RollStep {
                agent,
                switched: None,
                put_back: None,
            })
            .collect()
    }

    /// Pushes the job's current step to `agent`; false if it cannot be sent
    /// (not connected, or its queue is full).
    pub(super) fn assign_step(
        &self,
        fleet: &mut Fleet,
        job: &mut JobRecord,
        agent: &AgentName,
        kind: StepKind,
    ) -> bool {
        let Ok(releases) = self.store.releases(&job.app, &job.env) else {
            return false;
        };
        let Some(mut spec) = self.job_spec(job, &releases) else {
            return false;
        };
        spec.first_seq = self.store.last_seq(job.id).unwrap_or(0) + 1;
        if let (StepKind::Deploy, Some(to)) = (kind, job.kind.rollback_to()) {
            if let Some(target) = releases.iter().find(|r| r.number == to) {
                spec.image = target.image_on(agent).to_owned();
            }
        }
        if kind == StepKind::PutBack {
            // Not released, so the newest release is the one before.
            let Some(before) = releases.first() else {
                return false;
            };
            spec.put_back = true;
            spec.image = before.image_on(agent).to_owned();
            spec.release = before.number;
            spec.set = None;
            let keep = self.config.app(&job.app).map_or(1, |a| a.keep_releases);
            spec.keep_images = retained_images(&releases, keep);
        }
        let Some(session) = fleet
            .sessions
            .get_mut(agent)
            .filter(|s| s.record.env == job.env && s.outbox.capacity() > 0)
        else {
            return false;
        };
        let msg = proto::coordinator_message::Body::Assign(spec);
        if session
            .outbox
            .try_send(Ok(proto::CoordinatorMessage { body: Some(msg) }))
            .is_err()
        {
            return false;
        }
        session.jobs.insert(job.id);
        job.agent = Some(agent.clone());
        job.certificate = session.certificate.clone();
        fleet.active.insert(
            job.id,
            Placement {
                app: job.app.clone(),
                env: job.env.clone(),
                agent: agent.clone(),
                certificate: job.certificate.clone(),
            },
        );
        info!(job = %job.id, app = %job.app, env = %job.env, agent = %agent, ?kind, "step assigned");
        true
    }

    /// The server working on `id` ended its step in `state`: go on to the
    /// next server, put back the servers already switched, or end the job.
    pub(super) fn end_step(
        &self,
        fleet: &mut Fleet,
        id: JobId,
        state: JobState,
        reason: String,
        done: Option<proto::JobFinished>,
    ) {
        fleet.release(id);
        let Ok(mut job) = self.job(id) else { return };
        if job.state.is_terminal() {
            return;
        }
        let step = job.step;
        if job.putting_back.is_some() {
            let what = match (state, self.store.current_release(&job.app, &job.env)) {
                (JobState::Succeeded, Ok(Some(before))) => {
                    format!("put back on release {}", before.number)
                }
                _ => format!("could not be put back: {reason}"),
            };
            if state == JobState::Succeeded {
                self.update_current_server(&job, done.as_ref());
            }
            if let Some(s) = job.roll.get_mut(step) {
                s.put_back = Some(what);
            }
            return self.put_back_next(fleet, job);
        }
        if state != JobState::Succeeded || job.roll.len() <= 1 {
            if job.roll.iter().any(|s| s.switched.is_some()) {
                if let Some(s) = job.roll.get_mut(step) {
                    s.put_back = Some(state.as_str().to_owned());
                }
                job.putting_back = Some((state, reason));
                return self.put_back_next(fleet, job);
            }
            return self.finish_locked(fleet, job, state, reason, done);
        }
        let Some(done) = done else { return };
        if let Some(s) = job.roll.get_mut(step) {
            s.switched = Some(ServerRelease {
                agent: s.agent.clone(),
                container: done.container.clone(),
                url: done.url.clone(),
                image: done.image.clone(),
            });
        }
        if step + 1 == job.roll.len() {
            return self.finish_locked(fleet, job, state, reason, Some(done));
        }
        job.image = done.image;
        job.step += 1;
        let next = job.roll[job.step].agent.clone();
        if self.assign_step(fleet, &mut job, &next, StepKind::Deploy) {
            job.reason = format!(
                "{} of {} servers switched; deploying to {next}",
                step + 1,
                job.roll.len()
            );
            let _ = self.store.put_job(&job);
        } else {
            job.putting_back = Some((
                JobState::Failed,
                format!("agent {next} could not take its part of the roll (not connected)"),
            ));
            self.put_back_next(fleet, job);
        }
    }

    /// Puts back the last switched server not yet handled, or ends the job
    /// once none is left.
    fn put_back_next(&self, fleet: &mut Fleet, mut job: JobRecord) {
        while let Some(at) = job
            .roll
            .iter()
            .rposition(|s| s.switched.is_some() && s.put_back.is_none())
        {
            job.step = at;
            let agent = job.roll[at].agent.clone();
            let before = self
                .store
                .current_release(&job.app, &job.env)
                .ok()
                .flatten();
            let ran_before = before
                .as_ref()
                .is_some_and(|r| r.servers.iter().any(|s| s.agent == agent));
            if ran_before && self.assign_step(fleet, &mut job, &agent, StepKind::PutBack) {
                job.reason = format!("putting {agent} back on the release before");
                let _ = self.store.put_job(&job);
                return;
            }
            job.roll[at].put_back = Some(if ran_before {
                "could not be put back: its agent is not connected".into()
            } else {
                "keeps the new release: it ran no earlier one".into()
            });
        }
        let (state, why) = job
            .putting_back
            .clone()
            .unwrap_or((JobState::Failed, "the roll failed".into()));
        let servers: Vec<String> = job
            .roll
            .iter()
            .filter(|s| s.put_back.is_some())
            .map(RollStep::describe)
            .collect();
        let reason = format!("{why}; {}", servers.join(", "));
        warn!(job = %job.id, app = %job.app, env = %job.env, %reason, "roll stopped");
        self.finish_locked(fleet, job, state, reason, None);
    }

    /// A put-back ran a new container: the current release now runs there.
    fn update_current_server(&self, job: &JobRecord, done: Option<&proto::JobFinished>) {
        let (Some(done), Ok(Some(mut current))) =
            (done, self.store.current_release(&job.app, &job.env))
        else {
            return;
        };
        let agent = job.roll[job.step].agent.clone();
        for server in current.servers.iter_mut().filter(|s| s.agent == agent) {
            server.container = done.container.clone();
            server.url = done.url.clone();
            server.image = done.image.clone();
        }
        let _ = self.store.put_release(&current);
    }
}
