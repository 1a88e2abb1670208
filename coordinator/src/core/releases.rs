//! Releases as operators see them: listing, rolling back to a retained
//! release, what an environment runs now, and how two environments differ.

use std::collections::BTreeMap;

use gantry_shared::{now_ms, AgentName, AppName, EnvName};

use super::Core;
use crate::{
    error::Error,
    job::{JobKind, JobRecord},
    release::{retained_images, ReleaseRecord},
    store::JobQuery,
};

/// A release and whether its image is still kept.
pub struct ReleaseView {
    /// The release.
    pub release: ReleaseRecord,
    /// Whether a rollback to it is possible.
    pub retained: bool,
}

/// What an (app, env) runs and what waits.
pub struct EnvironmentView {
    /// The newest release, if any.
    pub current: Option<ReleaseView>,
    /// Jobs of the (app, env) that have not ended, oldest first.
    pub pending: Vec<JobRecord>,
}

/// One branch that differs between two environments.
#[derive(Debug, PartialEq)]
pub struct BranchDiff {
    /// The branch.
    pub branch: String,
    /// Its commit in the first environment, if there.
    pub from: Option<String>,
    /// Its commit in the second, if there.
    pub to: Option<String>,
}

impl Core {
    fn keep_releases(&self, app: &AppName) -> usize {
        self.config.app(app).map_or(1, |a| a.keep_releases)
    }

    /// The releases of (app, env), newest first, at most `limit`.
    pub async fn releases(
        &self,
        app: &AppName,
        env: &EnvName,
        limit: usize,
    ) -> Result<Vec<ReleaseView>, Error> {
        self.check_target(app, env)?;
        let all = self.store.releases(app, env, None).await?;
        let kept = retained_images(&all, self.keep_releases(app));
        Ok(all
            .into_iter()
            .take(limit)
            .map(|release| ReleaseView {
                retained: kept.contains(&release.image),
                release,
            })
            .collect())
    }

    /// Queues a rollback of (app, env) to release `to` (by default the one
    /// before the release serving): its retained image is started again and
    /// nothing is built. Refused, creating nothing, when the release does
    /// not exist, serves already, or its image is no longer kept.
    pub async fn rollback(
        &self,
        app: AppName,
        env: EnvName,
        to: Option<u64>,
        requested_by: String,
    ) -> Result<JobRecord, Error> {
        self.check_target(&app, &env)?;
        let releases = self.store.releases(&app, &env, None).await?;
        let Some(current) = releases.first() else {
            return Err(Error::FailedPrecondition(format!(
                "app \"{app}\" has no release in {env} yet; there is nothing to roll back to"
            )));
        };
        let number = match to {
            Some(number) => number,
            None if current.number > 1 => current.number - 1,
            None => {
                return Err(Error::FailedPrecondition(format!(
                "release 1 is the only release of app \"{app}\" in {env}; there is no earlier one"
            )))
            }
        };
        let target = releases
            .iter()
            .find(|r| r.number == number)
            .ok_or_else(|| Error::UnknownRelease {
                app: app.clone(),
                env: env.clone(),
                number,
                known: format!("its releases there are 1 to {}", current.number),
            })?;
        if target.image == current.image {
            return Err(Error::FailedPrecondition(format!(
                "release {number} of app \"{app}\" runs image {}, which serves {env} now (release {})",
                target.image, current.number
            )));
        }
        let keep = self.keep_releases(&app);
        if !retained_images(&releases, keep).contains(&target.image) {
            return Err(Error::FailedPrecondition(format!(
                "release {number} of app \"{app}\" in {env} is older than the {keep} kept, and its \
                 image {} was pruned; deploy its branches ({}) again instead",
                target.image,
                target
                    .branches
                    .iter()
                    .map(|b| b.branch.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let now = now_ms();
        let job = JobRecord {
            // The release's image is what the servers start again.
            image: target.image.clone(),
            ..JobRecord::queued(
                self.store.next_job_id().await?,
                app,
                env,
                JobKind::Rollback { to: number },
                target.branches.clone(),
                target.base.clone(),
                target.commit.clone(),
                requested_by,
                now,
            )
        };
        self.enqueue(job).await
    }

    /// The release of each app that `agent` (of `env`) serves now, as
    /// "app release N".
    pub async fn serving_on(&self, agent: &AgentName, env: &EnvName) -> Result<Vec<String>, Error> {
        let mut serving = Vec::new();
        for app in &self.config.apps {
            let Some(current) = self.store.current_release(app.name(), env).await? else {
                continue;
            };
            if current.servers.iter().any(|s| &s.agent == agent) {
                serving.push(format!("{} release {}", app.name(), current.number));
            }
        }
        Ok(serving)
    }

    /// What (app, env) runs now, and the jobs waiting to change it.
    pub async fn environment(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<EnvironmentView, Error> {
        let current = self.releases(app, env, 1).await?.into_iter().next();
        let mut pending = self.store.jobs(&JobQuery::pending(app, env)).await?;
        pending.reverse();
        Ok(EnvironmentView { current, pending })
    }

    /// The branches whose commits differ between what `from` and `to` run.
    pub async fn diff(
        &self,
        app: &AppName,
        from: &EnvName,
        to: &EnvName,
    ) -> Result<Vec<BranchDiff>, Error> {
        let set = async |env: &EnvName| -> Result<BTreeMap<String, String>, Error> {
            self.check_target(app, env)?;
            Ok(self
                .store
                .current_release(app, env)
                .await?
                .map(|r| {
                    r.branches
                        .into_iter()
                        .map(|b| (b.branch.to_string(), b.commit))
                        .collect()
                })
                .unwrap_or_default())
        };
        let (mut left, mut right) = (set(from).await?, set(to).await?);
        let names: std::collections::BTreeSet<String> =
            left.keys().chain(right.keys()).cloned().collect();
        Ok(names
            .into_iter()
            .filter_map(|branch| {
                let (a, b) = (left.remove(&branch), right.remove(&branch));
                (a != b).then_some(BranchDiff {
                    branch,
                    from: a,
                    to: b,
                })
            })
            .collect())
    }
}
