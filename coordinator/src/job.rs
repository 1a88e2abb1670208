//! The records the coordinator keeps for jobs and agents, and their
//! conversion to the operator API's messages.

use std::collections::BTreeMap;

use gantry_shared::{proto, AgentName, AppName, BranchName, EnvName, JobId, JobState, Stage};
use serde::{Deserialize, Serialize};

/// Everything known about one deploy job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// The app deployed.
    pub app: AppName,
    /// The environment deployed to.
    pub env: EnvName,
    /// The branch requested.
    pub branch: BranchName,
    /// The commit the branch resolved to; the agent builds exactly this.
    pub commit: String,
    /// Where it stands.
    pub state: JobState,
    /// The last stage the agent reported.
    pub stage: Option<Stage>,
    /// Why it waits, or how it ended.
    pub reason: String,
    /// The agent it was given to.
    pub agent: Option<AgentName>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Last state change, ms since the epoch.
    pub updated_ms: i64,
    /// Where the release answers (on success).
    pub url: String,
    /// The image built.
    pub image: String,
    /// The container serving (on success).
    pub container: String,
    /// An operator asked to cancel it; the agent is stopping it.
    #[serde(default)]
    pub cancel_requested: bool,
}

impl JobRecord {
    /// Moves the job to `next` if the state machine allows it; returns
    /// whether it moved.
    pub fn transition(&mut self, next: JobState, reason: impl Into<String>) -> bool {
        if !self.state.can_become(next) {
            return false;
        }
        self.state = next;
        self.reason = reason.into();
        self.updated_ms = gantry_shared::now_ms();
        true
    }

    /// The operator API's view; `last_seq` comes from the log store.
    pub fn to_proto(&self, last_seq: u64) -> proto::Job {
        proto::Job {
            id: self.id.get(),
            app: self.app.to_string(),
            env: self.env.to_string(),
            branch: self.branch.to_string(),
            commit: self.commit.clone(),
            state: self.state.to_proto() as i32,
            stage: self
                .stage
                .map_or(proto::Stage::Unspecified, Stage::to_proto) as i32,
            reason: self.reason.clone(),
            agent: self
                .agent
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            url: self.url.clone(),
            image: self.image.clone(),
            container: self.container.clone(),
            last_seq,
        }
    }
}

/// An agent as last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Its name.
    pub name: AgentName,
    /// Its environment.
    pub env: EnvName,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Jobs it runs at once.
    pub capacity: u32,
    /// Its version.
    pub version: String,
    /// Last message received, ms since the epoch.
    pub last_seen_ms: i64,
}
