//! How agents fetch an app's source. Agents run code that people of every
//! environment may write, so they get a read-only credential of their
//! own: the app's `git_username`/`git_token` can push (the coordinator
//! creates branches with it) and never leaves the coordinator. The fetch
//! token is one of the environment's secrets, named, so each environment
//! can have its own and it is redacted like every secret.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{CoordinatorConfig, EnvironmentConfig};

/// `[apps.fetch_credentials]`: what agents fetch the app's remote with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchCredentials {
    /// User name for the token. Default: none (`gantry`, which hosts
    /// ignore for tokens).
    #[serde(default)]
    pub username: Option<String>,
    /// The name of the secret, in each environment the app deploys to,
    /// that holds a read-only token. Default: none, so agents fetch
    /// without credentials except where `env` names one.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// Per environment, by name: another user and secret there.
    #[serde(default)]
    pub env: BTreeMap<String, FetchCredential>,
}

/// `[apps.fetch_credentials.env.NAME]`: the fetch credential of one environment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchCredential {
    /// User name for the token. Default: none.
    #[serde(default)]
    pub username: Option<String>,
    /// The name of the environment's secret holding the token.
    pub token_secret: String,
}

impl FetchCredentials {
    /// What agents of environment `env` fetch with, if anything.
    pub fn for_env(&self, env: &str) -> Option<FetchCredential> {
        if let Some(own) = self.env.get(env) {
            return Some(own.clone());
        }
        self.token_secret
            .clone()
            .map(|token_secret| FetchCredential {
                username: self.username.clone(),
                token_secret,
            })
    }
}

/// The (user name, token) agents of `env` fetch `app`'s remote with: the
/// fetch credential, never the push one. `None`: they fetch without.
pub fn fetch_token(
    app: &super::AppConfig,
    env: &EnvironmentConfig,
) -> Option<(Option<String>, String)> {
    let credential = app
        .fetch_credentials
        .as_ref()?
        .for_env(env.name().as_str())?;
    let token = env.secrets.get(&credential.token_secret)?;
    Some((credential.username, token.expose().to_owned()))
}

impl CoordinatorConfig {
    /// Every app's fetch credentials name configured environments and
    /// secrets that exist there.
    pub(super) fn validate_fetch(
        &self,
        invalid: &dyn Fn(std::ops::Range<usize>, String) -> super::ConfigError,
    ) -> Result<(), super::ConfigError> {
        for app in &self.apps {
            let Some(fetch) = &app.fetch_credentials else {
                continue;
            };
            let name = app.name().as_str();
            if let Some(unknown) = fetch
                .env
                .keys()
                .find(|e| !self.environments.iter().any(|c| c.name().as_str() == *e))
            {
                let msg = format!(
                    "app {name:?}: fetch_credentials.env.{unknown} names no configured environment"
                );
                return Err(invalid(app.name.span(), msg));
            }
            for env in &self.environments {
                let Some(credential) = fetch.for_env(env.name().as_str()) else {
                    continue;
                };
                if !env.secrets.contains_key(&credential.token_secret) {
                    let msg = format!(
                        "app {name:?}: fetch_credentials names the secret {:?}, which environment {} \
                         does not have; add it to that environment's [environments.secrets] or set \
                         [apps.fetch_credentials.env.{}]",
                        credential.token_secret,
                        env.name(),
                        env.name()
                    );
                    return Err(invalid(app.name.span(), msg));
                }
            }
        }
        Ok(())
    }
}
