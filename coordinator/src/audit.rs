//! The audit trail: every change and every refused attempt, who, when, what
//! and from where. Entries are only ever appended.

use gantry_shared::{now_ms, proto};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{core::Core, error::Error, store::Durable};

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

/// Most entries one `ListAudit` answer holds. An entry's fields are cut
/// to 80 + 64 + 32 + 200 + 512 characters, so one encodes to at most
/// ~3.6 KB (four bytes a character); 500 keep a page under 2 MB, half the
/// 4 MiB message cap, whatever the trail holds.
pub const MAX_AUDIT_PAGE: usize = 500;

/// Entries a `ListAudit` that names no limit gets.
pub const DEFAULT_AUDIT_PAGE: usize = 100;

/// One page of the trail, newest first.
#[derive(Debug)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// When older entries remain: the seq to read on from (exclusive).
    pub next_before_seq: Option<u64>,
}

impl Core {
    /// Up to `limit` entries (0: [`DEFAULT_AUDIT_PAGE`], at most
    /// [`MAX_AUDIT_PAGE`]) older than `before_seq` (0: from the newest).
    pub async fn audit_page(&self, before_seq: u64, limit: u32) -> Result<AuditPage, Error> {
        let limit = match limit {
            0 => DEFAULT_AUDIT_PAGE,
            n => usize::try_from(n)
                .unwrap_or(MAX_AUDIT_PAGE)
                .min(MAX_AUDIT_PAGE),
        };
        let before = (before_seq != 0).then_some(before_seq);
        let (entries, more) = self.store.audit(before, limit).await?;
        let next_before_seq = entries.last().filter(|_| more).map(|e| e.seq);
        Ok(AuditPage {
            entries,
            next_before_seq,
        })
    }

    /// Appends `entry` to the trail and returns once it is durable, so
    /// that an operator who has been answered (a deploy accepted, a
    /// request refused) finds the entry after a crash.
    pub async fn audit_durably(&self, entry: AuditEntry) {
        if let Some(durable) = self.record(entry).await {
            if let Err(e) = durable.await {
                error!(error = %e, "cannot write the audit trail to disk");
            }
        }
    }

    /// Appends `entry` to the trail and to the log; durable with the
    /// store's next commit (see [`Core::audit_durably`] for before an
    /// answer).
    pub async fn audit(&self, entry: AuditEntry) {
        // Not waited for: a failed commit stops the scheduler at its next
        // write, and the coordinator with it.
        let _ = self.record(entry).await;
    }

    /// Writes `entry`; its durability, or `None` when it was not stored.
    async fn record(&self, entry: AuditEntry) -> Option<Durable> {
        if entry.allowed {
            info!(who = %entry.who, peer = %entry.peer, action = %entry.action, target = %entry.target, detail = %entry.detail, "audit");
        } else {
            warn!(who = %entry.who, peer = %entry.peer, action = %entry.action, target = %entry.target, detail = %entry.detail, "audit: refused");
        }
        match self.store.append_audit(entry).await {
            Ok((_, durable)) => Some(durable),
            Err(e) => {
                error!(error = %e, "cannot store an audit entry");
                None
            }
        }
    }
}
