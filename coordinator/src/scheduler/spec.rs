//! What a server of a roll is sent: the job's configuration, the images it
//! must keep, and for a put-back the release before.

use std::time::Duration;

use gantry_shared::{
    config::fetch_token,
    messages::{AppSpec, Assignment, BranchCommit, BranchSet, ImageSource, ToAgent},
};
use tracing::info;

use super::Scheduler;
use crate::{
    error::Error,
    job::{JobKind, JobRecord},
    release::{retained_images, ReleaseRecord},
};

/// What an assignment asks of a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepKind {
    /// Deploy the job's release.
    Deploy,
    /// Put the release before back, after a later server failed.
    PutBack,
}

impl Scheduler {
    /// Sends server `at` of `job` its part; false if it cannot be sent (not
    /// connected, its queue is full, or nothing to put back).
    pub(super) async fn send_step(
        &mut self,
        job: &mut JobRecord,
        at: usize,
        kind: StepKind,
    ) -> Result<bool, Error> {
        let agent = job.roll[at].agent.clone();
        let releases = self.store.releases(&job.app, &job.env, None).await?;
        let Some(mut assignment) = self.assignment(job, &releases) else {
            return Ok(false);
        };
        assignment.first_seq = self.store.last_seq(job.id).await? + 1;
        if let (StepKind::Deploy, Some(to)) = (kind, job.kind.rollback_to()) {
            if let Some(target) = releases.iter().find(|r| r.number == to) {
                assignment.image = Some(target.image_on(&agent).to_owned());
            }
        }
        if kind == StepKind::PutBack {
            // Not released, so the newest release is the one before.
            let Some(before) = releases.first() else {
                return Ok(false);
            };
            assignment.put_back = true;
            assignment.image = Some(before.image_on(&agent).to_owned());
            assignment.release = before.number;
            assignment.set = None;
            let keep = self.config.app(&job.app).map_or(1, |a| a.keep_releases);
            assignment.keep_images = retained_images(&releases, keep);
        }
        let Some(session) = self
            .fleet
            .sessions
            .get(&agent)
            .filter(|s| s.record.env == job.env && s.outbox.capacity() > 0)
        else {
            return Ok(false);
        };
        if session
            .outbox
            .try_send(ToAgent::Assign(Box::new(assignment)))
            .is_err()
        {
            return Ok(false);
        }
        let certificate = session.certificate.clone();
        self.hold(job, at, certificate);
        info!(job = %job.id, app = %job.app, env = %job.env, agent = %agent, ?kind, "step assigned");
        Ok(true)
    }

    /// What the agent needs to run `job`: the configuration, and the
    /// images of `releases` (newest first) it must keep.
    fn assignment(&self, job: &JobRecord, releases: &[ReleaseRecord]) -> Option<Assignment> {
        let app = self.config.app(&job.app)?;
        let env = self.config.environment(&job.env)?;
        let keep_images = retained_images(releases, app.keep_releases.saturating_sub(1));
        // The read-only credential of this environment; the app's own
        // `git_token` can push and stays here.
        let (fetch_username, fetch_token) = match fetch_token(app, env) {
            Some((username, token)) => (username, Some(token)),
            None => (None, None),
        };
        let commit = |b: &crate::job::BranchCommit| BranchCommit {
            branch: b.branch.clone(),
            commit: b.commit.clone(),
        };
        let set = job.base.as_ref().map(|base| BranchSet {
            base: commit(base),
            branches: job.branches.iter().map(commit).collect(),
            time_secs: job.created_ms / 1000,
        });
        let image = match (&app.dockerfile, &app.base_image) {
            (Some(dockerfile), _) => ImageSource::Dockerfile(dockerfile.clone()),
            (None, base) => ImageSource::BaseImage(base.clone().unwrap_or_default()),
        };
        Some(Assignment {
            job: job.id,
            app: AppSpec {
                name: app.name().clone(),
                // A password in the URL is the coordinator's credential too.
                remote: gantry_shared::git::without_password(&app.remote),
                build_command: app.build_command.clone(),
                artifact: app.artifact.clone(),
                image,
                container_port: app.container_port.get(),
                health_path: app.health_path.clone(),
                health_timeout: Duration::from_secs(app.health_timeout_secs),
                build_timeout: Duration::from_secs(app.build_timeout_secs),
                deploy_timeout: Duration::from_secs(app.deploy_timeout_secs),
                drain_timeout: Duration::from_secs(app.drain_timeout_secs),
                fetch_username,
                fetch_token,
                public_port: app.public_port.map(|p| p.get()),
            },
            env: job.env.clone(),
            env_vars: env.variables.clone().into_iter().collect(),
            secrets: env
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect(),
            branches: job.branches.iter().map(|b| b.branch.clone()).collect(),
            commit: job.commit.clone(),
            release: job.release.unwrap_or(0),
            image: match job.kind {
                JobKind::Rollback { .. } => Some(job.image.clone()),
                JobKind::Deploy => None,
            },
            keep_images,
            set,
            first_seq: 1,
            put_back: false,
        })
    }
}
