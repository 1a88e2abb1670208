//! What every step of a job is given: its [`Ctx`], with the job, its
//! host, where it reports and the cancel it watches, and the names of the
//! image and container fixed before any step runs.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::{
    assignment::{workspace_dir, Job},
    report::Reporter,
    runtime::Runtime,
};

/// What every step is given: the job, its host, where it reports and the
/// cancel it watches, with the names fixed before any step runs.
pub(super) struct Ctx<'a> {
    /// The host: Docker, work dir, lease, build user.
    pub(super) rt: &'a Runtime,
    /// The job.
    pub(super) job: &'a Job,
    /// Where its lines go.
    pub(super) report: &'a Reporter,
    /// Cancelled when the job is stopped; the steps up to the confirm watch it.
    pub(super) cancel: &'a CancellationToken,
    /// The (app, env)'s workspace on this agent.
    pub(super) workspace: PathBuf,
    /// The image deployed: the one the image step builds, or the retained
    /// one.
    pub(super) tag: String,
    /// The new container's name.
    pub(super) name: String,
}

impl<'a> Ctx<'a> {
    /// The context of `job`, naming its image and container.
    pub(super) fn new(
        rt: &'a Runtime,
        job: &'a Job,
        report: &'a Reporter,
        cancel: &'a CancellationToken,
    ) -> Self {
        let tag = match &job.rollback_image {
            Some(image) => image.clone(),
            // Per server: agents sharing a Docker host never retag each other's.
            None => format!("{}:{}-{}-{}", job.app, job.env, job.id, rt.agent),
        };
        let name = format!(
            "gantry-{}-{}-{}-{}",
            job.app,
            job.env,
            job.object_id(),
            rt.agent
        );
        Self {
            rt,
            job,
            report,
            cancel,
            workspace: workspace_dir(rt, job),
            tag,
            name,
        }
    }
}
