//! The stages of a job on the agent. A deploy fetches, checks out, builds
//! the artifact and the image, then starts it; a rollback starts a retained
//! image again and builds nothing. Either way the new container runs beside
//! the serving one until it is healthy, and only then replaces it.
//!
//! Which steps run, in which order, and which stage each reports is
//! [`plan`]'s alone: [`run`] asks it what comes next and runs that step.
//! The steps that build the release are in [`prepare`]; those that start it
//! and switch traffic to it are in [`release`]. Both are given a [`Ctx`].

mod ctx;
mod plan;
mod prepare;
mod release;

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    assignment::Job,
    report::{Deployed, Reporter},
    runtime::{Runtime, Stop},
};
use ctx::Ctx;
use plan::{End, Kind, Next, Outcome, Step};

/// What steps made for the steps after them.
#[derive(Default)]
struct Made {
    /// The build's artifact, for the image.
    artifact: Option<PathBuf>,
    /// The new container, once started.
    started: Option<release::Started>,
    /// Where the release answers, once traffic is routed to it.
    url: Option<String>,
    /// The app's port, once pointed at the new container (apps with a
    /// public port only).
    switched: Option<release::Switched>,
}

/// Runs the job's steps as [`plan`] orders them; the deployed release on
/// success.
pub(crate) async fn run(
    rt: &Runtime,
    job: &Job,
    report: &Reporter,
    cancel: &CancellationToken,
) -> Result<Deployed, Stop> {
    let kind = match job.rollback_image {
        Some(_) => Kind::Retained,
        None => Kind::Build,
    };
    let ctx = Ctx::new(rt, job, report, cancel);
    let mut made = Made::default();
    let mut next = kind.first();
    loop {
        let (step, stage) = match next {
            Next::Run { step, report } => (step, report),
            Next::End(End::Succeeded) => {
                let url = earlier(&made.url, "address")?.clone();
                return Ok(Deployed {
                    url,
                    image: ctx.tag,
                    container: ctx.name,
                });
            }
            Next::End(End::Failed(why)) => return Err(Stop::Failed(why)),
            Next::End(End::Cancelled) => return Err(Stop::Cancelled),
            Next::RouteBack(end) => {
                if let Some(switched) = &made.switched {
                    release::route_back(&ctx, switched).await;
                }
                next = Next::End(end);
                continue;
            }
        };
        if let Some(stage) = stage {
            report.stage(stage).await;
        }
        debug!(job = %job.id, app = %job.app, env = %job.env, agent = %rt.agent, ?step, "step");
        let outcome = match execute(&ctx, step, &mut made).await {
            Ok(()) => Outcome::Done,
            Err(Stop::Failed(why)) => Outcome::Failed(why),
            Err(Stop::Cancelled) => Outcome::Cancelled,
        };
        next = plan::advance(step, outcome);
    }
}

/// Runs one step, keeping what it makes for the steps after it.
async fn execute(ctx: &Ctx<'_>, step: Step, made: &mut Made) -> Result<(), Stop> {
    match step {
        Step::Fetch => prepare::fetch(ctx).await,
        Step::Checkout => prepare::checkout(ctx).await,
        Step::Build => {
            made.artifact = Some(prepare::build(ctx).await?);
            Ok(())
        }
        Step::Image => prepare::image(ctx, earlier(&made.artifact, "artifact")?).await,
        Step::CheckRetained => prepare::check_retained(ctx).await,
        Step::Start => {
            made.started = Some(release::start(ctx).await?);
            Ok(())
        }
        Step::Health => release::health(ctx, earlier(&made.started, "container")?).await,
        Step::Confirm => release::confirm(ctx, earlier(&made.started, "container")?).await,
        Step::Route => {
            let (url, switched) = release::route(ctx, earlier(&made.started, "container")?).await?;
            made.url = Some(url);
            made.switched = switched;
            Ok(())
        }
        Step::Drain => release::drain(ctx, made.switched.as_ref()).await,
        Step::Retire => {
            release::retire(ctx, earlier(&made.started, "container")?).await;
            Ok(())
        }
    }
}

/// What an earlier step made. The plan runs steps in order, so it is
/// missing only if a step ran out of turn.
fn earlier<'m, T>(made: &'m Option<T>, what: &str) -> Result<&'m T, Stop> {
    made.as_ref().ok_or_else(|| {
        Stop::Failed(format!(
            "internal error: no {what} yet; a step ran out of turn"
        ))
    })
}
