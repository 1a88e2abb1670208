//! Gantry's git work, with git2, shared by the coordinator and the agent: a
//! cached bare mirror of an app's remote (fetch, list branches, resolve,
//! create a branch, check out a commit) and the deterministic integration
//! commit of a branch set, which the agent recomputes from its own mirror to
//! prove it builds exactly what the coordinator checked.
//!
//! Every function blocks (on the network or the disk): async callers run it
//! with `spawn_blocking`. Credentials never appear in an error: every message
//! that comes from a remote passes through [`redact_url`] first.

use std::{cell::RefCell, fmt, path::PathBuf};

use crate::domain::BranchName;

mod integrate;
mod mirror;
#[cfg(test)]
mod tests;

pub use integrate::{check_integration, integrate, IntegrateError, Integration};
pub use mirror::{BranchInfo, CheckedOut, Fetched, Mirror};

/// Git failures, each saying what was being done; URLs and messages from a
/// remote are already redacted.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A local git2 operation on the mirror failed.
    #[error("{doing}: {source}")]
    Git {
        /// What was being done.
        doing: String,
        /// What git said.
        source: git2::Error,
    },
    /// A file or directory could not be prepared.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done.
        doing: String,
        /// Why.
        source: std::io::Error,
    },
    /// Talking to the remote failed (unreachable, not a repository, ...).
    #[error("{doing} ({remote}): {message}")]
    Remote {
        /// The remote, without credentials.
        remote: String,
        /// What was being done.
        doing: String,
        /// What git said, without credentials.
        message: String,
    },
    /// The remote refused the configured credentials, or asked for some
    /// that are not configured.
    #[error("authentication failed for {remote}: {message}; check the username, token or SSH key in the coordinator config")]
    Authentication {
        /// The remote, without credentials.
        remote: String,
        /// What was tried, without credentials.
        message: String,
    },
    /// The branch to create already exists (in the mirror or on the remote).
    #[error("branch \"{0}\" already exists; pick another name")]
    BranchExists(BranchName),
    /// The remote refused to update a branch.
    #[error("the remote {remote} refused to update branch \"{branch}\": {message}")]
    PushRejected {
        /// The branch pushed.
        branch: BranchName,
        /// The remote, without credentials.
        remote: String,
        /// The remote's reason, without credentials.
        message: String,
    },
    /// A commit is not in the mirror.
    #[error("commit {0} is not in the mirror after fetching (was its branch force-pushed?)")]
    MissingCommit(String),
    /// A text that should be a commit id is not one.
    #[error("{0:?} is not a commit id (40 hexadecimal digits)")]
    InvalidCommitId(String),
    /// An abbreviated commit id matches more than one object.
    #[error("{0:?} matches more than one commit; give more digits")]
    AmbiguousCommit(String),
}

/// Adds what was being done to a git2 or I/O error.
pub(crate) trait Context<T> {
    /// Wraps the error with `what()`, computed only on failure.
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

/// Parses a full commit id (40 hex digits, either case). Abbreviations are
/// refused here: they are only accepted by [`Mirror::resolve`], which checks
/// them against the mirror.
pub(crate) fn parse_commit_id(text: &str) -> Option<git2::Oid> {
    let oid = git2::Oid::from_str(text).ok()?;
    (oid.to_string() == text.to_ascii_lowercase()).then_some(oid)
}

/// Credentials for a remote, from the coordinator's config. Its `Debug`
/// shows whether a token is set, never the token.
#[derive(Clone, Default)]
pub struct Credentials {
    /// User name for HTTPS (default `gantry`, which hosts ignore for tokens)
    /// and SSH (default: the URL's user, else `git`).
    pub username: Option<String>,
    /// Token or password for HTTPS remotes.
    pub token: Option<String>,
    /// Private key file for SSH remotes.
    pub ssh_key: Option<PathBuf>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ssh_key", &self.ssh_key)
            .finish()
    }
}

/// Which credentials libgit2 has already been given during one operation.
/// libgit2 asks again after the remote refuses one, so each kind is offered
/// once, and a second request ends the operation instead of looping.
#[derive(Debug, Default)]
pub(crate) struct AuthAttempts {
    /// The SSH user name was offered.
    username: bool,
    /// The token was offered.
    token: bool,
    /// The SSH key was offered.
    ssh_key: bool,
    /// Why authentication gave up, if it did.
    failed: Option<String>,
}

impl AuthAttempts {
    /// Why authentication gave up, if it did during the operation.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

impl Credentials {
    /// Answers libgit2's request for credentials of one of the `allowed`
    /// kinds, recording what was offered in `attempts`.
    pub(crate) fn answer(
        &self,
        attempts: &RefCell<AuthAttempts>,
        username_from_url: Option<&str>,
        allowed: git2::CredentialType,
    ) -> Result<git2::Cred, git2::Error> {
        use git2::CredentialType as Kind;
        let mut tried = attempts.borrow_mut();
        let ssh_user = username_from_url
            .or(self.username.as_deref())
            .unwrap_or("git");
        if allowed.contains(Kind::USERNAME) && !tried.username {
            tried.username = true;
            return git2::Cred::username(ssh_user);
        }
        if allowed.contains(Kind::SSH_KEY) && !tried.ssh_key {
            if let Some(key) = &self.ssh_key {
                tried.ssh_key = true;
                return git2::Cred::ssh_key(ssh_user, None, key, None);
            }
        }
        if allowed.contains(Kind::USER_PASS_PLAINTEXT) && !tried.token {
            if let Some(token) = &self.token {
                tried.token = true;
                let user = self.username.as_deref().unwrap_or("gantry");
                return git2::Cred::userpass_plaintext(user, token);
            }
        }
        let reason = if tried.token || tried.ssh_key {
            "the remote refused the configured credentials".to_owned()
        } else {
            format!("the remote asks for credentials ({allowed:?}) and none of that kind are configured")
        };
        tried.failed = Some(reason.clone());
        Err(git2::Error::from_str(&reason))
    }

    /// `text` without any URL credentials and without the token itself.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = redact_url(text);
        if let Some(token) = &self.token {
            // The Redactor also hides overlapping matches ("abab" in "ababab").
            text = crate::Redactor::new([token.clone()]).redact(text);
        }
        text
    }
}

/// `url` without the password of its userinfo (`scheme://user:pw@host/..`
/// becomes `scheme://user@host/..`): what a remote URL that holds the
/// coordinator's own credential may be given to others as. A URL without
/// one is returned as it is.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    format!("{scheme}://{user}@{}", &rest[at + 1..])
}

/// Removes credentials (`user:token@`) from every URL in `text`, so a URL or a
/// message that quotes one can be shown or logged. Everything between `://`
/// and the last `@` of the URL is replaced, which errs on the side of hiding.
/// A URL ends at whitespace or at a character URLs cannot hold unencoded
/// (`"`, `<`, `>`, `` ` ``); not at `'`, which a user or password may hold.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>' | '`'))
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match url.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&url[at + 1..]);
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
