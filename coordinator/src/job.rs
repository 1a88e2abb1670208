//! The records the coordinator keeps for jobs and agents, and their
//! conversion to the operator API's messages.

use std::collections::BTreeMap;

use gantry_shared::{proto, AgentName, AppName, BranchName, EnvName, JobId, JobState, Stage};
use serde::{Deserialize, Serialize};

pub mod legacy;
pub mod machine;

/// A branch and the commit it resolved to when a request was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchCommit {
    /// The branch.
    pub branch: BranchName,
    /// Its commit then.
    pub commit: String,
}

impl BranchCommit {
    /// The wire form.
    pub fn to_proto(&self) -> proto::BranchCommit {
        proto::BranchCommit {
            branch: self.branch.to_string(),
            commit: self.commit.clone(),
        }
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Build and deploy a branch or a branch set.
    Deploy,
    /// Put a retained release's image back, building nothing.
    Rollback {
        /// The release put back.
        to: u64,
    },
}

impl JobKind {
    /// The wire form.
    pub fn to_proto(self) -> proto::JobKind {
        match self {
            JobKind::Deploy => proto::JobKind::Deploy,
            JobKind::Rollback { .. } => proto::JobKind::Rollback,
        }
    }

    /// For a rollback, the release it puts back.
    pub fn rollback_to(self) -> Option<u64> {
        match self {
            JobKind::Deploy => None,
            JobKind::Rollback { to } => Some(to),
        }
    }
}

/// Whether a job must be approved before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Approval {
    /// Its environment needs none.
    #[default]
    NotNeeded,
    /// It waits for someone with one of these roles, not its requester.
    Waiting {
        /// The roles that may approve.
        roles: Vec<String>,
    },
    /// Approved.
    Approved {
        /// By whom.
        by: String,
        /// Their comment.
        comment: String,
    },
    /// Rejected; the job ended Cancelled.
    Rejected {
        /// By whom.
        by: String,
        /// Their comment.
        comment: String,
    },
}

impl Approval {
    /// For people: "waiting for ops", "approved by bob (looks good)".
    pub fn describe(&self) -> String {
        let with = |comment: &str| match comment {
            "" => String::new(),
            c => format!(" ({c})"),
        };
        match self {
            Approval::NotNeeded => String::new(),
            Approval::Waiting { roles } => format!("waiting for {}", roles.join(" or ")),
            Approval::Approved { by, comment } => format!("approved by {by}{}", with(comment)),
            Approval::Rejected { by, comment } => format!("rejected by {by}{}", with(comment)),
        }
    }
}

/// One server running a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRelease {
    /// The agent.
    pub agent: AgentName,
    /// The container serving.
    pub container: String,
    /// Where it answers.
    pub url: String,
    /// The image it runs there (each server builds its own).
    #[serde(default)]
    pub image: String,
}

/// One server of a job's roll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollStep {
    /// The server's agent.
    pub agent: AgentName,
    /// Set once the server serves the new release.
    pub switched: Option<ServerRelease>,
    /// What happened to it once the roll stopped, for people ("failed",
    /// "put back on release 4").
    pub put_back: Option<String>,
}

impl RollStep {
    /// For people: "prod-1 switched", "prod-1 put back on release 4", ...
    pub fn describe(&self) -> String {
        match (&self.switched, &self.put_back) {
            (_, Some(what)) => format!("{} {what}", self.agent),
            (Some(_), None) => format!("{} switched", self.agent),
            (None, None) => format!("{} pending", self.agent),
        }
    }
}

