//! Every (phase, event) pair of the job machine, and whole rolls.

use gantry_shared::{JobState, Stage};

use super::*;

/// A job in each phase worth telling apart: waiting, placed on the first
/// of three servers, working on the second with the first switched,
/// putting the first back, and each end.
fn jobs() -> Vec<(&'static str, Job)> {
    let three = |phase, servers: [Server; 3]| Job {
        phase,
        servers: servers.to_vec(),
        ran_before: vec![true, true, false],
        cancel_requested: false,
    };
    use Server::*;
    let mut out = vec![
        ("awaiting approval", Job::new(true)),
        ("queued", Job::new(false)),
        (
            "sent to the first",
            three(Phase::Rolling { at: 0, stage: None }, [Pending; 3]),
        ),
        (
            "on the second",
            three(
                Phase::Rolling {
                    at: 1,
                    stage: Some(Stage::Build),
                },
                [Switched, Pending, Pending],
            ),
        ),
        (
            "on the last",
            three(
                Phase::Rolling {
                    at: 2,
                    stage: Some(Stage::Health),
                },
                [Switched, Switched, Pending],
            ),
        ),
        (
            "putting back",
            three(
                Phase::PuttingBack {
                    at: 0,
                    outcome: Outcome::Failed,
                },
                [Switched, Failed, Pending],
            ),
        ),
    ];
    for outcome in [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Cancelled,
        Outcome::Superseded,
    ] {
        out.push(("ended", three(Phase::Ended(outcome), [Pending; 3])));
    }
    out
}

fn events() -> Vec<Event> {
    vec![
        Event::Approved,
        Event::Rejected,
        Event::Superseded,
        Event::Placed {
            ran_before: vec![false, true],
        },
        Event::Placed { ran_before: vec![] },
        Event::Stage(Stage::Image),
        Event::ServerDone,
        Event::ServerFailed(Outcome::Failed),
        Event::ServerFailed(Outcome::Cancelled),
        Event::ServerFailed(Outcome::Superseded),
        Event::NotSent,
        Event::CancelRequested,
    ]
}

/// What each pair must give: the phase after and the effects, or `None`
/// for a refusal. Written from the rules, apart from [`advance`].
fn expected(name: &str, event: &Event) -> Option<(Phase, Vec<Effect>)> {
    use Effect::*;
    use Outcome::*;
    let rolling = |at, stage| Phase::Rolling { at, stage };
    let putting = |at, outcome| Phase::PuttingBack { at, outcome };
    Some(match (name, event) {
        ("ended", _) => return None,
        ("awaiting approval", Event::Approved) => (Phase::Queued, vec![]),
        ("awaiting approval", Event::Rejected | Event::CancelRequested)
        | ("queued", Event::CancelRequested) => (Phase::Ended(Cancelled), vec![Close]),
        ("awaiting approval" | "queued", Event::Superseded) => {
            (Phase::Ended(Superseded), vec![Close])
        }
        ("queued", Event::Placed { ran_before }) if !ran_before.is_empty() => {
            (rolling(0, None), vec![Deploy { at: 0 }])
        }
        ("sent to the first", Event::Stage(s)) => (rolling(0, Some(*s)), vec![]),
        ("on the second", Event::Stage(s)) => (rolling(1, Some(*s)), vec![]),
        ("on the last", Event::Stage(s)) => (rolling(2, Some(*s)), vec![]),
        ("putting back", Event::Stage(_)) => (putting(0, Failed), vec![]),
        ("sent to the first", Event::ServerDone) => (rolling(1, None), vec![Deploy { at: 1 }]),
        ("on the second", Event::ServerDone) => (rolling(2, None), vec![Deploy { at: 2 }]),
        ("on the last", Event::ServerDone) => (Phase::Ended(Succeeded), vec![Release, Close]),
        // Nothing switched yet: the job just ends.
        ("sent to the first", Event::ServerFailed(outcome @ (Failed | Cancelled))) => {
            (Phase::Ended(*outcome), vec![Close])
        }
        ("sent to the first", Event::NotSent) => (Phase::Queued, vec![]),
        // The first is switched and ran the release before: it goes back.
        ("on the second", Event::ServerFailed(outcome @ (Failed | Cancelled))) => {
            (putting(0, *outcome), vec![PutBack { at: 0 }])
        }
        ("on the second", Event::NotSent) => (putting(0, Failed), vec![PutBack { at: 0 }]),
        // The second goes back first (newest first).
        ("on the last", Event::ServerFailed(outcome @ (Failed | Cancelled))) => {
            (putting(1, *outcome), vec![PutBack { at: 1 }])
        }
        ("on the last", Event::NotSent) => (putting(1, Failed), vec![PutBack { at: 1 }]),
        ("sent to the first", Event::CancelRequested) => {
            (rolling(0, None), vec![StopServer { at: 0 }])
        }
        ("on the second", Event::CancelRequested) => {
            (rolling(1, Some(Stage::Build)), vec![StopServer { at: 1 }])
        }
        ("on the last", Event::CancelRequested) => {
            (rolling(2, Some(Stage::Health)), vec![StopServer { at: 2 }])
        }
        (
            "putting back",
            Event::ServerDone | Event::ServerFailed(Failed | Cancelled) | Event::NotSent,
        ) => (Phase::Ended(Failed), vec![Close]),
        _ => return None,
    })
}

