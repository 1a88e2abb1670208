//! The agent's git work, over [`gantry_shared::git`]: fetch the app's remote
//! into this agent's cached mirror (incrementally), recreate a branch set's
//! integration commit exactly as the coordinator made it, and check the
//! job's commit out into the workspace of its environment.

use std::path::{Path, PathBuf};

use gantry_shared::{
    git::{integrate, CheckedOut, Credentials, Fetched, GitError, IntegrateError, Mirror},
    messages::{BranchCommit, BranchSet},
};

/// Git failures on the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentGitError {
    /// Fetching, resolving or checking out failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A branch set did not merge here.
    #[error(transparent)]
    Integrate(#[from] IntegrateError),
    /// The commit is not on the remote (any more).
    #[error("commit {0} is not on the remote after fetching (was the branch force-pushed?); deploy again")]
    MissingCommit(String),
    /// The merge here gave another commit than the coordinator's.
    #[error("the branch set merged here into {here}, not the coordinator's {expected}; the agent refuses to build something other than what was checked")]
    Mismatch {
        /// What the agent computed.
        here: String,
        /// What the coordinator computed.
        expected: String,
    },
}

/// Where an app's mirror is, and how to reach its remote.
pub struct Source {
    /// The bare mirror on this agent.
    pub mirror: PathBuf,
    /// The remote's URL.
    pub remote: String,
    /// Its credentials.
    pub credentials: Credentials,
}

impl Source {
    fn open(&self) -> Result<Mirror, GitError> {
        Mirror::open(&self.mirror, &self.remote, self.credentials.clone())
    }
}

/// Fetches every branch into the mirror and checks that the commits the job
/// needs are there. Blocking: run it on the blocking pool.
pub fn fetch(source: &Source, needed: &[String]) -> Result<Fetched, AgentGitError> {
    let mirror = source.open()?;
    let fetched = mirror.fetch()?;
    if let Some(missing) = needed.iter().find(|c| !mirror.has_commit(c)) {
        return Err(AgentGitError::MissingCommit(missing.clone()));
    }
    Ok(fetched)
}

/// Merges `set` in the mirror as the coordinator did and checks the result
/// is `expected`. Returns how many branches were merged. Blocking.
pub fn integrate_set(
    source: &Source,
    set: &BranchSet,
    expected: &str,
) -> Result<usize, AgentGitError> {
    let pair = |b: &BranchCommit| (b.branch.clone(), b.commit.clone());
    let (base, base_commit) = pair(&set.base);
    let branches: Vec<_> = set.branches.iter().map(pair).collect();
    let mirror = source.open()?;
    let merged = integrate(mirror.repo(), &base, &base_commit, &branches, set.time_secs)?;
    if merged.commit != expected {
        return Err(AgentGitError::Mismatch {
            here: merged.commit,
            expected: expected.to_owned(),
        });
    }
    Ok(branches.len())
}

/// Replaces `workspace` with a clean checkout of `commit`. Blocking.
pub fn checkout(
    source: &Source,
    commit: &str,
    workspace: &Path,
) -> Result<CheckedOut, AgentGitError> {
    Ok(source.open()?.checkout(commit, workspace)?)
}
