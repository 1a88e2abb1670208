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
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = match &err {
            Error::InvalidName(_) | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::UnknownApp { .. }
            | Error::UnknownEnv { .. }
            | Error::UnknownBranch { .. }
            | Error::UnknownJob(_) => Code::NotFound,
            Error::RemoteUnavailable { .. } => Code::Unavailable,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Store(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        Status::new(code, err.to_string())
    }
}

/// Removes credentials (`user:token@`) from a URL before it is shown.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

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
