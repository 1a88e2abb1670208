//! The app remotes as the coordinator sees them: one cached bare mirror per
//! app in the data directory, refreshed on demand (an incremental fetch,
//! never a clone per call), for listing branches, creating them on the
//! remote, resolving deploy requests and checking branch sets.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use gantry_shared::{
    config::AppConfig,
    git::{check_integration, Credentials, GitError, IntegrateError, Mirror},
    proto, AppName, BranchName,
};
use tracing::info;

use super::Core;
use crate::{
    error::{redact_url, Error},
    job::BranchCommit,
};

/// What a deploy request's branches resolved to.
pub struct Resolved {
    /// Each branch and its commit, in merge order.
    pub branches: Vec<BranchCommit>,
    /// For several branches: the default branch they are merged onto.
    pub base: Option<BranchCommit>,
    /// The commit to deploy.
    pub commit: String,
}

/// How long one remote operation (fetch or push) may take before the
/// request is answered Unavailable rather than held.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Each app's mirror, opened once and kept, behind one lock per app: git2
/// must not have two fetches write one repository at once.
#[derive(Default)]
pub struct MirrorLocks(Mutex<HashMap<AppName, Arc<Mutex<Option<Mirror>>>>>);

impl MirrorLocks {
    fn of(&self, app: &AppName) -> Arc<Mutex<Option<Mirror>>> {
        let mut locks = self.0.lock().expect("mirror locks poisoned");
        locks.entry(app.clone()).or_default().clone()
    }
}

/// The credentials configured for `app`.
pub fn credentials(app: &AppConfig) -> Credentials {
    Credentials {
        username: app.git_username.clone(),
        token: app.git_token.as_ref().map(|t| t.expose().to_owned()),
        ssh_key: app.git_ssh_key.clone(),
    }
}

impl Core {
    fn mirror_dir(&self, app: &AppName) -> PathBuf {
        self.config
            .data_dir
            .join("mirrors")
            .join(format!("{app}.git"))
    }

