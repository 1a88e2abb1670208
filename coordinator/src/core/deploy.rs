//! Accepting deploy requests: which branches, resolved to which commits,
//! queued as one job per (app, env) request; a newer request supersedes one
//! of the same (app, env) that has not started.

use std::collections::HashSet;

use gantry_shared::{
    config::{AppConfig, EnvironmentConfig},
    now_ms, AppName, BranchName, EnvName,
};

use super::{names, Core};
use crate::{
    error::Error,
    job::{JobKind, JobRecord},
    scheduler::Command,
};

/// Most branches in one set: a test environment runs around twenty, and
/// each one is a merge to check before anything is scheduled.
pub const MAX_BRANCHES_PER_SET: usize = 32;

/// Which branches a deploy asks for, checked: no duplicates, not empty, at
/// most [`MAX_BRANCHES_PER_SET`].
#[derive(Debug, Clone, PartialEq)]
pub enum BranchRequest {
    /// The app's default branch.
    Default,
    /// Exactly these, in merge order.
    Set(Vec<BranchName>),
    /// The set the environment runs now, with these changes.
    Change {
        /// Appended, in order.
        add: Vec<BranchName>,
        /// Taken out.
        remove: Vec<BranchName>,
    },
}

impl BranchRequest {
    /// A set as requested: refused when it repeats a branch or is too long.
    pub fn set(branches: Vec<BranchName>) -> Result<Self, Error> {
        if branches.is_empty() {
            return Ok(Self::Default);
        }
        check_list("the branch set", &branches)?;
        Ok(Self::Set(branches))
    }

    /// A change to the current set.
    pub fn change(add: Vec<BranchName>, remove: Vec<BranchName>) -> Result<Self, Error> {
        check_list("--add", &add)?;
        check_list("--remove", &remove)?;
        if let Some(both) = add.iter().find(|b| remove.contains(b)) {
            return Err(Error::InvalidArgument(format!(
                "branch \"{both}\" is both added and removed; name it once"
            )));
        }
        Ok(Self::Change { add, remove })
    }
}

fn check_list(what: &str, branches: &[BranchName]) -> Result<(), Error> {
    if branches.len() > MAX_BRANCHES_PER_SET {
        return Err(Error::InvalidArgument(format!(
            "{what} has {} branches; at most {MAX_BRANCHES_PER_SET} can be deployed together",
            branches.len()
        )));
    }
    let mut seen = HashSet::new();
    if let Some(twice) = branches.iter().find(|b| !seen.insert(*b)) {
        return Err(Error::InvalidArgument(format!(
            "branch \"{twice}\" is listed twice in {what}; list each branch once"
        )));
    }
    Ok(())
}

impl Core {
    /// The app's and environment's configuration, or NotFound naming what
    /// is configured.
    pub(super) fn check_target(&self, app: &AppName, env: &EnvName) -> Result<&AppConfig, Error> {
        let app_config = self.config.app(app).ok_or_else(|| self.unknown_app(app))?;
        self.environment_config(env)?;
        Ok(app_config)
    }

    /// The environment's configuration, or NotFound naming the configured ones.
    pub fn environment_config(&self, env: &EnvName) -> Result<&EnvironmentConfig, Error> {
        self.config
            .environment(env)
            .ok_or_else(|| Error::UnknownEnv {
                known: names(self.config.environments.iter().map(|e| e.name().as_str())),
                env: env.clone(),
            })
    }

    /// NotFound for `app`, naming the configured apps.
    pub(super) fn unknown_app(&self, app: &AppName) -> Error {
        Error::UnknownApp {
            known: names(self.config.apps.iter().map(|a| a.name().as_str())),
            app: app.clone(),
        }
    }

    /// Checks a deploy request, resolves its branches and queues it. Nothing
    /// is created when any check fails.
    pub async fn deploy(
        &self,
        app: AppName,
        env: EnvName,
        request: BranchRequest,
        requested_by: String,
    ) -> Result<JobRecord, Error> {
        let app_config = self.check_target(&app, &env)?;
        let branches = match request {
            BranchRequest::Default => vec![app_config.default_branch.clone()],
            BranchRequest::Set(branches) => branches,
            BranchRequest::Change { add, remove } => {
                self.changed_set(&app, &env, add, remove).await?
            }
        };
        // The set's merge commits are dated with the job's creation second,
        // so the agent, given the same time, recreates them exactly.
        let now = now_ms();
        let resolved = self.resolve_set(&app, branches, now / 1000).await?;
        let job = JobRecord::queued(
            self.store.next_job_id().await?,
            app,
            env,
            JobKind::Deploy,
            resolved.branches,
            resolved.base,
            resolved.commit,
            requested_by,
            now,
        );
        self.enqueue(job).await
    }

    /// The branches the environment runs now, with `add` appended and
    /// `remove` taken out.
    async fn changed_set(
        &self,
        app: &AppName,
        env: &EnvName,
        add: Vec<BranchName>,
        remove: Vec<BranchName>,
    ) -> Result<Vec<BranchName>, Error> {
        let current = self.store.current_release(app, env).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "nothing of app \"{app}\" is released in {env} yet, so there is no set to change; \
                 deploy one with --branch first"
            ))
        })?;
        let mut set: Vec<BranchName> = current.branches.into_iter().map(|b| b.branch).collect();
        let now = set
            .iter()
            .map(BranchName::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        for branch in &remove {
            if !set.contains(branch) {
                return Err(Error::InvalidArgument(format!(
                    "branch \"{branch}\" is not in the set {env} runs ({now}); nothing to remove"
                )));
            }
        }
        for branch in &add {
            if set.contains(branch) {
                return Err(Error::InvalidArgument(format!(
                    "branch \"{branch}\" is already in the set {env} runs ({now})"
                )));
            }
        }
        set.retain(|b| !remove.contains(b));
        set.extend(add);
        if set.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "removing {} would leave {env} with no branch; deploy another set instead",
                names(remove.iter().map(BranchName::as_str))
            )));
        }
        check_list("the resulting set", &set)?;
        Ok(set)
    }

    /// Queues a new job: the scheduler stores it, supersedes older queued
    /// requests for its (app, env), and places what can run.
    pub(super) async fn enqueue(&self, job: JobRecord) -> Result<JobRecord, Error> {
        let id = job.id;
        self.scheduler
            .ask(|reply| Command::Enqueue(Box::new(job), reply))
            .await?;
        self.job(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<BranchName> {
        list.iter().map(|b| BranchName::new(*b).unwrap()).collect()
    }

    #[test]
    fn a_set_is_checked_before_anything_else() {
        let twice = BranchRequest::set(names(&["feature/a", "feature/b", "feature/a"]));
        let msg = twice.unwrap_err().to_string();
        assert!(msg.contains("\"feature/a\" is listed twice"), "{msg}");

        let many: Vec<String> = (0..33).map(|i| format!("f{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let msg = BranchRequest::set(names(&refs)).unwrap_err().to_string();
        assert!(msg.contains("at most 32"), "{msg}");

        assert_eq!(
            BranchRequest::set(Vec::new()).unwrap(),
            BranchRequest::Default
        );
        let both = BranchRequest::change(names(&["x"]), names(&["x"]));
        assert!(both
            .unwrap_err()
            .to_string()
            .contains("both added and removed"));
    }
}
