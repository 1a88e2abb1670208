//! Where the coordinator keeps its records: sled in `data_dir` (the
//! default, no server needed) or a Postgres database the team operates,
//! named by a URL whose password is kept apart, as a secret.

use std::path::Path;

use rustls::pki_types::{pem::PemObject, CertificateDer};

use super::{pgurl, CoordinatorConfig};
use crate::Secret;

/// The `store` that keeps records in sled, in `data_dir`.
pub const SLED: &str = "sled";

/// Default `store`: sled, so a single box and `gantry demo` need no
/// database server.
pub fn default_store() -> String {
    SLED.to_owned()
}

/// The store a coordinator opens, read from `store` and `store_password`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChoice<'a> {
    /// sled, in `data_dir`.
    Sled,
    /// Postgres at `url` (no password in it), with `password` if set,
    /// and `ca`, the PEM file of the CA that signs the database's
    /// certificate, if set.
    Postgres {
        url: &'a str,
        password: Option<&'a Secret>,
        ca: Option<&'a Path>,
    },
}

/// Whether `url` names a Postgres database.
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Whether `url` carries a password (`scheme://user:password@...`).
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

impl CoordinatorConfig {
    /// Which store to open.
    pub fn store_choice(&self) -> StoreChoice<'_> {
        if self.store == SLED {
            StoreChoice::Sled
        } else {
            StoreChoice::Postgres {
                url: &self.store,
                password: self.store_password.as_ref(),
                ca: self.store_ca.as_deref(),
            }
        }
    }

    /// `store` is sled or a Postgres URL without a password in it, and
    /// `store_password` is set only for Postgres.
    pub(super) fn validate_store(
        &self,
        invalid: &dyn Fn(std::ops::Range<usize>, String) -> super::ConfigError,
        key: &dyn Fn(&str) -> std::ops::Range<usize>,
    ) -> Result<(), super::ConfigError> {
        if self.store != SLED && !is_postgres(&self.store) {
            let msg = "store must be \"sled\" or a Postgres URL, \
                       postgres://USER@HOST:PORT/DATABASE"
                .to_owned();
            return Err(invalid(key("store"), msg));
        }
        if has_password(&self.store) {
            let msg = "store: keep the password out of the URL (it is logged); \
                       put it in store_password, a secret"
                .to_owned();
            return Err(invalid(key("store"), msg));
        }
        if self.store == SLED && self.store_password.is_some() {
            let msg = "store_password is for a Postgres store; store is sled".to_owned();
            return Err(invalid(key("store_password"), msg));
        }
        if self.store == SLED {
            if self.store_ca.is_some() {
                let msg = "store_ca is for a Postgres store; store is sled".to_owned();
                return Err(invalid(key("store_ca"), msg));
            }
            return Ok(());
        }
        let (_, mode) = pgurl::split_sslmode(&self.store)
            .map_err(|m| invalid(key("store"), format!("store: {m}")))?;
        match (mode, &self.store_ca) {
            (Some(mode), None) if mode.verifies() => {
                let msg = format!(
                    "store: sslmode={mode} checks the database's certificate against a CA: \
                     set store_ca to the PEM file of the CA that signed it"
                );
                Err(invalid(key("store"), msg))
            }
            (Some(pgurl::SslMode::Disable), Some(_)) => {
                let msg = "store_ca is set but the store's sslmode=disable turns TLS off: \
                           remove one of them"
                    .to_owned();
                Err(invalid(key("store_ca"), msg))
            }
            _ => Ok(()),
        }
    }

    /// `store_ca`, if set, is a readable PEM file of CA certificates.
    /// Checked by [`CoordinatorConfig::load`], once the path is resolved.
    pub(super) fn check_store_ca(&self, path: &Path, text: &str) -> Result<(), super::ConfigError> {
        let Some(ca) = &self.store_ca else {
            return Ok(());
        };
        read_ca(ca)
            .map(|_| ())
            .map_err(|message| super::ConfigError::Invalid {
                path: path.to_owned(),
                line: text
                    .find("store_ca")
                    .map_or(1, |at| text[..at].matches('\n').count() + 1),
                message: format!("store_ca: {message}"),
            })
    }
}

/// The CA certificates in the PEM file `path`, as the roots that a
/// server's certificate must chain to; the error says what is wrong with
/// the file.
pub fn read_ca(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{} is not a valid PEM file: {e}", path.display()))?;
        roots.add(cert).map_err(|e| {
            format!(
                "{} holds a certificate that cannot be used as a CA: {e}",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{} holds no certificate: give the CA's certificate in PEM \
             (-----BEGIN CERTIFICATE----- ...)",
            path.display()
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_found() {
        assert!(has_password("postgres://gantry:hunter2@db:5432/gantry"));
        assert!(!has_password("postgres://gantry@db:5432/gantry"));
        assert!(!has_password("postgres://db/gantry?user=a:b"));
        assert!(!has_password("postgresql://db:5432/gantry"));
    }
}
