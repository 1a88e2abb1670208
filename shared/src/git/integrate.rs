//! The integration commit of a branch set: the app's default branch with each
//! branch of the set merged in, in order, as in-memory three-way merges.
//!
//! The result is deterministic: the same base, branches, commits and time give
//! the same commit id in any clone, because the merge is computed from the
//! commits alone, with fixed merge settings and none of the host's git
//! config, and the merge commits carry a fixed author, committer, time and
//! message. The coordinator computes it to check a set; the agent
//! computes it again from its own mirror and builds it only if the ids match.

use crate::domain::BranchName;

/// Name and email of the author and committer of every integration commit.
const AUTHOR_NAME: &str = "Gantry";
/// See [`AUTHOR_NAME`].
const AUTHOR_EMAIL: &str = "gantry@localhost";

/// Hex digits of a branch's commit quoted in a merge message. Fixed rather
/// than git's "shortest unique" abbreviation, which depends on the clone and
/// would make the message, and so the commit id, differ between clones.
const SHORT_ID: usize = 7;

/// Priority of the in-memory object store [`check_integration`] puts in
/// front of the repository's own (libgit2 gives loose objects 1 and packs
/// 2): the highest priority receives every write.
const IN_MEMORY_PRIORITY: i32 = 1000;

/// How similar (in percent) a deleted and an added file must be to count
/// as a rename: libgit2's and git's default.
const RENAME_THRESHOLD: u32 = 50;

/// How many files rename detection compares at most: libgit2's default
/// (git's `merge.renameLimit` is ignored, see [`merge_options`]).
const RENAME_TARGET_LIMIT: u32 = 1000;

/// Conflicting files named in an error message; the error value holds all.
const SHOWN_FILES: usize = 10;

/// An integration commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    /// The resulting commit (the base commit itself if every branch was
    /// already contained in it).
    pub commit: String,
    /// Its tree, what a build sees.
    pub tree: String,
    /// Every branch of the set with its full commit id, in order, including
    /// those skipped because the result already contained them.
    pub merged: Vec<(BranchName, String)>,
}

/// Why a branch set cannot be integrated.
#[derive(Debug, thiserror::Error)]
pub enum IntegrateError {
    /// A commit is not a full id of a commit in the repository.
    #[error("commit {commit:?} of branch \"{branch}\" is not in the mirror; fetch first (or was the branch force-pushed?)")]
    UnknownCommit {
        /// The branch (or the base) it belongs to.
        branch: BranchName,
        /// The commit id given.
        commit: String,
    },
    /// A branch does not merge cleanly.
    #[error("branch \"{branch}\" conflicts with \"{with}\" in {}; merge one into the other and resolve the conflict, or leave one out of the set", show_files(files))]
    Conflict {
        /// The branch whose merge conflicted.
        branch: BranchName,
        /// The first earlier branch of the set that conflicts with it on the
        /// same files, or else the base branch (it conflicts with the default
        /// branch itself, or only with the combination).
        with: BranchName,
        /// The conflicting paths, sorted, without duplicates.
        files: Vec<String>,
    },
    /// git2 failed.
    #[error("{doing}: {source}")]
    Git {
        /// What was being done.
        doing: String,
        /// What git said.
        source: git2::Error,
    },
}

/// Adds what was being done to a git2 error.
trait Doing<T> {
    /// Wraps the error with `what()`, computed only on failure.
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, IntegrateError>;
}

impl<T> Doing<T> for Result<T, git2::Error> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, IntegrateError> {
        self.map_err(|source| IntegrateError::Git {
            doing: what(),
            source,
        })
    }
}

/// Integrates `branches` (each with its commit) into `base_commit`, the head
/// of the default branch `base`, writing the merged trees and the merge
/// commits into `repo` (on no branch), so the result can be checked out.
///
/// In order, a branch whose commit the result already contains is skipped
/// (and still listed as merged); any other is merged with a new commit whose
/// parents are the result so far and the branch's commit. The first
/// conflict stops the integration with [`IntegrateError::Conflict`].
/// `time_secs` (seconds since the Unix epoch) dates every merge commit; it
/// is part of what makes the result reproducible.
pub fn integrate(
    repo: &git2::Repository,
    base: &BranchName,
    base_commit: &str,
    branches: &[(BranchName, String)],
    time_secs: i64,
) -> Result<Integration, IntegrateError> {
    let isolated = isolated(repo)?;
    integrate_in(&isolated, base, base_commit, branches, time_secs)
}

/// Computes the same [`Integration`] as [`integrate`] (same commit id, same
/// errors) without writing anything to the repository: new trees and commits
/// live in memory and are dropped on return. For checking a set before
/// accepting it; the in-memory merges take milliseconds even for twenty
/// branches.
pub fn check_integration(
    repo: &git2::Repository,
    base: &BranchName,
    base_commit: &str,
    branches: &[(BranchName, String)],
    time_secs: i64,
) -> Result<Integration, IntegrateError> {
    let isolated = isolated(repo)?;
    let doing = || "adding an in-memory object store".to_owned();
    let odb = isolated.odb().doing(doing)?;
    let _in_memory = odb
        .add_new_mempack_backend(IN_MEMORY_PRIORITY)
        .doing(doing)?;
    integrate_in(&isolated, base, base_commit, branches, time_secs)
}

