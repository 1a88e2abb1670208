//! Every (step, outcome) pair of each kind's plan, and whole runs.

use gantry_shared::Stage;

use super::*;

/// A kind's steps in order, each with the stage it reports first.
type Plan = &'static [(Step, Option<Stage>)];

/// A deploy of branches, step by step, with the stage each step reports
/// first (written out here, not derived from the module).
const BUILD: Plan = &[
    (Step::Fetch, Some(Stage::Fetch)),
    (Step::Checkout, Some(Stage::Checkout)),
    (Step::Build, Some(Stage::Build)),
    (Step::Image, Some(Stage::Image)),
    (Step::Start, Some(Stage::Deploy)),
    (Step::Health, Some(Stage::Health)),
    (Step::Confirm, None),
    (Step::Route, None),
    (Step::Drain, None),
    (Step::Retire, None),
];

/// A rollback or put-back: the deploy stage is reported before the image
/// is checked, and the container starts in it.
const RETAINED: Plan = &[
    (Step::CheckRetained, Some(Stage::Deploy)),
    (Step::Start, None),
    (Step::Health, Some(Stage::Health)),
    (Step::Confirm, None),
    (Step::Route, None),
    (Step::Drain, None),
    (Step::Retire, None),
];

fn plans() -> [(Kind, Plan); 2] {
    [(Kind::Build, BUILD), (Kind::Retained, RETAINED)]
}

fn run((step, report): (Step, Option<Stage>)) -> Next {
    Next::Run { step, report }
}

/// Walks a job of `kind` whose steps all go well; the steps run, and
/// the stages reported, in order.
fn walk(kind: Kind) -> (Vec<Step>, Vec<Stage>, End) {
    let (mut steps, mut stages) = (Vec::new(), Vec::new());
    let mut next = kind.first();
    loop {
        match next {
            Next::Run { step, report } => {
                assert!(steps.len() < 20, "{kind:?} never ends: {steps:?}");
                steps.push(step);
                stages.extend(report);
                next = advance(step, Outcome::Done);
            }
            Next::End(end) => return (steps, stages, end),
            Next::RouteBack(end) => panic!("{kind:?} went well, yet routes back: {end:?}"),
        }
    }
}

#[test]
fn each_kind_starts_at_its_first_step_reporting_its_stage() {
    for (kind, plan) in plans() {
        assert_eq!(kind.first(), run(plan[0]), "{kind:?}");
    }
}

#[test]
fn a_done_step_leads_to_the_next_of_its_plan_and_the_last_to_success() {
    for (kind, plan) in plans() {
        for (i, &(step, _)) in plan.iter().enumerate() {
            let expected = match plan.get(i + 1) {
                Some(&next) => run(next),
                None => Next::End(End::Succeeded),
            };
            assert_eq!(advance(step, Outcome::Done), expected, "{kind:?} {step:?}");
        }
    }
}

/// The steps after which the app's port may point at the new container
/// (written out here, not derived from the module).
const AFTER_ROUTE: &[Step] = &[Step::Drain, Step::Retire];

/// How a job stopped at `step` ends: at once, or (once traffic was routed
/// to the new container) after routing it back.
fn stopped(step: Step, end: End) -> Next {
    if AFTER_ROUTE.contains(&step) {
        Next::RouteBack(end)
    } else {
        Next::End(end)
    }
}

#[test]
fn a_failed_step_ends_the_job_failed_with_its_reason() {
    for (kind, plan) in plans() {
        for &(step, _) in plan {
            let reason = format!("{step:?} broke");
            assert_eq!(
                advance(step, Outcome::Failed(reason.clone())),
                stopped(step, End::Failed(reason)),
                "{kind:?} {step:?}"
            );
        }
    }
}

#[test]
fn a_cancelled_step_ends_the_job_cancelled() {
    for (kind, plan) in plans() {
        for &(step, _) in plan {
            assert_eq!(
                advance(step, Outcome::Cancelled),
                stopped(step, End::Cancelled),
                "{kind:?} {step:?}"
            );
        }
    }
}

