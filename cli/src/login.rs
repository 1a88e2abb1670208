//! `gantry login`: keep the coordinator's URL, its CA and the user's API
//! token in the user's config directory (readable by the user only), so
//! later commands need no flags.

use std::path::{Path, PathBuf};

use std::os::unix::fs::DirBuilderExt;

use anyhow::Context;
use gantry_shared::{proto, tls::write_private, url::CoordinatorList};
use serde::{Deserialize, Serialize};

use crate::commands::{connect_with, Client};

/// Used when neither a flag, `GANTRY_COORDINATOR` nor a login names one.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7700";

/// What `gantry login` keeps.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The coordinator's URL, or the URLs of several sharing one store
    /// separated by commas; the token and CA serve each of them.
    pub coordinator: String,
    /// The API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The coordinator's CA certificate (PEM), for https://.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// `$GANTRY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/gantry`, else `~/.config/gantry`.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GANTRY_CONFIG_DIR") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("gantry")
}

fn credentials_path() -> PathBuf {
    config_dir().join("credentials.toml")
}

/// The saved login, if any.
pub fn load() -> anyhow::Result<Option<Credentials>> {
    let path = credentials_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Ok(Some(toml::from_str(&text).with_context(|| {
                format!("cannot read {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Connects as the saved login, with `coordinator` (flag or environment)
/// taking precedence over the saved URL, and `GANTRY_TOKEN` over the
/// saved token.
pub async fn connect(coordinator: Option<&str>) -> anyhow::Result<Client> {
    let saved = load()?.unwrap_or_default();
    let url = coordinator
        .map(str::to_owned)
        .or_else(|| (!saved.coordinator.is_empty()).then(|| saved.coordinator.clone()))
        .unwrap_or_else(|| DEFAULT_COORDINATOR.to_owned());
    // The saved token and CA belong to the saved coordinators only: a
    // token is never sent to a host it was not issued for. A list given now
    // gets them when every coordinator in it is one of the saved list.
    let (token, ca_pem) = match saved_for(&saved.coordinator, &url) {
        true => (saved.token, saved.ca_pem),
        false => (None, None),
    };
    let token = std::env::var("GANTRY_TOKEN").ok().or(token);
    connect_with(&url, token, ca_pem).await
}

/// Whether what was saved for the coordinators `saved` may be used with
/// `given`: each coordinator `given` names is one of `saved`.
fn saved_for(saved: &str, given: &str) -> bool {
    match (CoordinatorList::parse(saved), CoordinatorList::parse(given)) {
        (Ok(saved), Ok(given)) => saved.covers(&given),
        _ => false,
    }
}

/// Checks the token against the coordinator (any of a list: the one that
/// leads answers) and saves the login, for the whole list.
pub async fn login(
    coordinator: &str,
    token: String,
    ca: Option<&Path>,
) -> anyhow::Result<proto::WhoAmIResponse> {
    let ca_pem = match ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?,
        ),
        None if CoordinatorList::parse(coordinator)?
            .urls()
            .any(|url| url.starts_with("https://")) =>
        {
            anyhow::bail!(
                "give --ca with the coordinator's CA certificate (ca.pem from its TLS directory)"
            )
        }
        None => None,
    };
    let mut client = connect_with(coordinator, Some(token.clone()), ca_pem.clone()).await?;
    let me = client.who_am_i(proto::WhoAmIRequest {}).await?.into_inner();
    let saved = Credentials {
        coordinator: CoordinatorList::parse(coordinator)?.to_text(),
        token: Some(token),
        ca_pem,
    };
    let dir = config_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let text = toml::to_string(&saved).expect("credentials serialize");
    write_private(&credentials_path(), text.as_bytes())
        .with_context(|| format!("cannot write {}", credentials_path().display()))?;
    Ok(me)
}

#[cfg(test)]
mod tests {
    use super::saved_for;

    #[test]
    fn a_saved_login_serves_its_coordinators_and_no_other() {
        let saved = "https://a:7700,https://b:7700";
        assert!(saved_for(saved, saved));
        assert!(saved_for(saved, "https://b:7700"));
        assert!(saved_for(saved, "https://b:7700/, https://a"));
        assert!(!saved_for(saved, "https://a:7700,https://c:7700"));
        assert!(!saved_for(saved, "http://a:7700"));
        assert!(saved_for("http://127.0.0.1:7700", "http://127.0.0.1:7700"));
        assert!(!saved_for("", "http://127.0.0.1:7700"));
    }
}
