//! The `sslmode` of a Postgres connection string: how the coordinator
//! secures its connection to the database. Read here, once, for both the
//! config's validation and the store that connects, because the Postgres
//! driver knows only three of libpq's five modes.

use std::fmt;

/// How the connection to Postgres uses TLS, as libpq's `sslmode` does.
/// A Unix-socket host never uses TLS, whatever the mode (as in libpq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, plain otherwise.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate signed by `store_ca`.
    VerifyCa,
    /// TLS, the certificate signed by `store_ca` and naming the host
    /// connected to.
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The mode `value` names.
    pub fn parse(value: &str) -> Result<SslMode, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == value)
            .ok_or_else(|| {
                format!(
                    "sslmode must be disable, prefer, require, verify-ca or verify-full, \
                     not {value:?}"
                )
            })
    }

    /// Its name in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate must be signed by a known CA.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `url` without its `sslmode` parameter, and the mode it named (the
/// last one, if given twice). `url` is a `postgres://` URL or a libpq
/// `key=value` string.
pub fn split_sslmode(url: &str) -> Result<(String, Option<SslMode>), String> {
    let (rest, value) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_query(url)
    } else {
        split_keywords(url)
    };
    let mode = value.map(|v| SslMode::parse(&v)).transpose()?;
    Ok((rest, mode))
}

/// A URL's `sslmode=` query parameter taken out.
fn split_query(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut mode = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("sslmode", value)) => {
                mode = Some(value.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    if kept.iter().all(|p| p.is_empty()) {
        (base.to_owned(), mode)
    } else {
        (format!("{base}?{}", kept.join("&")), mode)
    }
}

/// A `key=value` string's `sslmode` taken out. A string this cannot read
/// is returned whole, for the driver to refuse with its own message.
fn split_keywords(text: &str) -> (String, Option<String>) {
    let mut chars = text.char_indices().peekable();
    let mut rest = String::new();
    let mut kept_from = 0;
    let mut mode = None;
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_spaces(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_spaces(&mut chars);
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return (text.to_owned(), None);
        }
        skip_spaces(&mut chars);
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    None => return (text.to_owned(), None),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
        }
        if key == "sslmode" {
            let end = chars.peek().map_or(text.len(), |&(at, _)| at);
            rest.push_str(&text[kept_from..start]);
            kept_from = end;
            mode = Some(value);
        }
    }
    rest.push_str(&text[kept_from..]);
    (rest.trim().to_owned(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_is_taken_out_of_a_url() {
        let split = |url| split_sslmode(url).unwrap();
        assert_eq!(
            split("postgres://g@db:5432/gantry?sslmode=verify-full"),
            (
                "postgres://g@db:5432/gantry".to_owned(),
                Some(SslMode::VerifyFull)
            )
        );
        assert_eq!(
            split(
                "postgresql://g@db/gantry?connect_timeout=5&sslmode=verify-ca&application_name=c"
            ),
            (
                "postgresql://g@db/gantry?connect_timeout=5&application_name=c".to_owned(),
                Some(SslMode::VerifyCa)
            )
        );
        assert_eq!(
            split("postgres://g@db/gantry"),
            ("postgres://g@db/gantry".to_owned(), None)
        );
    }

    #[test]
    fn the_mode_is_taken_out_of_keywords() {
        let split = |url| split_sslmode(url).unwrap();
        assert_eq!(
            split("host=db sslmode = require dbname='a b'"),
            ("host=db  dbname='a b'".to_owned(), Some(SslMode::Require))
        );
        assert_eq!(
            split("sslmode='verify-full' host=db"),
            ("host=db".to_owned(), Some(SslMode::VerifyFull))
        );
        assert_eq!(
            split(r"host=db password='it\'s' sslmode=disable"),
            (
                r"host=db password='it\'s'".to_owned(),
                Some(SslMode::Disable)
            )
        );
        // Unreadable: left whole for the driver's own message.
        assert_eq!(split("host"), ("host".to_owned(), None));
    }

    #[test]
    fn an_unknown_mode_is_refused_with_the_known_ones() {
        assert_eq!(
            split_sslmode("postgres://db/g?sslmode=allow").unwrap_err(),
            "sslmode must be disable, prefer, require, verify-ca or verify-full, not \"allow\""
        );
    }
}
