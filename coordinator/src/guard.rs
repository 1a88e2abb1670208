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

/// A request field as written into the audit trail: escaped, and cut so a
/// hostile value cannot flood the trail.
pub fn field(value: &str) -> String {
    const MAX: usize = 80;
    let escaped: String = value.escape_debug().collect();
    match escaped.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &escaped[..cut]),
        None => escaped,
    }
}

impl Core {
    /// Who sent `request` for `action`; a refusal is audited.
    pub fn caller<T>(&self, request: &Request<T>, action: &str) -> Result<Principal, Error> {
        self.auth.authenticate(request).inspect_err(|e| {
            // A throttled address is audited once per dry spell, so a flood
            // of bad tokens cannot flood the trail.
            if matches!(e, Error::Throttled { first: false, .. }) {
                return;
            }
            self.audit(AuditEntry::new(
                "anonymous",
                crate::auth::peer(request),
                action,
                "",
                false,
                refusal(e),
            ));
        })
    }

    /// PermissionDenied unless the policy lets `who` do `check`.
    pub fn permit(&self, who: &Principal, check: Action<'_>) -> Result<(), Error> {
        match who.may(check, &self.config) {
            true => Ok(()),
            false => Err(Error::PermissionDenied(who.refusal(check, &self.config))),
        }
    }

    /// Audits the outcome of `who`'s `action` on `target`, and returns it.
    pub fn audited<R>(
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
        self.audit(AuditEntry::new(
            &who.name, &who.peer, action, target, allowed, detail,
        ));
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
        assert_eq!(field("a\nb"), "a\\nb");
        let long = field(&"x".repeat(500));
        assert_eq!(long.len(), 83);
        assert!(long.ends_with("..."));
    }
}