#[test]
fn a_stop_after_the_route_routes_traffic_back_before_the_job_ends() {
    // The job's clean-up removes the new container: the port must point
    // at the release that was serving again first, or nothing answers.
    for step in [Step::Drain, Step::Retire] {
        assert_eq!(
            advance(step, Outcome::Failed("the proxy went away".into())),
            Next::RouteBack(End::Failed("the proxy went away".into())),
            "{step:?}"
        );
        assert_eq!(
            advance(step, Outcome::Cancelled),
            Next::RouteBack(End::Cancelled),
            "{step:?}"
        );
    }
}

#[test]
fn a_stop_up_to_the_route_never_routes_traffic() {
    // Until the route is done the port still points at the serving release
    // (a failed route changed nothing): there is nothing to put back.
    for (kind, plan) in plans() {
        let until_route = plan.iter().take_while(|&&(s, _)| s != Step::Drain);
        for &(step, _) in until_route {
            for outcome in [Outcome::Failed("broke".into()), Outcome::Cancelled] {
                let next = advance(step, outcome.clone());
                assert!(
                    matches!(next, Next::End(_)),
                    "{kind:?} {step:?} {outcome:?}: {next:?}"
                );
            }
        }
    }
}

#[test]
fn the_plans_hold_every_step() {
    let all = [
        Step::Fetch,
        Step::Checkout,
        Step::Build,
        Step::Image,
        Step::CheckRetained,
        Step::Start,
        Step::Health,
        Step::Confirm,
        Step::Route,
        Step::Drain,
        Step::Retire,
    ];
    for step in all {
        let planned = plans()
            .iter()
            .any(|(_, plan)| plan.iter().any(|&(s, _)| s == step));
        assert!(planned, "{step:?} is in no plan");
    }
}

#[test]
fn a_build_reports_every_stage_once_in_order_and_succeeds() {
    let (steps, stages, end) = walk(Kind::Build);
    assert_eq!(steps, BUILD.iter().map(|&(s, _)| s).collect::<Vec<_>>());
    assert_eq!(
        stages,
        [
            Stage::Fetch,
            Stage::Checkout,
            Stage::Build,
            Stage::Image,
            Stage::Deploy,
            Stage::Health
        ]
    );
    assert_eq!(end, End::Succeeded);
}

#[test]
fn a_retained_image_builds_nothing_and_reports_deploy_then_health() {
    let (steps, stages, end) = walk(Kind::Retained);
    assert_eq!(steps, RETAINED.iter().map(|&(s, _)| s).collect::<Vec<_>>());
    assert_eq!(stages, [Stage::Deploy, Stage::Health]);
    assert_eq!(end, End::Succeeded);
    for building in [Step::Fetch, Step::Checkout, Step::Build, Step::Image] {
        assert!(!steps.contains(&building), "a rollback runs {building:?}");
    }
}

#[test]
fn traffic_moves_only_after_the_new_container_is_healthy_and_confirmed() {
    for kind in [Kind::Build, Kind::Retained] {
        let (steps, _, _) = walk(kind);
        let at = |step| steps.iter().position(|&s| s == step).expect("planned");
        assert!(at(Step::Start) < at(Step::Health), "{kind:?}");
        assert!(at(Step::Health) < at(Step::Confirm), "{kind:?}");
        assert!(at(Step::Confirm) < at(Step::Route), "{kind:?}");
        assert!(at(Step::Route) < at(Step::Drain), "{kind:?}");
        assert!(at(Step::Drain) < at(Step::Retire), "{kind:?}");
    }
}

#[test]
fn a_stop_once_the_container_started_ends_the_job_before_traffic_moves() {
    // The new container then only runs beside the serving one; the job's
    // clean-up removes it, and the serving release is never routed away
    // from nor retired.
    for step in [Step::Start, Step::Health, Step::Confirm] {
        for outcome in [Outcome::Failed("unhealthy".into()), Outcome::Cancelled] {
            let next = advance(step, outcome.clone());
            assert!(
                matches!(next, Next::End(End::Failed(_) | End::Cancelled)),
                "{step:?} {outcome:?} goes on: {next:?}"
            );
        }
    }
}
