//! How a standby coordinator sends a client to the leader.
//!
//! Several coordinators may share one Postgres store; one leads at a time.
//! A standby refuses every request that needs the leader with
//! `UNAVAILABLE` and, when it knows the leader, names its URL in the
//! [`LEADER_METADATA`] trailer as well as in the message, so a person reads
//! where to go and a client (an agent, the CLI) goes there by itself.

/// The metadata key naming the leader's URL (`https://HOST:PORT`) on a
/// standby's refusal.
pub const LEADER_METADATA: &str = "gantry-leader";

/// The leader a refusal names, if `status` is a standby's refusal that
/// names one.
pub fn leader_of(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let url = status.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    crate::url::CoordinatorUrl::parse(url)
        .is_ok()
        .then(|| url.to_owned())
}

/// Whether `status` is a standby's refusal (with or without a leader
/// named): the request did nothing and may be sent to another coordinator.
pub fn is_standby_refusal(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().starts_with(STANDBY_PREFIX)
}

/// How every standby refusal's message starts.
pub const STANDBY_PREFIX: &str = "this coordinator is a standby";

/// A standby's refusal: it names `leader` when one is known.
pub fn standby_refusal(leader: Option<&str>) -> tonic::Status {
    match leader {
        Some(url) => {
            let mut status = tonic::Status::unavailable(format!(
                "{STANDBY_PREFIX}; the leader is {url}: send this to it (list both with \
                 --coordinator URL1,URL2 and clients move by themselves)"
            ));
            if let Ok(value) = url.parse() {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
            status
        }
        None => tonic::Status::unavailable(format!(
            "{STANDBY_PREFIX} and no coordinator leads right now (one takes over within \
             seconds of the last leader's lease running out); retry shortly"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_leader_to_people_and_to_clients() {
        let refusal = standby_refusal(Some("https://b.example:7000"));
        assert!(is_standby_refusal(&refusal));
        assert_eq!(
            leader_of(&refusal).as_deref(),
            Some("https://b.example:7000")
        );
        assert!(refusal
            .message()
            .contains("the leader is https://b.example:7000"));

        let leaderless = standby_refusal(None);
        assert!(is_standby_refusal(&leaderless));
        assert_eq!(leader_of(&leaderless), None);
    }

    #[test]
    fn other_errors_are_not_refusals_and_junk_is_not_a_leader() {
        let other = tonic::Status::unavailable("connection refused");
        assert!(!is_standby_refusal(&other));
        let mut junk = tonic::Status::unavailable(STANDBY_PREFIX);
        junk.metadata_mut()
            .insert(LEADER_METADATA, "file:///etc/passwd".parse().unwrap());
        assert_eq!(leader_of(&junk), None);
    }
}
