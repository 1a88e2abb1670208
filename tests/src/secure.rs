//! A harness coordinator with TLS, operators and environment policies, and
//! agents enrolled with join tokens.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use gantry_shared::{AgentName, EnvName};

use crate::{Client, Harness, TestApp};

/// A coordinator with TLS, operators and environment policies.
#[derive(Clone, Default)]
pub struct Secure {
    /// Config text appended at the top level: `[[users]]` tables and such.
    pub users: String,
    /// Top-level settings, e.g. `rate_limit_per_minute = 100`.
    pub settings: String,
    /// Environment -> lines added to its table, e.g. `deploy = ["ops"]`.
    pub policies: BTreeMap<String, String>,
}

impl Secure {
    /// Adds a user with `roles`; returns their API token.
    pub fn user(&mut self, name: &str, roles: &[&str]) -> String {
        let token = gantry_coordinator::trust::ca::new_api_token();
        self.users += &format!(
            "\n[[users]]\nname = \"{name}\"\nroles = {roles:?}\ntoken_sha256 = \"{}\"\n",
            gantry_shared::tls::fingerprint(token.as_bytes())
        );
        token
    }
}

impl Harness {
    /// As [`Harness::start`], with TLS (a CA made by `ca init`), the users
    /// and the policies of `secure`.
    pub async fn start_secure(
        apps: &[TestApp],
        envs: &[(&str, &[(&str, &str)])],
        secure: Secure,
    ) -> anyhow::Result<Self> {
        let mut harness = Self::start(apps, envs).await?;
        harness.stop_coordinator().await?;
        gantry_coordinator::trust::ca::init(&harness.tls_dir(), &[])?;
        harness.secure = Some(secure);
        harness.start_coordinator().await?;
        Ok(harness)
    }

    /// As [`Harness::prepare`], with the TLS (a CA made by `ca init`), the
    /// users and the policies of `secure`, for coordinators the test starts.
    pub async fn prepare_secure(
        apps: &[TestApp],
        envs: &[(&str, &[(&str, &str)])],
        secure: Secure,
    ) -> anyhow::Result<Self> {
        let mut harness = Self::prepare(apps, envs, &[]).await?;
        gantry_coordinator::trust::ca::init(&harness.tls_dir(), &[])?;
        harness.secure = Some(secure);
        Ok(harness)
    }

    /// Whether its coordinators serve TLS.
    pub fn is_secure(&self) -> bool {
        self.secure.is_some()
    }

    /// The coordinator's TLS directory.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("data").join("tls")
    }

    /// The coordinator's CA certificate, PEM.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.tls_dir().join("ca.pem"))?)
    }

    /// A client of the operator API with an API token, over TLS.
    pub async fn client_as(&self, token: &str) -> anyhow::Result<Client> {
        gantry_cli::commands::connect_with(&self.url, Some(token.to_owned()), Some(self.ca_pem()?))
            .await
    }

    /// Enrols agent `name` of `env` with a one-time token, as `gantry-agent
    /// join` does; returns its TLS directory.
    pub async fn join_agent(&self, env: &str, name: &str) -> anyhow::Result<PathBuf> {
        let authority = gantry_coordinator::trust::Authority::load(&self.tls_dir())?;
        let token = authority.enroll(
            EnvName::new(env)?,
            AgentName::new(name)?,
            Duration::from_secs(600),
        );
        let dir = self.work_dir(name).join("tls");
        gantry_agent::join::join(&self.url, &token.to_string(), &dir).await?;
        Ok(dir)
    }
}
