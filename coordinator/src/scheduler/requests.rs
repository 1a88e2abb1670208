//! Requests to the scheduler about jobs: queueing (superseding older
//! queued requests), cancelling, approving, and what agents report. Each
//! becomes an event of the job machine, applied in [`Scheduler::advance`].

use gantry_shared::{messages::Finished, JobId, JobState, Stage};
use tracing::info;

use super::Scheduler;
use crate::{
    auth::{Action, Principal},
    error::Error,
    fleet::Sender,
    job::{
        machine::{self, Event, Outcome},
        Approval, JobRecord,
    },
};

/// What an agent reported of a job it holds.
pub enum Report {
    /// It reached a stage.
    Stage(Stage),
    /// It ended its part, with what it says of it (redacted).
    Finished(Finished),
}

impl Scheduler {
    /// Stores a new job, supersedes the older queued requests of its
    /// (app, env), and places what can run.
    pub(super) async fn enqueue(&mut self, mut job: JobRecord) -> Result<JobRecord, Error> {
        if let Some(env) = self
            .config
            .environment(&job.env)
            .filter(|e| !e.approve.is_empty())
        {
            job.approval = Approval::Waiting {
                roles: env.approve.clone(),
            };
            job.life = machine::Job::new(true);
            job.reason = format!(
                "waiting for approval by {} other than {}: gantry approve {}",
                env.approve.join(" or "),
                job.requested_by,
                job.id
            );
        }
        self.store.write_job(&job).await?;
        info!(
            job = %job.id, app = %job.app, env = %job.env, branches = %job.branch_label(),
            commit = %job.commit, by = %job.requested_by, "job queued"
        );
        let id = job.id;
        let older: Vec<JobId> = self
            .queued()
            .into_iter()
            .filter(|o| {
                self.live
                    .get(o)
                    .is_some_and(|o| o.app == job.app && o.env == job.env)
            })
            .collect();
        let reason = format!(
            "superseded by job {id} ({} requested by {})",
            job.branch_label(),
            job.requested_by
        );
        self.live.insert(id, job);
        self.fleet.queued.insert(id);
        for older in older {
            if let Some(o) = self.live.get_mut(&older) {
                o.superseded_by = Some(id);
            }
            self.advance(older, Event::Superseded, reason.clone(), None)
                .await?;
            info!(job = %older, by = %id, "job superseded");
        }
        self.place_queued().await?;
        self.job(id).await
    }

    /// Cancels a job: at once if it waits, through its agent if it runs.
    pub(super) async fn cancel(&mut self, id: JobId) -> Result<JobRecord, Error> {
        self.live_job(id, "nothing to cancel").await?;
        self.advance(
            id,
            Event::CancelRequested,
            "cancelled by operator before it started".into(),
            None,
        )
        .await?;
        info!(job = %id, "cancel requested");
        self.place_queued().await?;
        self.job(id).await
    }

    /// Approves or rejects job `id` as `who`.
    pub(super) async fn decide(
        &mut self,
        id: JobId,
        who: &Principal,
        approve: bool,
        comment: String,
    ) -> Result<JobRecord, Error> {
        let Some(job) = self.live.get(&id) else {
            let job = self.job(id).await?;
            return Err(Error::FailedPrecondition(format!(
                "job {id} is {} already; only a queued deploy can be approved or rejected",
                job.state.as_str()
            )));
        };
        if job.state != JobState::Queued {
            return Err(Error::FailedPrecondition(format!(
                "job {id} is {} already; only a queued deploy can be approved or rejected",
                job.state.as_str()
            )));
        }
        if !matches!(job.approval, Approval::Waiting { .. }) {
            let now = match job.approval.describe() {
                d if d.is_empty() => "needs no approval".to_owned(),
                d => format!("is {d} already"),
            };
            return Err(Error::FailedPrecondition(format!("job {id} {now}")));
        }
        let env = self
            .config
            .environment(&job.env)
            .ok_or_else(|| Error::FailedPrecondition(format!("env {} is gone", job.env)))?;
        if !who.may(Action::Approve(env), &self.config) {
            return Err(Error::PermissionDenied(
                who.refusal(Action::Approve(env), &self.config),
            ));
        }
        if who.name == job.requested_by {
            return Err(Error::PermissionDenied(format!(
                "{} requested job {id} and cannot approve or reject it; ask another {}",
                who.name,
                env.approve.join(" or ")
            )));
        }
        let by = who.name.clone();
        let (event, why, approval) = if approve {
            let why = format!("approved by {by}; waiting to be placed");
            (Event::Approved, why, Approval::Approved { by, comment })
        } else {
            let why = match comment.as_str() {
                "" => format!("rejected by {by}"),
                c => format!("rejected by {by}: {c}"),
            };
            (Event::Rejected, why, Approval::Rejected { by, comment })
        };
        if let Some(job) = self.live.get_mut(&id) {
            job.approval = approval;
        }
        self.advance(id, event, why, None).await?;
        info!(job = %id, by = %who.name, approve, "approval decided");
        self.place_queued().await?;
        self.job(id).await
    }

    /// Applies what `sender` reported of job `id`. A report of a job the
    /// sender does not hold changes nothing.
    pub(super) async fn report(
        &mut self,
        sender: &Sender,
        id: JobId,
        report: Report,
    ) -> Result<(), Error> {
        let holds = self
            .fleet
            .active
            .get(&id)
            .is_some_and(|p| p.held_by(sender));
        if !holds {
            let ran_it = self.store.job(id).await?.is_some_and(|j| {
                j.agent
                    .as_ref()
                    .is_some_and(|a| sender.is(a, &j.env, j.certificate.as_deref()))
            });
            return Err(match ran_it {
                true => Error::FailedPrecondition(format!(
                    "job {id} is no longer held by agent {}",
                    sender.agent
                )),
                false => Error::NotHolder(format!(
                    "agent {} of env {} sent an event for job {id}, which it does not hold",
                    sender.agent, sender.env
                )),
            });
        }
        match report {
            Report::Stage(stage) => {
                let why = format!("{} on agent {}", stage.as_str(), sender.agent);
                self.advance(id, Event::Stage(stage), why, None).await
            }
            Report::Finished(done) => {
                let event = match done.state {
                    JobState::Succeeded => Event::ServerDone,
                    JobState::Cancelled => Event::ServerFailed(Outcome::Cancelled),
                    JobState::Failed => Event::ServerFailed(Outcome::Failed),
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "a server cannot end its part of a job {}",
                            other.as_str()
                        )))
                    }
                };
                let why = done.summary.clone();
                self.advance(id, event, why, Some(done)).await?;
                self.place_queued().await
            }
        }
    }
}