/// `repo` opened again, apart from the caller's handle, with an empty
/// configuration: the host's git config (`merge.default`,
/// `merge.renameLimit`, ...) would otherwise make the same set merge
/// differently on the coordinator and on an agent. Objects written through
/// it are visible through the caller's handle.
fn isolated(repo: &git2::Repository) -> Result<git2::Repository, IntegrateError> {
    let doing = || format!("opening {} for merging", repo.path().display());
    let isolated = git2::Repository::open(repo.path()).doing(doing)?;
    let empty = git2::Config::new().doing(doing)?;
    isolated.set_config(&empty).doing(doing)?;
    Ok(isolated)
}

/// The merge settings, spelled out rather than left to defaults, so that
/// both sides of a comparison surely use the same.
fn merge_options() -> git2::MergeOptions {
    let mut options = git2::MergeOptions::new();
    options
        .find_renames(true)
        .rename_threshold(RENAME_THRESHOLD)
        .target_limit(RENAME_TARGET_LIMIT);
    options
}

/// [`integrate`] in `repo`, which is already isolated from config.
fn integrate_in(
    repo: &git2::Repository,
    base: &BranchName,
    base_commit: &str,
    branches: &[(BranchName, String)],
    time_secs: i64,
) -> Result<Integration, IntegrateError> {
    let mut current = find(repo, base, base_commit)?;
    let mut heads = Vec::with_capacity(branches.len());
    for (branch, commit) in branches {
        heads.push((branch, find(repo, branch, commit)?));
    }
    let options = merge_options();
    let when = git2::Time::new(time_secs, 0);
    let signature = git2::Signature::new(AUTHOR_NAME, AUTHOR_EMAIL, &when)
        .doing(|| "making the integration signature".to_owned())?;
    for (done, (branch, theirs)) in heads.iter().enumerate() {
        let contained = current.id() == theirs.id()
            || repo
                .graph_descendant_of(current.id(), theirs.id())
                .doing(|| format!("checking whether {branch} is already merged"))?;
        if contained {
            continue;
        }
        let mut index = repo
            .merge_commits(&current, theirs, Some(&options))
            .doing(|| format!("merging branch {branch}"))?;
        if index.has_conflicts() {
            let files = conflicting_files(&index)?;
            let with = first_conflicting(repo, &options, &heads[..done], theirs, &files)?
                .unwrap_or_else(|| base.clone());
            return Err(IntegrateError::Conflict {
                branch: (*branch).clone(),
                with,
                files,
            });
        }
        let tree = index
            .write_tree_to(repo)
            .and_then(|id| repo.find_tree(id))
            .doing(|| format!("writing the tree of the merge of {branch}"))?;
        let theirs_id = theirs.id().to_string();
        let short = theirs_id.get(..SHORT_ID).unwrap_or(&theirs_id);
        let message = format!("Merge {branch} ({short}) for a Gantry branch set\n");
        current = repo
            .commit(
                None,
                &signature,
                &signature,
                &message,
                &tree,
                &[&current, theirs],
            )
            .and_then(|id| repo.find_commit(id))
            .doing(|| format!("writing the merge commit of {branch}"))?;
    }
    Ok(Integration {
        commit: current.id().to_string(),
        tree: current.tree_id().to_string(),
        merged: heads
            .iter()
            .map(|(branch, commit)| ((*branch).clone(), commit.id().to_string()))
            .collect(),
    })
}

/// The commit `commit` (a full id) of `branch`, or why it is not usable.
fn find<'r>(
    repo: &'r git2::Repository,
    branch: &BranchName,
    commit: &str,
) -> Result<git2::Commit<'r>, IntegrateError> {
    let unknown = || IntegrateError::UnknownCommit {
        branch: branch.clone(),
        commit: commit.chars().take(64).collect(),
    };
    let oid = super::parse_commit_id(commit).ok_or_else(unknown)?;
    repo.find_commit(oid).map_err(|_| unknown())
}

/// The paths in conflict in a merged index, sorted, without duplicates.
fn conflicting_files(index: &git2::Index) -> Result<Vec<String>, IntegrateError> {
    let doing = || "listing conflicting files".to_owned();
    let mut files = Vec::new();
    for conflict in index.conflicts().doing(doing)? {
        let conflict = conflict.doing(doing)?;
        for entry in [conflict.ancestor, conflict.our, conflict.their]
            .into_iter()
            .flatten()
        {
            files.push(String::from_utf8_lossy(&entry.path).into_owned());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// The first of `earlier` whose commit, merged alone with `theirs`,
/// conflicts on one of `files`.
fn first_conflicting(
    repo: &git2::Repository,
    options: &git2::MergeOptions,
    earlier: &[(&BranchName, git2::Commit<'_>)],
    theirs: &git2::Commit<'_>,
    files: &[String],
) -> Result<Option<BranchName>, IntegrateError> {
    for (branch, commit) in earlier {
        let index = repo
            .merge_commits(commit, theirs, Some(options))
            .doing(|| format!("merging with branch {branch} alone"))?;
        if index.has_conflicts()
            && conflicting_files(&index)?
                .iter()
                .any(|file| files.binary_search(file).is_ok())
        {
            return Ok(Some((*branch).clone()));
        }
    }
    Ok(None)
}

/// The first few files of a list, for an error message.
fn show_files(files: &[String]) -> String {
    let shown = files
        .iter()
        .take(SHOWN_FILES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match files.len().saturating_sub(SHOWN_FILES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}
