//! Request fields checked at the edge: each becomes a domain type that
//! cannot hold a bad value, or the request is refused with InvalidArgument
//! naming the field.

use gantry_shared::{proto, AppName, BranchName, EnvName};

use crate::{core::BranchRequest, error::Error};

/// An optional name: empty means "not given".
pub fn optional<T>(
    value: String,
    parse: impl FnOnce(String) -> Result<T, gantry_shared::NameError>,
) -> Result<Option<T>, Error> {
    if value.is_empty() {
        Ok(None)
    } else {
        Ok(Some(parse(value)?))
    }
}

/// A required field: empty is InvalidArgument naming it.
pub fn required<T>(
    what: &str,
    value: String,
    parse: impl FnOnce(String) -> Result<T, gantry_shared::NameError>,
) -> Result<T, Error> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} is required")));
    }
    Ok(parse(value)?)
}

/// Branch names, each checked.
pub fn names(values: Vec<String>) -> Result<Vec<BranchName>, Error> {
    values
        .into_iter()
        .map(|v| BranchName::new(v).map_err(Error::from))
        .collect()
}

/// `branch` and `branches` together: the single field is kept for simple
/// clients, the list for sets; both at once is ambiguous.
fn branch_list(branch: Option<BranchName>, list: Vec<String>) -> Result<Vec<BranchName>, Error> {
    match (branch, list.is_empty()) {
        (None, _) => names(list),
        (Some(branch), true) => Ok(vec![branch]),
        (Some(_), false) => Err(Error::InvalidArgument(
            "give the branch either in `branch` or in `branches`, not both".into(),
        )),
    }
}

/// How many releases to return: 0 means 20, at most 1000.
pub fn release_limit(limit: u32) -> usize {
    match limit {
        0 => 20,
        n => n.min(1000) as usize,
    }
}

/// A deploy request checked: the app, the environment and what to deploy.
pub fn deploy_request(
    req: proto::DeployRequest,
) -> Result<(AppName, EnvName, BranchRequest), Error> {
    let app = required("app", req.app, AppName::new)?;
    let env = required("env", req.env, EnvName::new)?;
    let branches = branch_list(optional(req.branch, BranchName::new)?, req.branches)?;
    let add = names(req.add)?;
    let remove = names(req.remove)?;
    let wanted = match (branches.is_empty(), add.is_empty() && remove.is_empty()) {
        (_, true) => BranchRequest::set(branches)?,
        (true, false) => BranchRequest::change(add, remove)?,
        (false, false) => {
            return Err(Error::InvalidArgument(
                "give either the branches to deploy or --add/--remove changes to the \
                 current set, not both"
                    .into(),
            ))
        }
    };
    Ok((app, env, wanted))
}
