//! What the proxy changes in the headers it forwards: hop-by-hop headers
//! (RFC 9110 section 7.6.1) describe one connection, so they are dropped on
//! the way in and on the way out, and the upstream is told who the client
//! was (`X-Forwarded-For`, `X-Forwarded-Proto`).

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};

/// `X-Forwarded-For`: the client addresses a request passed through, the
/// nearest last.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// `X-Forwarded-Proto`: the scheme the client used to reach the proxy.
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Headers that belong to one connection and are never forwarded, besides
/// the ones a `Connection` header lists. `Upgrade` goes too (`h2c`,
/// WebSocket): the proxy forwards plain HTTP/1 exchanges only, so an
/// upstream must never be asked to switch protocols on a connection the
/// proxy cannot hand over. `Transfer-Encoding` is the framing of one hop;
/// hyper frames each side itself.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes every hop-by-hop header: those `Connection` lists, then the
/// fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends `client` to `X-Forwarded-For` (after any addresses the request
/// already carried, in one header) and sets `X-Forwarded-Proto` to `http`,
/// the only scheme the proxy serves: a client's own claim of `https` is
/// replaced, since it would be a lie the upstream might act on. Values that
/// are not text are dropped; they cannot be addresses.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    let client = client.to_canonical();
    let earlier: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    let chain = if earlier.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", earlier.join(", "))
    };
    match HeaderValue::from_str(&chain) {
        Ok(value) => headers.insert(X_FORWARDED_FOR, value),
        Err(_) => headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_str(&client.to_string()).expect("an address is a header value"),
        ),
    };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_dropped() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Session-Hop"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("x-session-hop", "1"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("upgrade", "h2c"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("host", "shop.example"),
            ("accept", "text/plain"),
        ]);
        strip_hop_by_hop(&mut map);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "host"]);
    }

    #[test]
    fn the_client_is_appended_to_the_forwarded_chain_and_the_scheme_is_the_proxys() {
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2, 192.0.2.1"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarded(&mut map, "10.1.2.3".parse().unwrap());
        assert_eq!(
            map.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["203.0.113.7, 198.51.100.2, 192.0.2.1, 10.1.2.3"]
        );
        assert_eq!(map[X_FORWARDED_PROTO], "http");

        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, "::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(fresh[X_FORWARDED_FOR], "127.0.0.1");
    }
}
