//! The agent's git work, with git2: a cached bare mirror per app, fetched
//! incrementally, and a clean checkout of exactly the job's commit into the
//! workspace of the job's environment.

use std::path::{Path, PathBuf};

/// Git failures, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git2 failed.
    #[error("{doing}: {source}")]
    Git {
        /// What was being done.
        doing: String,
        /// What git said.
        source: git2::Error,
    },
    /// The workspace could not be prepared.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done.
        doing: String,
        /// Why.
        source: std::io::Error,
    },
    /// The job's commit is not on the remote any more.
    #[error("commit {0} is not on the remote after fetching (was the branch force-pushed?); deploy again")]
    MissingCommit(String),
}

trait Context<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, GitError>;
}

impl<T> Context<T> for Result<T, git2::Error> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, GitError> {
        self.map_err(|source| GitError::Git {
            doing: what(),
            source,
        })
    }
}

impl<T> Context<T> for Result<T, std::io::Error> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, GitError> {
        self.map_err(|source| GitError::Io {
            doing: what(),
            source,
        })
    }
}

/// What a fetch did.
#[derive(Debug)]
pub struct Fetched {
    /// Objects received from the remote in this fetch (0 when up to date).
    pub received_objects: usize,
    /// Bytes received.
    pub received_bytes: usize,
}

/// Fetches every branch of `remote` into the bare mirror at `mirror`
/// (created on first use) and checks that `commit` is there. Blocking: run
/// it on the blocking pool.
pub fn fetch(mirror: &Path, remote: &str, commit: &str) -> Result<Fetched, GitError> {
    let repo = match git2::Repository::open_bare(mirror) {
        Ok(repo) => repo,
        Err(_) => {
            std::fs::create_dir_all(mirror)
                .doing(|| format!("creating mirror {}", mirror.display()))?;
            git2::Repository::init_bare(mirror)
                .doing(|| format!("creating mirror {}", mirror.display()))?
        }
    };
    let mut origin = repo
        .remote_anonymous(remote)
        .doing(|| format!("using remote {remote}"))?;
    let mut options = git2::FetchOptions::new();
    options
        .prune(git2::FetchPrune::On)
        .download_tags(git2::AutotagOption::None);
    origin
        .fetch(&["+refs/heads/*:refs/heads/*"], Some(&mut options), None)
        .doing(|| "fetching from the remote".to_owned())?;
    let stats = origin.stats();
    let fetched = Fetched {
        received_objects: stats.received_objects(),
        received_bytes: stats.received_bytes(),
    };
    let oid = git2::Oid::from_str(commit).doing(|| format!("reading commit id {commit}"))?;
    if repo.find_commit(oid).is_err() {
        return Err(GitError::MissingCommit(commit.to_owned()));
    }
    Ok(fetched)
}

/// What was checked out.
#[derive(Debug)]
pub struct CheckedOut {
    /// The workspace.
    pub dir: PathBuf,
    /// The commit's first line.
    pub subject: String,
    /// Its author.
    pub author: String,
}

/// Replaces `workspace` with a clean checkout of `commit` from `mirror`:
/// nothing of an earlier build survives, so every deploy builds afresh.
/// Blocking: run it on the blocking pool.
pub fn checkout(mirror: &Path, commit: &str, workspace: &Path) -> Result<CheckedOut, GitError> {
    let repo = git2::Repository::open_bare(mirror)
        .doing(|| format!("opening mirror {}", mirror.display()))?;
    let oid = git2::Oid::from_str(commit).doing(|| format!("reading commit id {commit}"))?;
    let found = repo
        .find_commit(oid)
        .map_err(|_| GitError::MissingCommit(commit.to_owned()))?;
    if workspace.exists() {
        std::fs::remove_dir_all(workspace)
            .doing(|| format!("clearing workspace {}", workspace.display()))?;
    }
    std::fs::create_dir_all(workspace)
        .doing(|| format!("creating workspace {}", workspace.display()))?;
    let mut options = git2::build::CheckoutBuilder::new();
    options.force().target_dir(workspace).update_index(false);
    repo.checkout_tree(found.as_object(), Some(&mut options))
        .doing(|| format!("checking out {commit} into {}", workspace.display()))?;
    let subject = found
        .summary()
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_owned();
    let author = found.author().name().unwrap_or_default().to_owned();
    Ok(CheckedOut {
        dir: workspace.to_owned(),
        subject,
        author,
    })
}
