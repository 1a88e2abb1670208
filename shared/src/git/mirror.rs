//! A cached bare mirror of an app's remote: fetched incrementally, read for
//! branches and commits, the way new branches reach the remote, and the
//! source of clean checkouts. The coordinator keeps one per app in its data
//! directory; each agent keeps its own.

use std::{
    cell::{Cell, RefCell},
    fmt,
    path::{Path, PathBuf},
};

use super::{parse_commit_id, redact_url, AuthAttempts, Context, Credentials, GitError};
use crate::domain::BranchName;

/// Every branch of the remote lands on the branch of the same name in the
/// mirror; `+` because branches may be force-pushed.
const FETCH_REFSPEC: &str = "+refs/heads/*:refs/heads/*";

/// Shortest abbreviated commit id [`Mirror::resolve`] accepts: git's own
/// default abbreviation, short enough to type and long enough to be rare to
/// collide.
const MIN_ABBREVIATED_ID: usize = 7;

/// Length of a full commit id in hexadecimal.
const FULL_ID: usize = 40;

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Objects received from the remote in this fetch (0 when up to date).
    pub received_objects: usize,
    /// Bytes received.
    pub received_bytes: usize,
}

/// One branch of the mirror, as a client lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchInfo {
    /// The branch.
    pub name: BranchName,
    /// The commit it points to (full id).
    pub commit: String,
    /// The commit's author's name.
    pub author_name: String,
    /// The commit's author's email.
    pub author_email: String,
    /// The commit's time (committer time), in milliseconds since the Unix
    /// epoch, like every timestamp on the wire.
    pub time_ms: i64,
    /// The first line of the commit message.
    pub subject: String,
}

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedOut {
    /// The workspace.
    pub dir: PathBuf,
    /// The commit's first line.
    pub subject: String,
    /// Its author.
    pub author: String,
}

/// A bare mirror of one remote, opened (and created on first use) at a path.
pub struct Mirror {
    /// Where the bare repository lives.
    path: PathBuf,
    /// The remote's URL; may hold credentials, so it is only shown redacted.
    remote: String,
    /// What to answer when the remote asks who we are.
    credentials: Credentials,
    /// The open repository.
    repo: git2::Repository,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("path", &self.path)
            .field("remote", &redact_url(&self.remote))
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Mirror {
    /// Opens the bare mirror at `path` for `remote`, creating an empty one if
    /// there is none yet. Nothing is fetched and nothing about the remote is
    /// stored in the repository: the URL and credentials live only here.
    pub fn open(path: &Path, remote: &str, credentials: Credentials) -> Result<Mirror, GitError> {
        let repo = match git2::Repository::open_bare(path) {
            Ok(repo) => repo,
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                std::fs::create_dir_all(path)
                    .doing(|| format!("creating mirror {}", path.display()))?;
                git2::Repository::init_bare(path)
                    .doing(|| format!("creating mirror {}", path.display()))?
            }
            Err(source) => {
                return Err(GitError::Git {
                    doing: format!("opening mirror {}", path.display()),
                    source,
                })
            }
        };
        Ok(Mirror {
            path: path.to_owned(),
            remote: remote.to_owned(),
            credentials,
            repo,
        })
    }

    /// Where the mirror lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open repository, for [`integrate`](super::integrate) and other reads.
    pub fn repo(&self) -> &git2::Repository {
        &self.repo
    }

    /// Brings every branch of the remote into the mirror: new and moved
    /// branches are updated (even when force-pushed), deleted ones removed,
    /// tags left out.
    pub fn fetch(&self) -> Result<Fetched, GitError> {
        let attempts = RefCell::new(AuthAttempts::default());
        let mut callbacks = git2::RemoteCallbacks::new();
        callbacks
            .credentials(|_url, user, allowed| self.credentials.answer(&attempts, user, allowed));
        let mut options = git2::FetchOptions::new();
        options
            .remote_callbacks(callbacks)
            .prune(git2::FetchPrune::On)
            .download_tags(git2::AutotagOption::None);
        let mut remote = self
            .repo
            .remote_anonymous(&self.remote)
            .map_err(|e| self.remote_failure("reading the remote URL", &e, &attempts))?;
        remote
            .fetch(&[FETCH_REFSPEC], Some(&mut options), None)
            .map_err(|e| self.remote_failure("fetching from the remote", &e, &attempts))?;
        let stats = remote.stats();
        Ok(Fetched {
            received_objects: stats.received_objects(),
            received_bytes: stats.received_bytes(),
        })
    }

