//! A job's life in one place: its phase, where each server of its roll
//! stands, and the one function, [`advance`], that moves it on an event and
//! says what must be done about it. Nothing here stores, sends or waits, so
//! every (phase, event) pair is tested without a store or a network.
//!
//! A roll goes over the environment's servers one at a time. When a server
//! fails (or is cancelled, or its agent is lost), the roll stops, and every
//! server already switched is put back on the release before, newest first,
//! so an environment is never left half on the new release.

use gantry_shared::{JobState, Stage};
use serde::{Deserialize, Serialize};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every server serves the new release.
    Succeeded,
    /// A server failed, or its agent was lost.
    Failed,
    /// An operator cancelled it, or an approver rejected it.
    Cancelled,
    /// A newer request for the same (app, env) replaced it while it waited.
    Superseded,
}

impl Outcome {
    /// The job state the operator API shows for it.
    pub fn state(self) -> JobState {
        match self {
            Outcome::Succeeded => JobState::Succeeded,
            Outcome::Failed => JobState::Failed,
            Outcome::Cancelled => JobState::Cancelled,
            Outcome::Superseded => JobState::Superseded,
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Queued, held until an approver lets it run.
    AwaitingApproval,
    /// Waiting to be placed on a server.
    Queued,
    /// Server `at` of the roll has it: sent (`stage` is `None`) or working.
    Rolling {
        /// Index of the server in the roll.
        at: usize,
        /// The stage it last reported.
        stage: Option<Stage>,
    },
    /// The roll stopped with `outcome`; server `at` is being put back on
    /// the release before.
    PuttingBack {
        /// Index of the server being put back.
        at: usize,
        /// How the job ends once every switched server is handled.
        outcome: Outcome,
    },
    /// Over; it never changes again.
    Ended(Outcome),
}

/// Where one server of the roll stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Server {
    /// Not reached yet (or working now).
    Pending,
    /// Serves the new release.
    Switched,
    /// Failed its part; it still serves what it served before.
    Failed,
    /// Was switched, and is back on the release before.
    PutBack,
    /// Was switched, and could not be put back (its agent is away, or the
    /// put-back failed): it still serves the new release.
    NotPutBack,
    /// Was switched and ran no earlier release: it keeps the new one.
    KeepsNew,
}

/// A job as the machine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Where it stands.
    pub phase: Phase,
    /// Each server of the roll, in roll order (empty until placed).
    pub servers: Vec<Server>,
    /// For each server, whether it served the release before this job (so
    /// has something to be put back on).
    pub ran_before: Vec<bool>,
    /// An operator asked to cancel it while a server works on it.
    pub cancel_requested: bool,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An approver let it run.
    Approved,
    /// An approver refused it.
    Rejected,
    /// A newer request for its (app, env) replaced it.
    Superseded,
    /// Placement chose its servers; `ran_before[i]`: server i served the
    /// release before.
    Placed {
        /// One entry per server, in roll order.
        ran_before: Vec<bool>,
    },
    /// The working server reported a stage.
    Stage(Stage),
    /// The working server ended its part (deploy or put-back) well.
    ServerDone,
    /// The working server ended its part badly: `Failed` (or lost), or
    /// `Cancelled` (it stopped on an operator's cancel).
    ServerFailed(Outcome),
    /// The working server's part could not be sent (its agent is not
    /// connected, or its queue is full).
    NotSent,
    /// An operator asked to cancel it.
    CancelRequested,
}

/// What the coordinator must do after a transition, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Send server `at` its deploy.
    Deploy {
        /// Index in the roll.
        at: usize,
    },
    /// Send server `at` the release before, to put it back.
    PutBack {
        /// Index in the roll.
        at: usize,
    },
    /// Tell the working server to stop.
    StopServer {
        /// Index in the roll.
        at: usize,
    },
    /// Record the new release, served by every switched server.
    Release,
    /// Free its (app, env), end its log's followers, place the queue again.
    Close,
}

/// A transition the machine does not allow, with the reason for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Illegal(pub String);

impl Job {
    /// A new job: queued, or held for approval.
    pub fn new(needs_approval: bool) -> Self {
        Self {
            phase: if needs_approval {
                Phase::AwaitingApproval
            } else {
                Phase::Queued
            },
            servers: Vec::new(),
            ran_before: Vec::new(),
            cancel_requested: false,
        }
    }

    /// The job state the operator API shows.
    pub fn state(&self) -> JobState {
        match self.phase {
            Phase::AwaitingApproval | Phase::Queued => JobState::Queued,
            Phase::Rolling { at: 0, stage: None } => JobState::Assigned,
            Phase::Rolling { .. } | Phase::PuttingBack { .. } => JobState::Running,
            Phase::Ended(outcome) => outcome.state(),
        }
    }

