//! Where the coordinator keeps its records: sled in `data_dir` (the
//! default, no server needed) or a Postgres database the team operates,
//! named by a URL whose password is kept apart, as a secret.

use super::CoordinatorConfig;
use crate::Secret;

/// The `store` that keeps records in sled, in `data_dir`.
pub const SLED: &str = "sled";

/// Default `store`: sled, so a single box and `gantry demo` need no
/// database server.
pub fn default_store() -> String {
    SLED.to_owned()
}

/// The store a coordinator opens, read from `store` and `store_password`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChoice<'a> {
    /// sled, in `data_dir`.
    Sled,
    /// Postgres at `url` (no password in it), with `password` if set.
    Postgres {
        url: &'a str,
        password: Option<&'a Secret>,
    },
}

/// Whether `url` names a Postgres database.
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Whether `url` carries a password (`scheme://user:password@...`).
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

impl CoordinatorConfig {
    /// Which store to open.
    pub fn store_choice(&self) -> StoreChoice<'_> {
        if self.store == SLED {
            StoreChoice::Sled
        } else {
            StoreChoice::Postgres {
                url: &self.store,
                password: self.store_password.as_ref(),
            }
        }
    }

    /// `store` is sled or a Postgres URL without a password in it, and
    /// `store_password` is set only for Postgres.
    pub(super) fn validate_store(
        &self,
        invalid: &dyn Fn(std::ops::Range<usize>, String) -> super::ConfigError,
        key: &dyn Fn(&str) -> std::ops::Range<usize>,
    ) -> Result<(), super::ConfigError> {
        if self.store != SLED && !is_postgres(&self.store) {
            let msg = "store must be \"sled\" or a Postgres URL, \
                       postgres://USER@HOST:PORT/DATABASE"
                .to_owned();
            return Err(invalid(key("store"), msg));
        }
        if has_password(&self.store) {
            let msg = "store: keep the password out of the URL (it is logged); \
                       put it in store_password, a secret"
                .to_owned();
            return Err(invalid(key("store"), msg));
        }
        if self.store == SLED && self.store_password.is_some() {
            let msg = "store_password is for a Postgres store; store is sled".to_owned();
            return Err(invalid(key("store_password"), msg));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_found() {
        assert!(has_password("postgres://gantry:hunter2@db:5432/gantry"));
        assert!(!has_password("postgres://gantry@db:5432/gantry"));
        assert!(!has_password("postgres://db/gantry?user=a:b"));
        assert!(!has_password("postgresql://db:5432/gantry"));
    }
}