    /// Brings the mirror up to date as [`Mirror::fetch`] does, but first
    /// lists the remote's branches and fetches only if one differs from the
    /// mirror's: a listing reads refs and writes nothing, where a fetch
    /// also negotiates and rewrites the mirror's refs.
    pub fn refresh(&self) -> Result<Fetched, GitError> {
        let attempts = RefCell::new(AuthAttempts::default());
        let mut callbacks = git2::RemoteCallbacks::new();
        callbacks
            .credentials(|_url, user, allowed| self.credentials.answer(&attempts, user, allowed));
        let mut remote = self
            .repo
            .remote_anonymous(&self.remote)
            .map_err(|e| self.remote_failure("reading the remote URL", &e, &attempts))?;
        let listed = remote
            .connect_auth(git2::Direction::Fetch, Some(callbacks), None)
            .and_then(|connection| {
                Ok(connection
                    .list()?
                    .iter()
                    .filter(|head| head.name().starts_with("refs/heads/"))
                    .map(|head| (head.name().to_owned(), head.oid()))
                    .collect::<std::collections::BTreeMap<_, _>>())
            })
            .map_err(|e| self.remote_failure("listing the remote's branches", &e, &attempts))?;
        let doing = || "listing the mirror's branches".to_owned();
        let mut ours = std::collections::BTreeMap::new();
        for reference in self.repo.references_glob("refs/heads/*").doing(doing)? {
            let reference = reference.doing(doing)?;
            if let (Ok(name), Some(oid)) = (reference.name(), reference.target()) {
                ours.insert(name.to_owned(), oid);
            }
        }
        if listed == ours {
            return Ok(Fetched::default());
        }
        self.fetch()
    }