#[test]
fn every_phase_and_event_moves_as_the_rules_say() {
    let mut pairs = 0;
    for (name, job) in jobs() {
        for event in events() {
            pairs += 1;
            let got = advance(&job, event.clone());
            match (expected(name, &event), got) {
                (Some((phase, effects)), Ok((next, got_effects))) => {
                    assert_eq!(next.phase, phase, "{name} + {event:?}");
                    assert_eq!(got_effects, effects, "{name} + {event:?}");
                }
                (None, Err(Illegal(why))) => assert!(!why.is_empty()),
                (want, got) => panic!("{name} + {event:?}: expected {want:?}, got {got:?}"),
            }
        }
    }
    assert_eq!(pairs, 10 * 12);
}

#[test]
fn a_refused_event_changes_nothing_and_says_why() {
    let ended = Job {
        phase: Phase::Ended(Outcome::Succeeded),
        ..Job::new(false)
    };
    let Err(Illegal(why)) = advance(&ended, Event::CancelRequested) else {
        panic!("an ended job cannot be cancelled");
    };
    assert_eq!(
        why,
        "the job has ended (succeeded); a cancel changes nothing"
    );
    let queued = Job::new(false);
    let Err(Illegal(why)) = advance(&queued, Event::ServerDone) else {
        panic!("a queued job has no server");
    };
    assert_eq!(
        why,
        "a server's success cannot happen to a job that is queued"
    );
}

/// Runs `events` from a queued job; the phases passed and the effects.
fn run(ran_before: &[bool], events: Vec<Event>) -> (Job, Vec<Effect>) {
    let mut job = Job::new(false);
    let mut all = Vec::new();
    let placed = std::iter::once(Event::Placed {
        ran_before: ran_before.to_vec(),
    });
    for event in placed.chain(events) {
        let (next, effects) =
            advance(&job, event.clone()).unwrap_or_else(|e| panic!("{event:?}: {e}"));
        job = next;
        all.extend(effects);
    }
    (job, all)
}

#[test]
fn a_roll_over_three_servers_releases_once_all_are_switched() {
    use Effect::*;
    let (job, effects) = run(
        &[true, true, true],
        vec![
            Event::Stage(Stage::Fetch),
            Event::ServerDone,
            Event::ServerDone,
            Event::ServerDone,
        ],
    );
    assert_eq!(job.phase, Phase::Ended(Outcome::Succeeded));
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.servers, vec![Server::Switched; 3]);
    assert_eq!(
        effects,
        [
            Deploy { at: 0 },
            Deploy { at: 1 },
            Deploy { at: 2 },
            Release,
            Close
        ]
    );
}

