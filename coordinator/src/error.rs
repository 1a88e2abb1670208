//! The coordinator's one error type, and its single mapping to gRPC status
//! codes: a caller always learns whether to fix the request, wait, or call
//! for help.

use gantry_shared::{AppName, BranchName, EnvName, JobId, NameError};
use tonic::{Code, Status};

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name or value in the request is malformed.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A request field is missing or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The app is not configured.
    #[error("unknown app \"{app}\"; configured apps: {known}")]
    UnknownApp {
        /// The app asked for.
        app: AppName,
        /// The configured ones, comma-separated.
        known: String,
    },
    /// The environment is not configured.
    #[error("unknown environment \"{env}\"; configured environments: {known}")]
    UnknownEnv {
        /// The environment asked for.
        env: EnvName,
        /// The configured ones, in order.
        known: String,
    },
    /// The branch is not on the app's remote.
    #[error("branch \"{branch}\" does not exist on the remote of app \"{app}\"; push it first or check its spelling")]
    UnknownBranch {
        /// The app.
        app: AppName,
        /// The branch asked for.
        branch: BranchName,
    },
    /// No such job.
    #[error("job {0} does not exist")]
    UnknownJob(JobId),
    /// No such agent.
    #[error("{0}")]
    UnknownAgent(String),
    /// No such release of (app, env).
    #[error("app \"{app}\" has no release {number} in {env}; {known}")]
    UnknownRelease {
        /// The app.
        app: AppName,
        /// The environment.
        env: EnvName,
        /// The number asked for.
        number: u64,
        /// What exists, for people ("its releases are 1 to 7").
        known: String,
    },
    /// The app's remote could not be reached or read.
    #[error("cannot reach the git remote of app \"{app}\" ({remote}): {message}; check the remote URL and credentials in the coordinator config")]
    RemoteUnavailable {
        /// The app.
        app: AppName,
        /// Its remote, without credentials.
        remote: String,
        /// What git said.
        message: String,
    },
    /// The request conflicts with the job's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// What the request would create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The remote refused a push.
    #[error("the remote refused: {0}; check the credentials' rights in the coordinator config")]
    RemoteRefused(String),
    /// The branches of a set do not merge.
    #[error("branch \"{branch}\" conflicts with {with} in {files}; merge or rebase one onto the other, or deploy them separately")]
    MergeConflict {
        /// The branch that could not be merged.
        branch: BranchName,
        /// What it conflicts with ("branch \"feature/a\"" or "the default branch \"main\"").
        with: String,
        /// The conflicting files, comma-separated.
        files: String,
    },
    /// The git mirror failed locally.
    #[error("git mirror error: {0}")]
    Git(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials, but the policy does not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// An agent's session sent an event for a job it does not hold.
    #[error("{0}")]
    NotHolder(String),
    /// Too many requests from one caller, or too many failed
    /// authentications from one address.
    #[error("{message}")]
    Throttled {
        /// What to tell the caller.
        message: String,
        /// Who was held back: a user, or "anonymous".
        who: String,
        /// The first refusal since the bucket ran dry: audit this one only.
        first: bool,
    },
    /// The coordinator cannot serve this now (it is stopping).
    #[error("{0}")]
    Unavailable(String),
    /// A bound on something held open (streams, tails) is reached.
    #[error("{0}")]
    TooMany(String),
}

impl Error {
    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidName(_) | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::UnknownApp { .. }
            | Error::UnknownEnv { .. }
            | Error::UnknownBranch { .. }
            | Error::UnknownJob(_)
            | Error::UnknownAgent(_)
            | Error::UnknownRelease { .. } => Code::NotFound,
            Error::RemoteUnavailable { .. }
            | Error::Unavailable(_)
            // Another coordinator leads: the request may be sent there.
            | Error::Store(StoreError::NotLeader | StoreError::Fenced { .. }) => Code::Unavailable,
            Error::FailedPrecondition(_)
            | Error::RemoteRefused(_)
            | Error::MergeConflict { .. } => Code::FailedPrecondition,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) | Error::NotHolder(_) => Code::PermissionDenied,
            Error::Throttled { .. } | Error::TooMany(_) => Code::ResourceExhausted,
            Error::Store(_) | Error::Git(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = err.code();
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        Status::new(code, err.to_string())
    }
}

/// Removes credentials (`user:token@`) from URLs before they are shown.
pub use gantry_shared::git::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(
            redact_url("https://bot:s3cret@git.example.com/shop.git"),
            "https://***@git.example.com/shop.git"
        );
        assert_eq!(redact_url("file:///srv/shop.git"), "file:///srv/shop.git");
        assert_eq!(redact_url("git@host:shop.git"), "git@host:shop.git");
    }

    #[test]
    fn codes_match_what_the_caller_must_do() {
        let app = AppName::new("shop").unwrap();
        let s: Status = Error::UnknownApp {
            app,
            known: "a".into(),
        }
        .into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = Error::InvalidName(BranchName::new("-x").unwrap_err()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
