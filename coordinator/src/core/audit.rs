//! The audit trail in the core: entries written (before an answer, where
//! the answer depends on them) and read back a page at a time.

use tracing::{error, info, warn};

use super::Core;
use crate::{audit::AuditEntry, error::Error, store::Durable};

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