    /// Fetches the app's mirror and runs `work` on it, on the blocking pool,
    /// one call per app at a time.
    pub(super) async fn with_mirror<T: Send + 'static>(
        &self,
        app: &AppName,
        work: impl FnOnce(&Mirror) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let config = self.config.app(app).ok_or_else(|| self.unknown_app(app))?;
        let (dir, remote, creds) = (
            self.mirror_dir(app),
            config.remote.clone(),
            credentials(config),
        );
        let lock = self.mirrors.of(app);
        let name = app.clone();
        let unavailable = {
            let (app, remote) = (app.clone(), redact_url(&config.remote));
            move |message: String| Error::RemoteUnavailable {
                app: app.clone(),
                remote: remote.clone(),
                message,
            }
        };
        let fail = unavailable.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut held = lock.lock().expect("mirror lock poisoned");
            let mirror = match held.take() {
                Some(mirror) => mirror,
                None => Mirror::open(&dir, &remote, creds).map_err(|e| fail(e.to_string()))?,
            };
            let mirror = &*held.insert(mirror);
            let fetched = mirror.refresh().map_err(|e| fail(e.to_string()))?;
            if fetched.received_objects > 0 {
                info!(app = %name, objects = fetched.received_objects, "mirror refreshed");
            }
            work(mirror)
        });
        tokio::time::timeout(REMOTE_TIMEOUT, task)
            .await
            .map_err(|_| unavailable(format!("no answer within {}s", REMOTE_TIMEOUT.as_secs())))?
            .map_err(|e| unavailable(format!("git task failed: {e}")))?
    }

    /// Resolves `branches` of `app` against its freshly fetched mirror. One
    /// branch deploys as it is; several are merged, in order, onto the app's
    /// default branch with merge commits dated `time_secs`, and the first
    /// conflict refuses the whole set.
    pub(super) async fn resolve_set(
        &self,
        app: &AppName,
        branches: Vec<BranchName>,
        time_secs: i64,
    ) -> Result<Resolved, Error> {
        let config = self.config.app(app).ok_or_else(|| self.unknown_app(app))?;
        let base = config.default_branch.clone();
        let owner = app.clone();
        self.with_mirror(app, move |mirror| {
            let head = |branch: &BranchName| -> Result<String, Error> {
                mirror
                    .branch_head(branch)
                    .map_err(internal_git)?
                    .ok_or_else(|| Error::UnknownBranch {
                        app: owner.clone(),
                        branch: branch.clone(),
                    })
            };
            let mut resolved = Vec::with_capacity(branches.len());
            for branch in branches {
                let commit = head(&branch)?;
                resolved.push(BranchCommit { branch, commit });
            }
            if let [only] = resolved.as_slice() {
                return Ok(Resolved {
                    commit: only.commit.clone(),
                    branches: resolved,
                    base: None,
                });
            }
            let base_commit = head(&base)?;
            let pairs: Vec<(BranchName, String)> = resolved
                .iter()
                .map(|b| (b.branch.clone(), b.commit.clone()))
                .collect();
            let started = std::time::Instant::now();
            // In memory: the coordinator needs the commit id, not the
            // objects; the agent writes them when it recreates the set.
            let merged = check_integration(mirror.repo(), &base, &base_commit, &pairs, time_secs)
                .map_err(|e| match e {
                IntegrateError::Conflict {
                    branch,
                    with,
                    files,
                } => Error::MergeConflict {
                    branch,
                    with: if with == base {
                        format!("the default branch \"{base}\"")
                    } else {
                        format!("branch \"{with}\"")
                    },
                    files: files.join(", "),
                },
                other => Error::Git(other.to_string()),
            })?;
            info!(
                app = %owner, branches = pairs.len(), commit = %merged.commit,
                ms = started.elapsed().as_millis() as u64, "branch set integrated"
            );
            Ok(Resolved {
                commit: merged.commit,
                branches: resolved,
                base: Some(BranchCommit {
                    branch: base,
                    commit: base_commit,
                }),
            })
        })
        .await
    }

    /// The remote's branches with their head commits, refreshed now.
    pub async fn branches(&self, app: &AppName) -> Result<Vec<proto::Branch>, Error> {
        self.with_mirror(app, |mirror| {
            Ok(mirror
                .branches()
                .map_err(internal_git)?
                .into_iter()
                .map(|b| proto::Branch {
                    name: b.name.to_string(),
                    commit: b.commit,
                    author: b.author_name,
                    time_ms: b.time_ms,
                    subject: b.subject,
                })
                .collect())
        })
        .await
    }

    /// Creates `name` on the app's remote at `from` (a branch or commit;
    /// by default the app's default branch), with a push.
    pub async fn create_branch(
        &self,
        app: &AppName,
        name: BranchName,
        from: Option<String>,
        requested_by: String,
    ) -> Result<proto::Branch, Error> {
        let config = self.config.app(app).ok_or_else(|| self.unknown_app(app))?;
        let from = from.unwrap_or_else(|| config.default_branch.to_string());
        let owner = app.clone();
        let created = name.clone();
        let branch = self
            .with_mirror(app, move |mirror| {
                if mirror.branch_head(&name).map_err(internal_git)?.is_some() {
                    return Err(Error::AlreadyExists(format!(
                        "branch \"{name}\" already exists on the remote of app \"{owner}\""
                    )));
                }
                let commit = mirror
                    .resolve(&from)
                    .map_err(internal_git)?
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "\"{from}\" is neither a branch nor a commit of app \"{owner}\"; \
                         give an existing branch or a commit id"
                        ))
                    })?;
                mirror.create_branch(&name, &commit).map_err(|e| match e {
                    GitError::BranchExists(_) => Error::AlreadyExists(format!(
                        "branch \"{name}\" already exists on the remote of app \"{owner}\""
                    )),
                    other => Error::RemoteRefused(other.to_string()),
                })?;
                let info = mirror.branches().map_err(internal_git)?;
                let made = info.into_iter().find(|b| b.name == name);
                made.map(|b| proto::Branch {
                    name: b.name.to_string(),
                    commit: b.commit,
                    author: b.author_name,
                    time_ms: b.time_ms,
                    subject: b.subject,
                })
                .ok_or_else(|| Error::RemoteRefused(format!("branch \"{name}\" was not created")))
            })
            .await?;
        info!(app = %app, branch = %created, commit = %branch.commit, by = %requested_by, "branch created");
        Ok(branch)
    }
}

fn internal_git(err: GitError) -> Error {
    Error::Git(err.to_string())
}
