//! Resolving a branch to a commit against an app's remote, with git2, before
//! anything is scheduled.

use std::time::Duration;

use gantry_shared::{AppName, BranchName};

use crate::error::{redact_url, Error};

/// How long listing a remote's refs may take; a remote that does not answer
/// in this time is reported unreachable rather than holding the request.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The commit `branch` points to on `remote`.
pub async fn resolve_branch(
    app: &AppName,
    remote: &str,
    branch: &BranchName,
) -> Result<String, Error> {
    let unavailable = |message: String| Error::RemoteUnavailable {
        app: app.clone(),
        remote: redact_url(remote),
        message,
    };
    let url = remote.to_owned();
    let wanted = branch.full_ref();
    let task = tokio::task::spawn_blocking(move || ls_remote(&url, &wanted));
    let found = tokio::time::timeout(LS_REMOTE_TIMEOUT, task)
        .await
        .map_err(|_| unavailable(format!("no answer within {}s", LS_REMOTE_TIMEOUT.as_secs())))?
        .map_err(|e| unavailable(format!("lookup task failed: {e}")))?
        .map_err(|e| unavailable(e.message().to_owned()))?;
    found.ok_or_else(|| Error::UnknownBranch {
        app: app.clone(),
        branch: branch.clone(),
    })
}

/// Lists `url`'s refs and returns the commit of `wanted`, if present.
fn ls_remote(url: &str, wanted: &str) -> Result<Option<String>, git2::Error> {
    let mut remote = git2::Remote::create_detached(url)?;
    remote.connect(git2::Direction::Fetch)?;
    let found = remote
        .list()?
        .iter()
        .find(|head| head.name() == wanted)
        .map(|head| head.oid().to_string());
    remote.disconnect()?;
    Ok(found)
}
