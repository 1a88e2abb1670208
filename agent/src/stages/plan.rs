//! Which steps a job runs on the agent, in which order, and the one
//! function, [`advance`], that says what comes after a step given how it
//! went. Nothing here touches git, Docker or the network, so every
//! (step, outcome) pair is tested on its own.
//!
//! A deploy of branches runs fetch, checkout, build, image; a rollback or a
//! put-back checks that its retained image is still here instead. Both then
//! start the new container beside the serving one, wait until it is
//! healthy, confirm with the coordinator, route traffic to it, drain the
//! old one and retire what it replaces. The serving release is only
//! touched by the last three, so a job that stops earlier leaves it as it
//! was.
//!
//! A failure or a cancel at any step ends the job at once: no later step
//! runs. What the job made is then removed by [`crate::job::run`] the same
//! way whatever the step: by label, so a container a cancel caught
//! half-created goes too, along with the workspace. A stop once traffic was
//! routed to the new container first routes it back to the serving release
//! ([`Next::RouteBack`]): the clean-up is about to remove the container the
//! app's port points at, and the release that was serving must not be left
//! without its traffic.

use gantry_shared::Stage;

/// What an assignment asks for: a release built from its branches, or a
/// retained image started again (a rollback, or a put-back after a roll
/// failed on a later server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Build the commit, then deploy it.
    Build,
    /// Deploy an image built before; nothing is rebuilt.
    Retained,
}

/// One step of a job. Each is one async function of the driver in
/// [`super`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Fetches the commits the job needs into the app's mirror.
    Fetch,
    /// Merges a branch set, checks the commit out into the workspace and
    /// hands it to the build user.
    Checkout,
    /// Runs the build command and finds its artifact.
    Build,
    /// Builds the image from the artifact or the app's Dockerfile.
    Image,
    /// Checks that the retained image is still here and belongs to this
    /// (app, env).
    CheckRetained,
    /// Starts the new container beside the serving one.
    Start,
    /// Waits until the new container answers its health check.
    Health,
    /// Takes the coordinator's word that it still holds the job, then lets
    /// the container restart on its own. The last step a cancel stops.
    Confirm,
    /// Points the app's public port at the new container, when it has
    /// one.
    Route,
    /// Waits for the requests still running on the previous release to
    /// finish, so retiring it drops none.
    Drain,
    /// Removes earlier releases' containers and the images no longer kept
    /// for rollback. Reports its failures; never fails.
    Retire,
}

impl Kind {
    /// The first step of a job of this kind, with its stage to report.
    pub(super) fn first(self) -> Next {
        let step = match self {
            Kind::Build => Step::Fetch,
            Kind::Retained => Step::CheckRetained,
        };
        Next::Run {
            step,
            report: Some(step.stage()),
        }
    }
}

impl Step {
    /// The stage the operator sees while this step runs. Health is the last
    /// stage: it lasts until the job ends.
    pub(super) fn stage(self) -> Stage {
        match self {
            Step::Fetch => Stage::Fetch,
            Step::Checkout => Stage::Checkout,
            Step::Build => Stage::Build,
            Step::Image => Stage::Image,
            Step::CheckRetained | Step::Start => Stage::Deploy,
            Step::Health | Step::Confirm | Step::Route | Step::Drain | Step::Retire => {
                Stage::Health
            }
        }
    }

    /// The step that follows this one once it is done; `None` after the
    /// last. Both kinds meet at [`Step::Start`].
    fn then(self) -> Option<Step> {
        match self {
            Step::Fetch => Some(Step::Checkout),
            Step::Checkout => Some(Step::Build),
            Step::Build => Some(Step::Image),
            Step::Image | Step::CheckRetained => Some(Step::Start),
            Step::Start => Some(Step::Health),
            Step::Health => Some(Step::Confirm),
            Step::Confirm => Some(Step::Route),
            Step::Route => Some(Step::Drain),
            Step::Drain => Some(Step::Retire),
            Step::Retire => None,
        }
    }

    /// Whether the app's port may route to the new container while this
    /// step runs: [`Step::Route`] is done, so a stop here must route it
    /// back before the new container is removed.
    fn after_route(self) -> bool {
        matches!(self, Step::Drain | Step::Retire)
    }
}

/// How a step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It did its part.
    Done,
    /// It failed; the reason is the job's summary.
    Failed(String),
    /// It stopped because the job was cancelled (by an operator, the
    /// deploy timeout or the agent's shutdown).
    Cancelled,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Run `step`, first reporting `report` when the step starts a new
    /// stage.
    Run {
        /// The step to run.
        step: Step,
        /// The stage to report before it, if it changes.
        report: Option<Stage>,
    },
    /// Point the app's port back at the release it served before
    /// [`Step::Route`], then end as given: a step after the route stopped.
    RouteBack(End),
    /// The job is over.
    End(End),
}

/// How a job ends on this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    /// Every step was done: the new release serves, and the driver hands
    /// back what it deployed.
    Succeeded,
    /// A step failed for this reason; what the job made is removed. The
    /// serving release keeps serving: it was never touched, or (after
    /// [`Step::Route`]) traffic was routed back to it first.
    Failed(String),
    /// A step stopped on a cancel; what the job made is removed.
    Cancelled,
}

/// What comes after `step` went `outcome`: the next step, or the job's end.
pub(super) fn advance(step: Step, outcome: Outcome) -> Next {
    let stop = |end| {
        if step.after_route() {
            Next::RouteBack(end)
        } else {
            Next::End(end)
        }
    };
    match outcome {
        Outcome::Failed(reason) => stop(End::Failed(reason)),
        Outcome::Cancelled => stop(End::Cancelled),
        Outcome::Done => match step.then() {
            None => Next::End(End::Succeeded),
            Some(next) => Next::Run {
                step: next,
                report: (next.stage() != step.stage()).then_some(next.stage()),
            },
        },
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
