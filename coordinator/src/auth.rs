//! Who an operator request comes from, and what they may do.
//!
//! Operators send `authorization: Bearer TOKEN`; the coordinator keeps only
//! SHA-256 hashes of tokens (in `[[users]]`), so the config file leaks no
//! credential. Each environment names the roles that may deploy, roll back
//! and approve there. With no users configured and plaintext on loopback,
//! every caller is a trusted local user (the demo, a laptop).

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use gantry_shared::{
    config::{CoordinatorConfig, EnvironmentConfig},
    tls::fingerprint,
};
use tonic::Request;

use crate::{
    error::Error,
    rate::{Limited, RateLimiter},
};

/// The request header naming the person asking in open (tokenless) mode.
pub const USER_HEADER: &str = "gantry-user";

/// Someone whose request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Their name.
    pub name: String,
    /// Their roles.
    pub roles: BTreeSet<String>,
    /// A trusted local caller (open mode): may do everything.
    pub local: bool,
    /// The peer address the request came from.
    pub peer: String,
}

/// Something a policy allows or not.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Deploy to this environment.
    Deploy(&'a EnvironmentConfig),
    /// Cancel someone else's deploy in this environment (same roles).
    Cancel(&'a EnvironmentConfig),
    /// Roll back in this environment.
    Rollback(&'a EnvironmentConfig),
    /// Approve or reject deploys to this environment.
    Approve(&'a EnvironmentConfig),
    /// Create branches on apps' remotes: whoever deploys somewhere.
    CreateBranch,
    /// Revoke agents, read the audit trail.
    Admin,
}

impl Action<'_> {
    /// What it is, for a refusal, and the roles it takes.
    fn describe(self, config: &CoordinatorConfig) -> (String, Vec<String>) {
        match self {
            Action::Deploy(env) => (format!("deploy to {}", env.name()), env.deploy.clone()),
            Action::Cancel(env) => (
                format!("cancel others' deploys in {}", env.name()),
                env.deploy.clone(),
            ),
            Action::Rollback(env) => (
                format!("roll back {}", env.name()),
                env.rollback_roles().to_vec(),
            ),
            Action::Approve(env) => (
                format!("approve deploys to {}", env.name()),
                env.approve.clone(),
            ),
            Action::CreateBranch => {
                let roles: BTreeSet<String> = config
                    .environments
                    .iter()
                    .flat_map(|e| e.deploy.iter().cloned())
                    .collect();
                ("create branches".into(), roles.into_iter().collect())
            }
            Action::Admin => (
                "revoke agents or read the audit trail".into(),
                config.admins.clone(),
            ),
        }
    }
}

impl Principal {
    /// Whether the policy in `config` lets them do `action`.
    pub fn may(&self, action: Action<'_>, config: &CoordinatorConfig) -> bool {
        let (_, roles) = action.describe(config);
        self.local || roles.iter().any(|r| self.roles.contains(r))
    }

    /// Why `action` is refused, for the caller: what role it takes.
    pub fn refusal(&self, action: Action<'_>, config: &CoordinatorConfig) -> String {
        let (what, roles) = action.describe(config);
        let have = match self.roles.is_empty() {
            true => "no role".to_owned(),
            false => format!("roles {}", join(&self.roles)),
        };
        match roles.is_empty() {
            true => format!("{} may not {what}: no role may", self.name),
            false => format!(
                "{} ({have}) may not {what}; that takes the role {}",
                self.name,
                roles.join(" or ")
            ),
        }
    }
}

fn join<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    items
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks tokens and rates.
pub struct Auth {
    /// Token hash -> (name, roles).
    users: HashMap<String, (String, BTreeSet<String>)>,
    /// No tokens: every caller is a trusted local user.
    open: bool,
    per_minute: u32,
    /// Requests per operator.
    requests: RateLimiter<String>,
    /// Failed authentications per address.
    failures: RateLimiter<IpAddr>,
    /// Failed authentications from all addresses together.
    failures_everywhere: RateLimiter<()>,
}

/// Failed authentications one address may make per minute before it is
/// held back: a person mistyping a token never gets near it, a token
/// guesser (or a flood of audit entries) is stopped.
pub const FAILED_AUTH_PER_MINUTE: u32 = 30;

/// Failed authentications all addresses together may make per minute
/// before every further one is held back: a team mistyping tokens stays
/// far below it, while a guesser rotating through addresses (each under
/// [`FAILED_AUTH_PER_MINUTE`]) gets no more refusals audited, and no more
/// store writes, than this.
pub const FAILED_AUTH_PER_MINUTE_ALL: u32 = 120;

/// The peer address of `request`, or "unknown".
pub fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

impl Auth {
    /// From the `[[users]]` of `config`.
    pub fn new(config: &CoordinatorConfig) -> Self {
        let users = config
            .users
            .iter()
            .map(|u| {
                let roles = u.roles.iter().cloned().collect();
                (u.token_sha256.clone(), (u.name.get_ref().clone(), roles))
            })
            .collect();
        Self {
            users,
            open: config.users.is_empty() && config.plaintext,
            per_minute: config.rate_limit_per_minute,
            requests: RateLimiter::new(config.rate_limit_per_minute),
            failures: RateLimiter::new(FAILED_AUTH_PER_MINUTE),
            failures_everywhere: RateLimiter::new(FAILED_AUTH_PER_MINUTE_ALL),
        }
    }

    /// Counts one failed authentication from `ip` against its address's
    /// bucket and then the shared one; the refusal names whichever is dry.
    fn count_failure(&self, ip: Option<IpAddr>) -> Result<(), (Limited, String)> {
        if let Some(ip) = ip {
            self.failures
                .take(&address_key(ip))
                .map_err(|limited| (limited, format!("from {ip}")))?;
        }
        self.failures_everywhere.take(&()).map_err(|limited| {
            let from =
                format!("from all addresses (more than {FAILED_AUTH_PER_MINUTE_ALL} a minute)");
            (limited, from)
        })
    }

    /// Counts a failed authentication (a bad join token, a connection
    /// without a certificate) from `peer`; whether to audit it: yes until
    /// the address has failed [`FAILED_AUTH_PER_MINUTE`] times in a minute,
    /// then once per minute.
    pub fn failure_worth_auditing(&self, peer: Option<std::net::SocketAddr>) -> bool {
        match self.count_failure(peer.map(|a| a.ip())) {
            Ok(()) => true,
            Err((limited, _)) => limited.first,
        }
    }

    /// Whether a request with `headers` carries what
    /// [`Auth::authenticate`] accepts (a known token; nothing in open
    /// mode), counted against no rate: a look at the headers, before the
    /// body is read.
    pub fn identifies(&self, headers: &tonic::codegen::http::HeaderMap) -> bool {
        self.open
            || bearer_in(headers).is_ok_and(|t| self.users.contains_key(&fingerprint(t.as_bytes())))
    }

    /// Whether callers need no token.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Who sent `request`: Unauthenticated without a valid token,
    /// ResourceExhausted past their rate.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Error> {
        let peer = peer(request);
        let principal = if self.open {
            Principal {
                name: local_name(request)?,
                roles: BTreeSet::new(),
                local: true,
                peer,
            }
        } else {
            let user = bearer(request).and_then(|token| {
                self.users
                    .get(&fingerprint(token.as_bytes()))
                    .ok_or_else(|| {
                        Error::Unauthenticated(
                        "the API token is not valid; ask an admin for one and run `gantry login`"
                            .into(),
                    )
                    })
            });
            // Tokens are 256 random bits, so guessing is hopeless; what a
            // flood of bad tokens could do is flood the audit trail. Past
            // the limit an address's failures are audited once per minute.
            // A guesser rotating addresses meets the shared bound.
            let ip = request.remote_addr().map(|a| a.ip());
            if let Err(refused) = &user {
                if let Err((limited, from)) = self.count_failure(ip) {
                    return Err(Error::Throttled {
                        message: format!(
                            "{refused}; too many failed authentications {from}, retry in {}s",
                            limited.retry_secs
                        ),
                        who: "anonymous".into(),
                        first: limited.first,
                    });
                }
            }
            let (name, roles) = user?;
            Principal {
                name: name.clone(),
                roles: roles.clone(),
                local: false,
                peer,
            }
        };
        self.take(&principal.name)?;
        Ok(principal)
    }

    /// Takes one request from `who`'s bucket.
    fn take(&self, who: &str) -> Result<(), Error> {
        self.requests
            .take(&who.to_owned())
            .map_err(|limited| Error::Throttled {
                message: format!(
                    "{who} made more than {} requests in a minute; retry in {}s",
                    self.per_minute, limited.retry_secs
                ),
                who: who.to_owned(),
                first: limited.first,
            })
    }
}

/// The key failures are counted under: the address, or for IPv6 its /64,
/// since one host commonly holds a whole /64.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// The token of an `authorization: Bearer TOKEN` header.
fn bearer<T>(request: &Request<T>) -> Result<String, Error> {
    bearer_in(request.metadata().as_ref())
}

/// The token of an `authorization: Bearer` header among `headers`.
fn bearer_in(headers: &tonic::codegen::http::HeaderMap) -> Result<String, Error> {
    let missing = || {
        Error::Unauthenticated(
            "this coordinator needs an API token: run `gantry login` (or send `authorization: Bearer TOKEN`)"
                .into(),
        )
    };
    let value = headers.get("authorization").ok_or_else(missing)?;
    let text = value.to_str().map_err(|_| missing())?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(missing)?
        .trim();
    if token.is_empty() {
        return Err(missing());
    }
    if token.len() > 256 {
        return Err(Error::Unauthenticated(
            "the API token is longer than any Gantry token; check what was pasted into `gantry login`"
                .into(),
        ));
    }
    Ok(token.to_owned())
}

/// In open mode, the `gantry-user` header (the CLI sends the login name),
/// or "anonymous".
fn local_name<T>(request: &Request<T>) -> Result<String, Error> {
    let Some(value) = request.metadata().get(USER_HEADER) else {
        return Ok("anonymous".into());
    };
    let name = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the {USER_HEADER} header must be 1 to 64 visible ASCII characters"
            ))
        })?;
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(per_minute: u32) -> Auth {
        Auth {
            users: HashMap::from([(
                fingerprint(b"t0ken"),
                ("alice".to_owned(), BTreeSet::from(["developer".to_owned()])),
            )]),
            open: false,
            per_minute,
            requests: RateLimiter::new(per_minute),
            failures: RateLimiter::new(FAILED_AUTH_PER_MINUTE),
            failures_everywhere: RateLimiter::new(FAILED_AUTH_PER_MINUTE_ALL),
        }
    }

    fn with_token(token: &str) -> Request<()> {
        let mut request = Request::new(());
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        request
    }

    #[test]
    fn a_known_token_is_its_user_and_others_are_refused() {
        let auth = auth(60);
        let alice = auth.authenticate(&with_token("t0ken")).unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.roles.contains("developer"));
        let err = auth.authenticate(&with_token("guess")).unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
        let err = auth.authenticate(&Request::new(())).unwrap_err();
        assert!(err.to_string().contains("gantry login"), "{err}");
    }

    #[test]
    fn an_address_sending_bad_tokens_is_throttled_but_good_tokens_pass() {
        let auth = auth(600);
        let from = |token: &str| from_address(token, "10.0.0.7:5000");
        for _ in 0..FAILED_AUTH_PER_MINUTE {
            let err = auth.authenticate(&from("guess")).unwrap_err();
            assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
        }
        let first = auth.authenticate(&from("guess")).unwrap_err();
        assert!(
            matches!(first, Error::Throttled { first: true, .. }),
            "{first}"
        );
        assert!(first
            .to_string()
            .contains("too many failed authentications from 10.0.0.7"));
        let next = auth.authenticate(&from("guess")).unwrap_err();
        assert!(
            matches!(next, Error::Throttled { first: false, .. }),
            "{next}"
        );
        assert_eq!(auth.authenticate(&from("t0ken")).unwrap().name, "alice");
    }

    /// A request with `token` as tonic hands it over from `addr`.
    fn from_address(token: &str, addr: &str) -> Request<()> {
        let mut request = with_token(token);
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(addr.parse().unwrap()),
            });
        request
    }

    #[test]
    fn bad_tokens_from_rotating_addresses_meet_the_shared_bound() {
        let auth = auth(600);
        let total = FAILED_AUTH_PER_MINUTE_ALL + 30;
        let mut throttled = Vec::new();
        // One or two guesses per loopback address: each address stays far
        // under its own bound.
        for n in 0..total {
            let addr = format!("127.0.0.{}:40000", 1 + n % 200);
            match auth.authenticate(&from_address("guess", &addr)) {
                Err(Error::Unauthenticated(_)) => {}
                Err(e @ Error::Throttled { .. }) => throttled.push(e.to_string()),
                other => panic!("guess {n}: {other:?}"),
            }
        }
        assert_eq!(throttled.len(), 30, "{throttled:?}");
        assert!(
            throttled[0].contains("too many failed authentications from all addresses"),
            "{}",
            throttled[0]
        );
        // The shared bound holds back failures only: a good token passes.
        // A refused certificate from yet another address is not audited
        // (the dry spell's first refusal was).
        let alice = auth.authenticate(&from_address("t0ken", "127.0.0.250:1"));
        assert_eq!(alice.unwrap().name, "alice");
        assert!(!auth.failure_worth_auditing(Some("127.0.0.251:1".parse().unwrap())));
    }

    #[test]
    fn a_caller_past_their_rate_is_told_when_to_retry() {
        let auth = auth(3);
        for _ in 0..3 {
            auth.authenticate(&with_token("t0ken")).unwrap();
        }
        let err = auth.authenticate(&with_token("t0ken")).unwrap_err();
        assert!(matches!(err, Error::Throttled { first: true, .. }), "{err}");
        assert!(err.to_string().contains("retry in 20s"), "{err}");
    }
}
