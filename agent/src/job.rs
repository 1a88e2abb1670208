//! One deploy job on the agent, run to its end: it waits for its turn in
//! the (app, env)'s workspace, runs [`stages`] under the deploy timeout, and
//! reports how it ended. A failure or cancel removes what this job created
//! (by label) and its workspace, and leaves the release that was serving
//! untouched.
//!
//! This sits above the stages: what a job is ([`crate::assignment`]) and
//! what it runs on ([`crate::runtime`]) are below both.

use std::{sync::Arc, time::Duration};

use gantry_shared::JobState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    assignment::{workspace_dir, Job},
    docker,
    report::Reporter,
    runtime::{Runtime, Stop},
    stages,
};

/// A running job's handle: stops it with a reason (operator cancel, deploy
/// timeout, agent shutdown). The job then stops its build's process group
/// and removes what it created.
#[derive(Clone, Default)]
pub struct JobHandle {
    token: CancellationToken,
    why: Arc<std::sync::Mutex<Option<(JobState, String)>>>,
}

impl JobHandle {
    /// Stops the job; it ends in `state` saying `reason` (the first stop wins).
    pub fn stop(&self, state: JobState, reason: impl Into<String>) {
        self.why
            .lock()
            .expect("stop lock")
            .get_or_insert((state, reason.into()));
        self.token.cancel();
    }

    fn outcome(&self) -> (JobState, String) {
        self.why
            .lock()
            .expect("stop lock")
            .clone()
            .unwrap_or((JobState::Cancelled, "cancelled".into()))
    }
}

/// Runs `job` to its end and reports the outcome.
pub async fn run(rt: Arc<Runtime>, job: Job, report: Reporter, handle: JobHandle) {
    let turn = rt.turns.of(&workspace_dir(&rt, &job));
    let _turn = match turn.clone().try_lock_owned() {
        Ok(turn) => turn,
        Err(_) => {
            let msg = format!(
                "waiting for an earlier job of {} in {} to stop on this server: it still holds the workspace",
                job.app, job.env
            );
            report.system(msg).await;
            tokio::select! {
                turn = turn.lock_owned() => turn,
                _ = handle.token.cancelled() => {
                    let (state, summary) = handle.outcome();
                    info!(job = %job.id, app = %job.app, env = %job.env, state = state.as_str(), "job ended before its turn");
                    report.finish(state, summary, None).await;
                    return;
                }
            }
        }
    };
    info!(job = %job.id, app = %job.app, env = %job.env, commit = %job.commit, "job started");
    let limit = job.spec.deploy_timeout.max(Duration::from_secs(1));
    let work = stages::run(&rt, &job, &report, &handle.token);
    let timer = tokio::time::sleep(limit);
    tokio::pin!(work, timer);
    let mut timed_out = false;
    // The timer stops the job through its handle, so the stages clean up
    // exactly as for a cancel.
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = &mut timer, if !timed_out => {
                timed_out = true;
                let why = format!(
                    "deploy timed out after {}s and was stopped; raise deploy_timeout_secs if it needs longer",
                    limit.as_secs()
                );
                handle.stop(JobState::Failed, why);
            }
        }
    };
    let (state, summary, deployed) = match outcome {
        Ok(deployed) => {
            let summary = format!("{} is serving at {}", deployed.image, deployed.url);
            (JobState::Succeeded, summary, Some(deployed))
        }
        Err(Stop::Failed(why)) => (JobState::Failed, why, None),
        Err(Stop::Cancelled) => {
            let (state, why) = handle.outcome();
            (state, why, None)
        }
    };
    if state != JobState::Succeeded {
        let (app, env, id) = (job.app.as_str(), job.env.as_str(), job.object_id());
        if let Err(e) = docker::remove_job_objects(&rt.docker, app, env, &id).await {
            warn!(job = %job.id, error = %e, "cannot remove what the job created");
            let msg = format!("warning: cannot remove what this job created: {e}");
            report.system(msg).await;
        }
        // The workspace holds this job's half-built tree; the next deploy
        // checks out afresh anyway.
        let _ = std::fs::remove_dir_all(workspace_dir(&rt, &job));
    }
    let _ = std::fs::remove_file(crate::leftovers::building_marker(&workspace_dir(&rt, &job)));
    info!(job = %job.id, app = %job.app, env = %job.env, state = state.as_str(), "job ended");
    report.finish(state, summary, deployed).await;
}
