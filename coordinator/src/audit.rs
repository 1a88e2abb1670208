//! An entry of the audit trail: every change and every refused attempt,
//! who, when, what and from where. Entries are only ever appended (see
//! [`crate::core`] for writing and reading them).

use gantry_shared::{now_ms, proto};
use serde::{Deserialize, Serialize};

/// One audited action or refused attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the trail, from 1.
    pub seq: u64,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Who: a user, `agent:NAME`, or `anonymous`.
    pub who: String,
    /// The peer address.
    pub peer: String,
    /// What: `deploy`, `rollback`, `approve`, `revoke`, `agent-connect`...
    pub action: String,
    /// On what: `app shop env prod`, `job 12`, `agent prod-1`...
    pub target: String,
    /// Whether it was allowed.
    pub allowed: bool,
    /// The outcome, or the refusal's code and message.
    pub detail: String,
}

/// `value` with control characters escaped (so a value cannot forge lines
/// in a log or a terminal) and cut after `max` characters.
pub fn clean(value: &str, max: usize) -> String {
    let escaped: String = value
        .chars()
        .flat_map(|c| {
            let escape = c.is_control().then(|| c.escape_default());
            let plain = (!c.is_control()).then_some(c);
            escape.into_iter().flatten().chain(plain)
        })
        .collect();
    cut(&escaped, max)
}

/// `value` cut after `max` characters, marked with "...".
pub fn cut(value: &str, max: usize) -> String {
    match value.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_owned(),
    }
}

impl AuditEntry {
    /// A new entry stamped now; the store numbers it. Every field is
    /// escaped and cut: parts of it come from callers.
    pub fn new(
        who: impl Into<String>,
        peer: impl Into<String>,
        action: &str,
        target: impl Into<String>,
        allowed: bool,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            seq: 0,
            at_ms: now_ms(),
            who: clean(&who.into(), 80),
            peer: clean(&peer.into(), 64),
            action: clean(action, 32),
            target: clean(&target.into(), 200),
            allowed,
            detail: clean(&detail.into(), 512),
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::AuditEntry {
        proto::AuditEntry {
            seq: self.seq,
            at_ms: self.at_ms,
            who: self.who.clone(),
            peer: self.peer.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            allowed: self.allowed,
            detail: self.detail.clone(),
        }
    }
}