/// Everything known about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// The app deployed.
    pub app: AppName,
    /// The environment deployed to.
    pub env: EnvName,
    /// Deploy or rollback.
    pub kind: JobKind,
    /// The branches deployed with their commits, in merge order.
    pub branches: Vec<BranchCommit>,
    /// For a set of several branches: the default branch they were merged onto.
    pub base: Option<BranchCommit>,
    /// The commit deployed: the branch's own, or the set's integration commit.
    pub commit: String,
    /// Who asked for it.
    pub requested_by: String,
    /// The release number it becomes, fixed when it is placed.
    pub release: Option<u64>,
    /// Where it stands.
    pub state: JobState,
    /// The last stage the agent reported.
    pub stage: Option<Stage>,
    /// Why it waits, or how it ended.
    pub reason: String,
    /// The agent it was given to.
    pub agent: Option<AgentName>,
    /// The serial of the certificate that agent attached with when it was
    /// given the job: only that session's events count.
    #[serde(default)]
    pub certificate: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Last state change, ms since the epoch.
    pub updated_ms: i64,
    /// Where the release answers (on success).
    pub url: String,
    /// The image built, or for a rollback the retained image to run.
    pub image: String,
    /// The container serving (on success).
    pub container: String,
    /// The newer job that replaced it while it was queued.
    pub superseded_by: Option<JobId>,
    /// The environment's servers in roll order (fixed when it is placed),
    /// with what each server reported; where each stands is in `life`.
    #[serde(default)]
    pub roll: Vec<RollStep>,
    /// Where it stands, as the job machine sees it: the truth `state` and
    /// `stage` are read from. Every change goes through [`machine::advance`].
    pub life: machine::Job,
    /// Once the roll stopped: why (a server failed, was cancelled, or was
    /// lost); the job's reason when it ends.
    #[serde(default)]
    pub stopped: Option<String>,
    /// Whether it needs, and got, an approval.
    #[serde(default)]
    pub approval: Approval,
}

impl JobRecord {
    /// A new queued job of `kind` deploying `commit` (from `branches`, on
    /// `base` for a set) to (app, env), created at `now_ms`; nothing else
    /// is known of it yet.
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        id: JobId,
        app: AppName,
        env: EnvName,
        kind: JobKind,
        branches: Vec<BranchCommit>,
        base: Option<BranchCommit>,
        commit: String,
        requested_by: String,
        now_ms: i64,
    ) -> Self {
        Self {
            id,
            app,
            env,
            kind,
            branches,
            base,
            commit,
            requested_by,
            release: None,
            state: JobState::Queued,
            stage: None,
            reason: "waiting to be placed".into(),
            agent: None,
            certificate: None,
            created_ms: now_ms,
            updated_ms: now_ms,
            url: String::new(),
            image: String::new(),
            container: String::new(),
            superseded_by: None,
            roll: Vec::new(),
            life: machine::Job::new(false),
            stopped: None,
            approval: Approval::NotNeeded,
        }
    }

    /// Takes on `life` (the machine's next state for it), with `reason`.
    pub fn live(&mut self, life: machine::Job, reason: impl Into<String>) {
        self.state = life.state();
        if let machine::Phase::Rolling {
            stage: Some(stage), ..
        } = life.phase
        {
            self.stage = Some(stage);
        }
        self.life = life;
        self.reason = reason.into();
        self.updated_ms = gantry_shared::now_ms();
    }

    /// The branches as people read them: "main", or "feature/a, feature/b".
    pub fn branch_label(&self) -> String {
        let names: Vec<&str> = self.branches.iter().map(|b| b.branch.as_str()).collect();
        names.join(", ")
    }

    /// The operator API's view; `last_seq` comes from the log store.
    pub fn to_proto(&self, last_seq: u64) -> proto::Job {
        proto::Job {
            id: self.id.get(),
            app: self.app.to_string(),
            env: self.env.to_string(),
            branch: self.branch_label(),
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
            branches: self.branches.iter().map(BranchCommit::to_proto).collect(),
            base: self.base.as_ref().map(BranchCommit::to_proto),
            kind: self.kind.to_proto() as i32,
            release: self.release.unwrap_or(0),
            rollback_to: self.kind.rollback_to().unwrap_or(0),
            requested_by: self.requested_by.clone(),
            superseded_by: self.superseded_by.map_or(0, JobId::get),
            roll: self.roll.iter().map(RollStep::describe).collect(),
            approval: self.approval.describe(),
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
