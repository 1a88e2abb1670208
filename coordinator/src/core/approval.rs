//! Approvals: a deploy to an environment that names approver roles waits,
//! queued, until someone with one of them, other than its requester,
//! approves it; a rejection ends it Cancelled.

use gantry_shared::{JobId, JobState};
use tracing::info;

use super::Core;
use crate::{
    auth::{Action, Principal},
    error::Error,
    job::{Approval, JobRecord},
};

impl Core {
    /// Approves (`approve`) or rejects job `id` as `who`.
    pub async fn decide_approval(
        &self,
        id: JobId,
        who: &Principal,
        approve: bool,
        comment: String,
    ) -> Result<JobRecord, Error> {
        {
            let mut fleet = self.fleet();
            let mut job = self.job(id)?;
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
            let env = self.environment_config(&job.env)?;
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
            if approve {
                job.reason = format!("approved by {by}; waiting to be placed");
                job.approval = Approval::Approved { by, comment };
                self.store.put_job(&job)?;
                self.place_queued(&mut fleet);
            } else {
                job.approval = Approval::Rejected {
                    by: by.clone(),
                    comment: comment.clone(),
                };
                let why = match comment.as_str() {
                    "" => format!("rejected by {by}"),
                    c => format!("rejected by {by}: {c}"),
                };
                job.transition(JobState::Cancelled, why);
                self.store.put_job(&job)?;
                fleet.queued.remove(&id);
                self.hub.end(id);
            }
            info!(job = %id, by = %who.name, approve, "approval decided");
        }
        self.store.flush().await?;
        self.job(id)
    }
}
