//! A job's states and an agent's stages as the operator API shows them.
//! Which state follows which is decided in one place, the coordinator's job
//! machine (`coordinator/src/job/machine.rs`); a job's state is read from it.

use serde::{Deserialize, Serialize};

use crate::proto;

/// The step of a deploy an agent is working on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Fetching the remote into the agent's mirror.
    Fetch,
    /// Checking the commit out into the environment's workspace.
    Checkout,
    /// Running the build command.
    Build,
    /// Building the image.
    Image,
    /// Starting the new container.
    Deploy,
    /// Waiting for the health check.
    Health,
}

impl Stage {
    /// Lowercase name, as the CLI shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Checkout => "checkout",
            Stage::Build => "build",
            Stage::Image => "image",
            Stage::Deploy => "deploy",
            Stage::Health => "health",
        }
    }

    /// From the wire; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match proto::Stage::try_from(value).ok()? {
            proto::Stage::Unspecified => return None,
            proto::Stage::Fetch => Stage::Fetch,
            proto::Stage::Checkout => Stage::Checkout,
            proto::Stage::Build => Stage::Build,
            proto::Stage::Image => Stage::Image,
            proto::Stage::Deploy => Stage::Deploy,
            proto::Stage::Health => Stage::Health,
        })
    }

    /// To the wire.
    pub fn to_proto(self) -> proto::Stage {
        match self {
            Stage::Fetch => proto::Stage::Fetch,
            Stage::Checkout => proto::Stage::Checkout,
            Stage::Build => proto::Stage::Build,
            Stage::Image => proto::Stage::Image,
            Stage::Deploy => proto::Stage::Deploy,
            Stage::Health => proto::Stage::Health,
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for an agent.
    Queued,
    /// Pushed to an agent that has not started it yet.
    Assigned,
    /// The agent is working on it.
    Running,
    /// Deployed and healthy.
    Succeeded,
    /// A stage failed, or the agent was lost.
    Failed,
    /// Stopped by an operator.
    Cancelled,
    /// Replaced, while still queued, by a newer request for the same
    /// (app, env): only the newest waiting request is worth running.
    Superseded,
}

impl JobState {
    /// Whether the job has ended; an ended job never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Superseded
        )
    }

    /// Whether a job in this state holds its (app, env) and an agent slot.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Assigned | JobState::Running)
    }

    /// Lowercase name, as the CLI shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Superseded => "superseded",
        }
    }

    /// To the wire.
    pub fn to_proto(self) -> proto::JobState {
        match self {
            JobState::Queued => proto::JobState::Queued,
            JobState::Assigned => proto::JobState::Assigned,
            JobState::Running => proto::JobState::Running,
            JobState::Succeeded => proto::JobState::Succeeded,
            JobState::Failed => proto::JobState::Failed,
            JobState::Cancelled => proto::JobState::Cancelled,
            JobState::Superseded => proto::JobState::Superseded,
        }
    }

    /// From the wire; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match proto::JobState::try_from(value).ok()? {
            proto::JobState::Unspecified => return None,
            proto::JobState::Queued => JobState::Queued,
            proto::JobState::Assigned => JobState::Assigned,
            proto::JobState::Running => JobState::Running,
            proto::JobState::Succeeded => JobState::Succeeded,
            proto::JobState::Failed => JobState::Failed,
            proto::JobState::Cancelled => JobState::Cancelled,
            proto::JobState::Superseded => JobState::Superseded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::{self, *};

    #[test]
    fn every_state_goes_to_the_wire_and_back() {
        for state in [
            Queued, Assigned, Running, Succeeded, Failed, Cancelled, Superseded,
        ] {
            assert_eq!(JobState::from_proto(state.to_proto() as i32), Some(state));
        }
        assert_eq!(JobState::from_proto(0), None, "unspecified");
        assert_eq!(JobState::from_proto(99), None, "unknown");
    }

    #[test]
    fn ended_states_are_terminal_and_never_active() {
        for end in [Succeeded, Failed, Cancelled, Superseded] {
            assert!(end.is_terminal() && !end.is_active(), "{end:?}");
        }
        assert!(Assigned.is_active() && Running.is_active() && !Queued.is_active());
    }
}
