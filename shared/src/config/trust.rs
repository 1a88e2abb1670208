//! The trust part of `coordinator.toml`: operators, their roles, and what
//! each environment lets each role do.

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::CoordinatorConfig;

/// Roles that deploy to an environment whose policy names none: ops only,
/// so a new environment is closed until someone opens it on purpose.
pub fn default_deploy_roles() -> Vec<String> {
    vec!["ops".into()]
}

/// Roles that may revoke agents and read the audit trail.
pub fn default_admin_roles() -> Vec<String> {
    vec!["ops".into()]
}

/// Connections one address may hold: an agent holds one, a `gantry`
/// command one, and a hundred log followers on one workstation fit twice
/// over, while one host cannot take the descriptors of thousands.
pub fn default_max_connections_per_address() -> usize {
    256
}

/// Requests per minute one operator may make: a person or a script polling
/// every second stays well under it; a runaway loop is stopped.
pub fn default_rate_limit_per_minute() -> u32 {
    600
}

/// One operator: a person or a bot with an API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The name shown in jobs, releases and the audit trail.
    pub name: Spanned<String>,
    /// Their roles, e.g. `["developer"]`.
    pub roles: Vec<String>,
    /// SHA-256 (hex) of their API token, as printed by
    /// `gantry-coordinator token new`. The token itself is never stored.
    pub token_sha256: String,
}

/// Whether `role` is a usable role name: lowercase letters, digits, '-'.
pub fn is_role_name(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 32
        && role.starts_with(|c: char| c.is_ascii_lowercase())
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `hash` looks like a SHA-256 in lowercase hex.
pub fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

impl CoordinatorConfig {
    /// The trust settings are sound: plaintext only on loopback, valid
    /// role names, unique users with well-formed token hashes.
    pub(super) fn validate_trust(
        &self,
        invalid: &dyn Fn(std::ops::Range<usize>, String) -> super::ConfigError,
    ) -> Result<(), super::ConfigError> {
        if self.plaintext && !self.listen.ip().is_loopback() {
            let msg = format!(
                "plaintext = true is allowed only on a loopback address, and listen is {}; \
                 run `gantry-coordinator ca init` and drop plaintext, or listen on 127.0.0.1",
                self.listen
            );
            return Err(invalid(0..0, msg));
        }
        if self.rate_limit_per_minute == 0 {
            return Err(invalid(
                0..0,
                "rate_limit_per_minute must be at least 1".into(),
            ));
        }
        if self.max_connections_per_address == 0 {
            return Err(invalid(
                0..0,
                "max_connections_per_address must be at least 1".into(),
            ));
        }
        for env in &self.environments {
            let roles = env
                .deploy
                .iter()
                .chain(env.rollback_roles())
                .chain(&env.approve);
            if let Some(bad) = roles.clone().find(|r| !is_role_name(r)) {
                let msg = format!("environment {}: {bad:?} is not a valid role name (use lowercase letters, digits and '-')", env.name());
                return Err(invalid(env.name.span(), msg));
            }
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for user in &self.users {
            let at = user.name.span();
            let name = user.name.get_ref();
            if !is_role_name(name) {
                let msg = format!(
                    "user {name:?}: use lowercase letters, digits and '-', starting with a letter"
                );
                return Err(invalid(at, msg));
            }
            if !names.insert(name) {
                return Err(invalid(at, format!("user {name:?} is declared twice")));
            }
            if !is_sha256_hex(&user.token_sha256) {
                let msg = format!("user {name:?}: token_sha256 must be 64 lowercase hex digits, as printed by `gantry-coordinator token new`");
                return Err(invalid(at, msg));
            }
            if !hashes.insert(&user.token_sha256) {
                return Err(invalid(
                    at,
                    format!("user {name:?} has the same token as another user"),
                ));
            }
            if let Some(bad) = user.roles.iter().find(|r| !is_role_name(r)) {
                return Err(invalid(
                    at,
                    format!("user {name:?}: {bad:?} is not a valid role name"),
                ));
            }
        }
        Ok(())
    }
}
