//! A job's life as an explicit state machine. Every transition the
//! coordinator makes goes through [`JobState::can_become`], so the rules live
//! in one place.

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

    /// The transition rules: Queued -> Assigned -> Running -> ended; a queued
    /// job may be superseded; any state that has not ended may fail or be
    /// cancelled.
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        match (self, next) {
            (Queued, Assigned) | (Assigned, Running) | (Running, Running) => true,
            (Running, Succeeded) | (Queued, Superseded) => true,
            (from, Failed | Cancelled) => !from.is_terminal(),
            _ => false,
        }
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
    use super::JobState::*;

    #[test]
    fn the_happy_path_is_allowed() {
        assert!(Queued.can_become(Assigned));
        assert!(Assigned.can_become(Running));
        assert!(Running.can_become(Running));
        assert!(Running.can_become(Succeeded));
    }

    #[test]
    fn ended_jobs_never_change() {
        for end in [Succeeded, Failed, Cancelled, Superseded] {
            for next in [
                Queued, Assigned, Running, Succeeded, Failed, Cancelled, Superseded,
            ] {
                assert!(!end.can_become(next), "{end:?} -> {next:?}");
            }
        }
    }

    #[test]
    fn no_skipping_ahead() {
        assert!(!Queued.can_become(Running));
        assert!(!Queued.can_become(Succeeded));
        assert!(!Assigned.can_become(Succeeded));
        assert!(Queued.can_become(Cancelled));
        assert!(Assigned.can_become(Failed));
    }

    #[test]
    fn only_waiting_jobs_can_be_superseded() {
        assert!(Queued.can_become(Superseded));
        assert!(!Assigned.can_become(Superseded));
        assert!(!Running.can_become(Superseded));
    }
}
