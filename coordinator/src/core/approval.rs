//! Approvals: a deploy to an environment that names approver roles waits,
//! queued, until someone with one of them, other than its requester,
//! approves it; a rejection ends it Cancelled. The scheduler decides.

use gantry_shared::JobId;

use super::Core;
use crate::{auth::Principal, error::Error, job::JobRecord, scheduler::Command};

impl Core {
    /// Approves (`approve`) or rejects job `id` as `who`.
    pub async fn decide_approval(
        &self,
        id: JobId,
        who: &Principal,
        approve: bool,
        comment: String,
    ) -> Result<JobRecord, Error> {
        let who = who.clone();
        self.scheduler
            .ask(|reply| Command::Decide {
                id,
                who,
                approve,
                comment,
                reply,
            })
            .await?;
        self.job(id).await
    }
}
