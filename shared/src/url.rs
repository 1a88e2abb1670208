//! The coordinator's address as the CLI and the agent take it: parsed with a
//! real URI parser, so what decides "this is loopback" and what the
//! connection dials are the same host.

use tonic::codegen::http::Uri;

pub mod list;

pub use list::{CoordinatorList, ListError, Round};

/// The port a coordinator URL names when it names none.
pub const DEFAULT_PORT: u16 = 7700;

/// Why a coordinator address is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Not a URI at all.
    #[error("{0:?} is not a URL; give the coordinator as http(s)://HOST:PORT")]
    Malformed(String),
    /// A scheme other than http or https.
    #[error("{0:?} must start with https:// (or http:// for a coordinator on this machine)")]
    Scheme(String),
    /// No host.
    #[error("{0:?} names no host; give the coordinator as http(s)://HOST:PORT")]
    NoHost(String),
    /// `user@` or `user:password@` before the host: the host is what follows
    /// the `@`, which is rarely what the writer meant.
    #[error(
        "{0:?} carries user information before an @; the host would be what follows it. \
         Give the coordinator as http(s)://HOST:PORT and the token with --token or gantry login"
    )]
    UserInfo(String),
    /// A path, query or fragment: the coordinator is served at the root.
    #[error("{0:?} has a path or query; give the coordinator as http(s)://HOST:PORT")]
    Path(String),
}

/// A coordinator address, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorUrl {
    /// Whether it is https.
    pub tls: bool,
    /// The host, without IPv6 brackets.
    pub host: String,
    /// The port (default [`DEFAULT_PORT`]).
    pub port: u16,
}

impl CoordinatorUrl {
    /// Parses `text`, refusing anything but `http(s)://HOST[:PORT][/]`.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let owned = || text.to_owned();
        let uri: Uri = text.parse().map_err(|_| UrlError::Malformed(owned()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UrlError::Scheme(owned())),
        };
        let authority = uri.authority().ok_or_else(|| UrlError::NoHost(owned()))?;
        if authority.as_str().contains('@') {
            return Err(UrlError::UserInfo(owned()));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(UrlError::Path(owned()));
        }
        // The authority must be exactly HOST or HOST:PORT, the port a number.
        let exact = match authority.port() {
            Some(port) => {
                port.as_str().parse::<u16>().is_ok()
                    && authority.as_str() == format!("{}:{}", authority.host(), port.as_str())
            }
            None => authority.as_str() == authority.host(),
        };
        if !exact {
            return Err(UrlError::Malformed(owned()));
        }
        let host = match authority.host().strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .filter(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(|| UrlError::Malformed(owned()))?,
            None => authority.host(),
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(owned()));
        }
        let name_like = |h: &str| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':')
        };
        if !name_like(host) {
            return Err(UrlError::Malformed(owned()));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(DEFAULT_PORT),
        })
    }

    /// Whether the host is this machine, so a token may travel in the clear.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (bool, String, u16) {
        let url = CoordinatorUrl::parse(text).unwrap();
        (url.tls, url.host, url.port)
    }

    #[test]
    fn addresses_split_into_scheme_host_and_port() {
        assert_eq!(
            ok("https://c.example:9000"),
            (true, "c.example".into(), 9000)
        );
        assert_eq!(ok("https://c.example"), (true, "c.example".into(), 7700));
        assert_eq!(ok("http://[::1]:7700/"), (false, "::1".into(), 7700));
    }

    #[test]
    fn user_information_is_refused_not_mistaken_for_the_host() {
        for text in [
            "http://127.0.0.1:7700@10.0.0.5",
            "http://127.0.0.1@10.0.0.5:7700",
            "https://user:pw@c.example",
        ] {
            assert_eq!(
                CoordinatorUrl::parse(text),
                Err(UrlError::UserInfo(text.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn other_shapes_are_refused_with_a_reason() {
        assert!(matches!(
            CoordinatorUrl::parse("ftp://c:1"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            CoordinatorUrl::parse("c.example:7700"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            CoordinatorUrl::parse("https://"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(
            CoordinatorUrl::parse("https://c/x"),
            Err(UrlError::Path(_))
        ));
        assert!(matches!(
            CoordinatorUrl::parse("https://[::1]x"),
            Err(UrlError::Malformed(_))
        ));
        assert!(CoordinatorUrl::parse("https://:7700").is_err());
    }

    #[test]
    fn only_this_machine_is_loopback() {
        for text in [
            "http://127.0.0.1:7700",
            "http://localhost:7700",
            "http://[::1]:7700/",
        ] {
            assert!(CoordinatorUrl::parse(text).unwrap().is_loopback(), "{text}");
        }
        for text in [
            "http://10.0.0.5:7700",
            "http://gantry.example.com",
            "http://127.0.0.1.evil.com",
        ] {
            assert!(
                !CoordinatorUrl::parse(text).unwrap().is_loopback(),
                "{text}"
            );
        }
    }
}
