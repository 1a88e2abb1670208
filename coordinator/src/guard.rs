//! Every operator request passes here: it is authenticated, checked against
//! the environment's policy, and, when it changes something or is refused,
//! written to the audit trail.

use tonic::Request;

use crate::{
    audit::AuditEntry,
    auth::{Action, Principal},
    core::Core,
    error::Error,
};

/// A request field as put in an audit target: cut so a hostile value
/// cannot flood the trail (the entry escapes it).
pub fn field(value: &str) -> String {
    crate::audit::cut(value, 80)
}

impl Core {
    /// Who sent `request` for `action`; a refusal is audited, and on disk
    /// before the caller hears of it.
    pub async fn caller<T>(&self, request: &Request<T>, action: &str) -> Result<Principal, Error> {
        let e = match self.auth.authenticate(request) {
            Ok(principal) => return Ok(principal),
            Err(e) => e,
        };
        // A throttled caller is audited once per dry spell, so a flood
        // of requests cannot flood the trail.
        let who = match &e {
            Error::Throttled { first: false, .. } => return Err(e),
            Error::Throttled { who, .. } => who.clone(),
            _ => "anonymous".to_owned(),
        };
        let entry = AuditEntry::new(
            who,
            crate::auth::peer(request),
            action,
            "",
            false,
            refusal(&e),
        );
        self.audit_durably(entry).await;
        Err(e)
    }

    /// PermissionDenied unless the policy lets `who` do `check`.
    pub fn permit(&self, who: &Principal, check: Action<'_>) -> Result<(), Error> {
        match who.may(check, &self.config) {
            true => Ok(()),
            false => Err(Error::PermissionDenied(who.refusal(check, &self.config))),
        }
    }

    /// Audits the outcome of `who`'s `action` on `target`, and returns it
    /// once the entry is on disk.
    pub async fn audited<R>(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        result: Result<R, Error>,
        describe: impl FnOnce(&R) -> String,
    ) -> Result<R, Error> {
        let (allowed, detail) = match &result {
            Ok(value) => (true, describe(value)),
            Err(e) => (false, refusal(e)),
        };
        let entry = AuditEntry::new(&who.name, &who.peer, action, target, allowed, detail);
        self.audit_durably(entry).await;
        result
    }
}

/// A refusal as audited: its gRPC code and message.
fn refusal(error: &Error) -> String {
    format!("{:?}: {error}", error.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audited_fields_are_escaped_and_cut() {
        assert_eq!(field("prod"), "prod");
        let long = field(&"x".repeat(500));
        assert_eq!(long.len(), 83);
        assert!(long.ends_with("..."));
        let entry = AuditEntry::new(
            "a\nb",
            "",
            "deploy",
            "app\u{1b}[31m",
            false,
            "y".repeat(5000),
        );
        assert_eq!(entry.who, "a\\nb");
        let quoted = AuditEntry::new("o", "", "deploy", "", false, "unknown app \"x\"");
        assert_eq!(quoted.detail, "unknown app \"x\"");
        assert_eq!(entry.target, "app\\u{1b}[31m");
        assert_eq!(entry.detail.len(), 515);
    }
}