    /// The index of the server working on it now, if any.
    pub fn working(&self) -> Option<usize> {
        match self.phase {
            Phase::Rolling { at, .. } | Phase::PuttingBack { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// Moves `job` on `event`: its next state and what to do, or why the event
/// cannot happen now (and then `job` is unchanged).
pub fn advance(job: &Job, event: Event) -> Result<(Job, Vec<Effect>), Illegal> {
    let mut next = job.clone();
    let effects =
        match (job.phase, event) {
            (Phase::Ended(outcome), event) => {
                return Err(Illegal(format!(
                    "the job has ended ({}); {} changes nothing",
                    outcome.state().as_str(),
                    describe(&event)
                )))
            }
            (Phase::AwaitingApproval, Event::Approved) => {
                next.phase = Phase::Queued;
                vec![]
            }
            (Phase::AwaitingApproval, Event::Rejected) => end(&mut next, Outcome::Cancelled),
            (Phase::AwaitingApproval | Phase::Queued, Event::Superseded) => {
                end(&mut next, Outcome::Superseded)
            }
            (Phase::AwaitingApproval | Phase::Queued, Event::CancelRequested) => {
                end(&mut next, Outcome::Cancelled)
            }
            (Phase::Queued, Event::Placed { ran_before }) => {
                if ran_before.is_empty() {
                    return Err(Illegal("a job is placed on at least one server".into()));
                }
                next.servers = vec![Server::Pending; ran_before.len()];
                next.ran_before = ran_before;
                next.phase = Phase::Rolling { at: 0, stage: None };
                vec![Effect::Deploy { at: 0 }]
            }
            (Phase::Rolling { at, .. }, Event::Stage(stage)) => {
                next.phase = Phase::Rolling {
                    at,
                    stage: Some(stage),
                };
                vec![]
            }
            (Phase::PuttingBack { .. }, Event::Stage(_)) => vec![],
            (Phase::Rolling { at, .. }, Event::ServerDone) => {
                next.servers[at] = Server::Switched;
                if at + 1 == next.servers.len() {
                    // Done everywhere; a cancel that came now came too late.
                    let mut effects = vec![Effect::Release];
                    effects.extend(end(&mut next, Outcome::Succeeded));
                    effects
                } else if job.cancel_requested {
                    // Stopped between servers: this one and those before go back.
                    put_back_next(&mut next, Outcome::Cancelled)
                } else {
                    next.phase = Phase::Rolling {
                        at: at + 1,
                        stage: None,
                    };
                    vec![Effect::Deploy { at: at + 1 }]
                }
            }
            (Phase::Rolling { at, .. }, Event::ServerFailed(outcome)) => {
                let outcome = failure(outcome)?;
                next.servers[at] = Server::Failed;
                put_back_next(&mut next, outcome)
            }
            (Phase::Rolling { at: 0, .. }, Event::NotSent)
                if !job.servers.contains(&Server::Switched) =>
            {
                // The first server never got it: back to the queue.
                next.servers.clear();
                next.ran_before.clear();
                next.phase = Phase::Queued;
                vec![]
            }
            (Phase::Rolling { at, .. }, Event::NotSent) => {
                next.servers[at] = Server::Failed;
                put_back_next(&mut next, Outcome::Failed)
            }
            (Phase::Rolling { at, .. }, Event::CancelRequested) => {
                next.cancel_requested = true;
                vec![Effect::StopServer { at }]
            }
            (Phase::PuttingBack { at, outcome }, Event::ServerDone) => {
                next.servers[at] = Server::PutBack;
                put_back_next(&mut next, outcome)
            }
            (
                Phase::PuttingBack { at, outcome },
                Event::ServerFailed(Outcome::Failed | Outcome::Cancelled) | Event::NotSent,
            ) => {
                next.servers[at] = Server::NotPutBack;
                put_back_next(&mut next, outcome)
            }
            (Phase::PuttingBack { .. }, Event::CancelRequested) => return Err(Illegal(
                "the job is putting servers back on the release before; that cannot be cancelled"
                    .into(),
            )),
            (phase, event) => {
                return Err(Illegal(format!(
                    "{} cannot happen to a job that is {}",
                    describe(&event),
                    phase_name(phase)
                )))
            }
        };
    Ok((next, effects))
}

/// How a job whose server failed with `outcome` ends: a failure stays a
/// failure, a stop (an operator's cancel, or the agent stopping what
/// outlived its drain) is a cancel.
fn failure(outcome: Outcome) -> Result<Outcome, Illegal> {
    match outcome {
        Outcome::Failed | Outcome::Cancelled => Ok(outcome),
        other => Err(Illegal(format!(
            "a server cannot end its part {}",
            other.state().as_str()
        ))),
    }
}

/// Puts back the newest switched server not yet handled, or ends the job
/// with `outcome` once none is left.
fn put_back_next(job: &mut Job, outcome: Outcome) -> Vec<Effect> {
    while let Some(at) = job.servers.iter().rposition(|s| *s == Server::Switched) {
        if job.ran_before[at] {
            job.phase = Phase::PuttingBack { at, outcome };
            return vec![Effect::PutBack { at }];
        }
        job.servers[at] = Server::KeepsNew;
    }
    end(job, outcome)
}

fn end(job: &mut Job, outcome: Outcome) -> Vec<Effect> {
    job.phase = Phase::Ended(outcome);
    vec![Effect::Close]
}

fn describe(event: &Event) -> &'static str {
    match event {
        Event::Approved => "an approval",
        Event::Rejected => "a rejection",
        Event::Superseded => "superseding it",
        Event::Placed { .. } => "placing it",
        Event::Stage(_) => "a stage report",
        Event::ServerDone => "a server's success",
        Event::ServerFailed(_) => "a server's failure",
        Event::NotSent => "a failed send",
        Event::CancelRequested => "a cancel",
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::AwaitingApproval => "waiting for approval",
        Phase::Queued => "queued",
        Phase::Rolling { .. } => "rolling over its servers",
        Phase::PuttingBack { .. } => "putting servers back",
        Phase::Ended(_) => "over",
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