    /// Every branch in the mirror (as of the last fetch), sorted by name.
    /// Branches whose names Gantry refuses (see [`BranchName`]) are left
    /// out, since no request could name them.
    pub fn branches(&self) -> Result<Vec<BranchInfo>, GitError> {
        let doing = || "listing the mirror's branches".to_owned();
        let mut found = Vec::new();
        for reference in self.repo.references_glob("refs/heads/*").doing(doing)? {
            let reference = reference.doing(doing)?;
            let Some(name) = reference
                .name()
                .ok()
                .and_then(|full| full.strip_prefix("refs/heads/"))
                .and_then(|name| BranchName::new(name).ok())
            else {
                continue;
            };
            let commit = reference
                .peel_to_commit()
                .doing(|| format!("reading the head of branch {name}"))?;
            let author = commit.author();
            found.push(BranchInfo {
                commit: commit.id().to_string(),
                author_name: String::from_utf8_lossy(author.name_bytes()).into_owned(),
                author_email: String::from_utf8_lossy(author.email_bytes()).into_owned(),
                time_ms: commit.time().seconds().saturating_mul(1000),
                subject: subject(&commit),
                name,
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// The commit `branch` points to in the mirror, if it has the branch.
    pub fn branch_head(&self, branch: &BranchName) -> Result<Option<String>, GitError> {
        let reference = match self.repo.find_reference(&branch.full_ref()) {
            Ok(reference) => reference,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(source) => {
                return Err(GitError::Git {
                    doing: format!("reading branch {branch}"),
                    source,
                })
            }
        };
        let commit = reference
            .peel_to_commit()
            .doing(|| format!("reading the head of branch {branch}"))?;
        Ok(Some(commit.id().to_string()))
    }

    /// The full commit id that `rev` names in the mirror: a branch name
    /// (preferred, as git does), or a full or abbreviated (at least 7 hex
    /// digits) commit id. `None` if it names nothing; an abbreviation that
    /// matches several commits is an error.
    pub fn resolve(&self, rev: &str) -> Result<Option<String>, GitError> {
        if let Ok(branch) = BranchName::new(rev) {
            if let Some(commit) = self.branch_head(&branch)? {
                return Ok(Some(commit));
            }
        }
        let hex = (MIN_ABBREVIATED_ID..=FULL_ID).contains(&rev.len())
            && rev.chars().all(|c| c.is_ascii_hexdigit());
        if !hex {
            return Ok(None);
        }
        match self.repo.find_commit_by_prefix(rev) {
            Ok(commit) => Ok(Some(commit.id().to_string())),
            Err(e) if e.code() == git2::ErrorCode::Ambiguous => {
                Err(GitError::AmbiguousCommit(rev.to_owned()))
            }
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(source) => Err(GitError::Git {
                doing: format!("looking up commit {rev}"),
                source,
            }),
        }
    }

    /// Whether the mirror holds the commit with this full id.
    pub fn has_commit(&self, commit: &str) -> bool {
        parse_commit_id(commit).is_some_and(|oid| self.repo.find_commit(oid).is_ok())
    }

    /// Creates branch `name` at `commit` on the remote, then in the mirror.
    /// The caller fetches first: a branch the mirror already has is refused
    /// with [`GitError::BranchExists`] without contacting the remote, and so
    /// is one that appeared on the remote since (seen while negotiating the
    /// push), so an existing branch is never moved.
    pub fn create_branch(&self, name: &BranchName, commit: &str) -> Result<(), GitError> {
        let oid =
            parse_commit_id(commit).ok_or_else(|| GitError::InvalidCommitId(commit.to_owned()))?;
        if self.repo.find_commit(oid).is_err() {
            return Err(GitError::MissingCommit(commit.to_owned()));
        }
        if self.branch_head(name)?.is_some() {
            return Err(GitError::BranchExists(name.clone()));
        }
        let target = name.full_ref();
        let attempts = RefCell::new(AuthAttempts::default());
        let exists_on_remote = Cell::new(false);
        let rejected = RefCell::new(None::<String>);
        let mut callbacks = git2::RemoteCallbacks::new();
        callbacks
            .credentials(|_url, user, allowed| self.credentials.answer(&attempts, user, allowed));
        callbacks.push_negotiation(|updates| {
            if updates.iter().any(|update| !update.src().is_zero()) {
                exists_on_remote.set(true);
                return Err(git2::Error::from_str("the branch exists on the remote"));
            }
            Ok(())
        });
        callbacks.push_update_reference(|_refname, status| {
            if let Some(status) = status {
                *rejected.borrow_mut() = Some(status.to_owned());
            }
            Ok(())
        });
        let mut options = git2::PushOptions::new();
        options.remote_callbacks(callbacks);
        let mut remote = self
            .repo
            .remote_anonymous(&self.remote)
            .map_err(|e| self.remote_failure("reading the remote URL", &e, &attempts))?;
        let pushed = remote.push(&[format!("{oid}:{target}")], Some(&mut options));
        if exists_on_remote.get() {
            return Err(GitError::BranchExists(name.clone()));
        }
        pushed
            .map_err(|e| self.remote_failure(&format!("pushing branch {name}"), &e, &attempts))?;
        if let Some(message) = rejected.take() {
            return Err(GitError::PushRejected {
                branch: name.clone(),
                remote: redact_url(&self.remote),
                message: self.credentials.redact(&message),
            });
        }
        self.repo
            .reference(&target, oid, true, "gantry: branch created on the remote")
            .doing(|| format!("recording branch {name} in the mirror"))?;
        Ok(())
    }

    /// Replaces `workspace` with a clean checkout of `commit`: nothing of an
    /// earlier build survives, so every build starts afresh.
    pub fn checkout(&self, commit: &str, workspace: &Path) -> Result<CheckedOut, GitError> {
        let oid =
            parse_commit_id(commit).ok_or_else(|| GitError::InvalidCommitId(commit.to_owned()))?;
        let found = self
            .repo
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
        self.repo
            .checkout_tree(found.as_object(), Some(&mut options))
            .doing(|| format!("checking out {commit} into {}", workspace.display()))?;
        let author = String::from_utf8_lossy(found.author().name_bytes()).into_owned();
        Ok(CheckedOut {
            dir: workspace.to_owned(),
            subject: subject(&found),
            author,
        })
    }

    /// The error for a failed exchange with the remote, with the URL, the
    /// message and the token redacted.
    fn remote_failure(
        &self,
        doing: &str,
        error: &git2::Error,
        attempts: &RefCell<AuthAttempts>,
    ) -> GitError {
        let remote = redact_url(&self.remote);
        let attempts = attempts.borrow();
        match attempts.failure() {
            Some(reason) => GitError::Authentication {
                remote,
                message: reason.to_owned(),
            },
            None => GitError::Remote {
                remote,
                doing: doing.to_owned(),
                message: self.credentials.redact(error.message()),
            },
        }
    }
}

/// A commit's first line, lossily decoded.
fn subject(commit: &git2::Commit<'_>) -> String {
    commit
        .summary_bytes()
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .unwrap_or_default()
}