#[test]
fn a_failure_on_the_last_server_puts_the_others_back_newest_first() {
    use Effect::{Close, Deploy, PutBack};
    use Server::{Failed, KeepsNew, NotPutBack};
    let (job, effects) = run(
        &[true, false, true, true],
        vec![
            Event::ServerDone,
            Event::ServerDone,
            Event::ServerDone,
            Event::ServerFailed(Outcome::Failed),
            Event::ServerDone,
            Event::NotSent,
        ],
    );
    assert_eq!(job.phase, Phase::Ended(Outcome::Failed));
    // Server 2 went back; server 1 ran nothing before and keeps the new
    // release; server 0's put-back could not be sent.
    assert_eq!(job.servers, [NotPutBack, KeepsNew, Server::PutBack, Failed]);
    assert_eq!(
        effects,
        [
            Deploy { at: 0 },
            Deploy { at: 1 },
            Deploy { at: 2 },
            Deploy { at: 3 },
            PutBack { at: 2 },
            PutBack { at: 0 },
            Close
        ]
    );
}

#[test]
fn a_cancel_stops_the_working_server_and_ends_the_job_cancelled() {
    use Effect::*;
    let (job, effects) = run(
        &[true, true],
        vec![
            Event::ServerDone,
            Event::Stage(Stage::Build),
            Event::CancelRequested,
            Event::ServerFailed(Outcome::Cancelled),
            Event::ServerDone,
        ],
    );
    assert_eq!(job.phase, Phase::Ended(Outcome::Cancelled));
    assert_eq!(job.servers, [Server::PutBack, Server::Failed]);
    assert_eq!(
        effects,
        [
            Deploy { at: 0 },
            Deploy { at: 1 },
            StopServer { at: 1 },
            PutBack { at: 0 },
            Close
        ]
    );
}

#[test]
fn a_cancel_that_arrives_as_a_server_switches_stops_the_roll_there() {
    use Effect::*;
    // Mid-roll: the switched servers go back.
    let (job, effects) = run(
        &[true, true],
        vec![Event::CancelRequested, Event::ServerDone, Event::ServerDone],
    );
    assert_eq!(job.phase, Phase::Ended(Outcome::Cancelled));
    assert_eq!(
        effects,
        [
            Deploy { at: 0 },
            StopServer { at: 0 },
            PutBack { at: 0 },
            Close
        ]
    );
    // On the last server it came too late: the release stands.
    let (job, effects) = run(&[true], vec![Event::CancelRequested, Event::ServerDone]);
    assert_eq!(job.phase, Phase::Ended(Outcome::Succeeded));
    assert_eq!(
        effects,
        [Deploy { at: 0 }, StopServer { at: 0 }, Release, Close]
    );
}

#[test]
fn a_server_that_stops_its_part_unasked_ends_the_job_cancelled() {
    // An agent stopping what outlived its drain grace: the job says so.
    let (job, _) = run(&[false], vec![Event::ServerFailed(Outcome::Cancelled)]);
    assert_eq!(job.phase, Phase::Ended(Outcome::Cancelled));
}

#[test]
fn states_shown_to_operators_follow_the_phase() {
    let mut job = Job::new(true);
    assert_eq!(job.state(), JobState::Queued);
    job = advance(&job, Event::Approved).unwrap().0;
    assert_eq!(job.state(), JobState::Queued);
    job = advance(
        &job,
        Event::Placed {
            ran_before: vec![true, true],
        },
    )
    .unwrap()
    .0;
    assert_eq!((job.state(), job.working()), (JobState::Assigned, Some(0)));
    job = advance(&job, Event::Stage(Stage::Fetch)).unwrap().0;
    assert_eq!(job.state(), JobState::Running);
    job = advance(&job, Event::ServerDone).unwrap().0;
    assert_eq!((job.state(), job.working()), (JobState::Running, Some(1)));
    job = advance(&job, Event::ServerFailed(Outcome::Failed))
        .unwrap()
        .0;
    assert_eq!((job.state(), job.working()), (JobState::Running, Some(0)));
}
