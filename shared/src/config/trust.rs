//! The trust part of `coordinator.toml`: operators, their roles, and what
//! each environment lets each role do.

use serde::Deserialize;
use toml::Spanned;

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
