//! The audit trail: every change and every refused attempt, who, when, what
//! and from where. Entries are only ever appended.

use gantry_shared::{now_ms, proto};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::core::Core;

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

impl AuditEntry {
    /// A new entry stamped now; the store numbers it.
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
            who: who.into(),
            peer: peer.into(),
            action: action.into(),
            target: target.into(),
            allowed,
            detail: detail.into(),
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

impl Core {
    /// Appends `entry` to the trail and to the log.
    pub fn audit(&self, entry: AuditEntry) {
        if entry.allowed {
            info!(who = %entry.who, peer = %entry.peer, action = %entry.action, target = %entry.target, detail = %entry.detail, "audit");
        } else {
            warn!(who = %entry.who, peer = %entry.peer, action = %entry.action, target = %entry.target, detail = %entry.detail, "audit: refused");
        }
        if let Err(e) = self.store.append_audit(entry) {
            warn!(error = %e, "cannot store an audit entry");
        }
    }
}
