//! The coordinator's configuration file, `coordinator.toml`.
//!
//! Parsing is strict: an unknown field, a bad value or a missing required
//! field is an error that names the file, the line and the field. Every
//! optional field has a named default with the reason for its value.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    num::NonZeroU16,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::domain::{AppName, BranchName, EnvName};

pub mod agent;
pub mod fetch;
mod leader;
pub mod pgurl;
pub mod store;
pub mod trust;

pub use fetch::{fetch_token, FetchCredential, FetchCredentials};
pub use store::StoreChoice;
pub use trust::UserConfig;

/// A configuration file that could not be used; the message names the file,
/// the line and the field, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
    /// Values that are each valid but do not fit together.
    #[error("invalid config file {path}, line {line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line of the offending entry.
        line: usize,
        /// What to fix.
        message: String,
    },
}

/// Address the coordinator listens on when the file names none: loopback, so
/// a fresh install is not reachable from the network before TLS is set up.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}

/// Where state lives when the file names no directory: beside the config.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("gantry-data")
}

/// Agents send a heartbeat this often. A few seconds keeps a lost agent
/// detectable well within [`default_agent_lease_secs`] at negligible cost.
pub fn default_heartbeat_secs() -> u64 {
    5
}

/// An agent silent for this long is marked lost and its jobs fail: three
/// missed heartbeats, so one slow beat never fails a deploy, and a lost agent
/// is known within 20 seconds.
pub fn default_agent_lease_secs() -> u64 {
    15
}

/// Branch deployed when a request names none.
pub fn default_branch() -> BranchName {
    BranchName::new("main").expect("main is a valid branch name")
}

/// Health-check path: Spring Boot Actuator's, which most Java services expose.
pub fn default_health_path() -> String {
    "/actuator/health".into()
}

/// A JVM service with a warm-up usually answers within a minute.
pub fn default_health_timeout_secs() -> u64 {
    60
}

/// A Maven build of a large service can take a while; half an hour stops a
/// hung build without cutting a slow honest one.
pub fn default_build_timeout_secs() -> u64 {
    1800
}

/// The whole job: the build's half hour plus fetch, image, start and health.
pub fn default_deploy_timeout_secs() -> u64 {
    3600
}

/// Time a replaced release gets to finish the requests it was serving when
/// traffic moved: longer than any sane request, short enough not to hold a
/// rollback.
pub fn default_drain_timeout_secs() -> u64 {
    30
}

/// Images kept per (app, env): the serving one and four to roll back to,
/// enough for a bad week without filling a server's disk with jars.
pub fn default_keep_releases() -> usize {
    5
}

/// The whole `coordinator.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address of the gRPC server (agents and operators). Default 127.0.0.1:7700.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory of the sled database. Relative paths are taken from the
    /// config file's directory. Default `gantry-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where the records are kept: `"sled"`, in `data_dir`, or a Postgres
    /// database, `postgres://USER@HOST:PORT/DATABASE` (its password in
    /// `store_password`). Default `"sled"`.
    #[serde(default = "store::default_store")]
    pub store: String,
    /// The Postgres user's password, a secret. Default none.
    #[serde(default)]
    pub store_password: Option<crate::Secret>,
    /// PEM file of the CA that signs the Postgres server's certificate;
    /// with it the certificate is checked (`sslmode=verify-full` unless the
    /// URL says otherwise). Relative paths are taken from the config
    /// file's directory. Default none.
    #[serde(default)]
    pub store_ca: Option<PathBuf>,
    /// How often agents send heartbeats, in seconds. Default 5.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// Silence after which an agent is lost, in seconds. Default 15.
    #[serde(default = "default_agent_lease_secs")]
    pub agent_lease_secs: u64,
    /// The environments, in promotion order (e.g. dev, test, pre, prod).
    pub environments: Vec<EnvironmentConfig>,
    /// The apps that can be deployed.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Serve without TLS. Allowed only when `listen` is a loopback address
    /// (the demo, a laptop); anything reachable from the network uses TLS.
    /// Default false.
    #[serde(default)]
    pub plaintext: bool,
    /// Directory of the CA, the server certificate and the join key made by
    /// `gantry-coordinator ca init`. Default `<data_dir>/tls`.
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    /// The operators and their token hashes. With none, and `plaintext` on
    /// loopback, every local caller may do everything.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Roles that may revoke agents and read the audit trail. Default `["ops"]`.
    #[serde(default = "trust::default_admin_roles")]
    pub admins: Vec<String>,
    /// Requests per minute each operator may make; more get
    /// ResourceExhausted. Default 600.
    #[serde(default = "trust::default_rate_limit_per_minute")]
    pub rate_limit_per_minute: u32,
    /// Connections one address (an IPv6 /64) may hold open at once; more
    /// are closed as they arrive. Raise it when many agents or operators
    /// reach the coordinator through one NAT. Default 256.
    #[serde(default = "trust::default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// The URL agents and operators reach this coordinator at: the one
    /// standbys sharing its Postgres store send them to while it leads.
    /// Default `https://HOST:PORT` (`http://` with `plaintext`) of
    /// `listen`, with this machine's host name when `listen` is 0.0.0.0
    /// or `::`.
    #[serde(default)]
    pub advertise_url: Option<String>,
}

/// One environment: its own servers, domain and middleware.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// Its name, e.g. `test`.
    pub name: Spanned<EnvName>,
    /// Variables every container deployed here receives, e.g. the address of
    /// this environment's service registry and database.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Secrets of this environment (database passwords, tokens): given to
    /// the build and the containers deployed here like variables, but never
    /// returned by any API, and replaced by `***` in every log line.
    #[serde(default)]
    pub secrets: BTreeMap<String, crate::Secret>,
    /// Roles that may deploy here and cancel deploys here. Default `["ops"]`.
    #[serde(default = "trust::default_deploy_roles")]
    pub deploy: Vec<String>,
    /// Roles that may roll back here. Default: the `deploy` roles.
    #[serde(default)]
    pub rollback: Option<Vec<String>>,
    /// When set, a deploy or rollback here waits until someone with one of
    /// these roles, other than its requester, approves it.
    #[serde(default)]
    pub approve: Vec<String>,
}

impl EnvironmentConfig {
    /// What replaces this environment's secrets by `***` in log lines.
    pub fn redactor(&self) -> crate::Redactor {
        crate::Redactor::new(self.secrets.values().map(|s| s.expose().to_owned()))
    }

    /// The environment's name.
    pub fn name(&self) -> &EnvName {
        self.name.get_ref()
    }

    /// Roles that may roll back here.
    pub fn rollback_roles(&self) -> &[String] {
        self.rollback.as_deref().unwrap_or(&self.deploy)
    }
}

/// One deployable app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Its name; also the repository of its images.
    pub name: Spanned<AppName>,
    /// Git remote URL (file://, https://, ssh:// or a local path). Put no
    /// credentials in it; use the `git_*` fields.
    pub remote: String,
    /// User name for an HTTPS token, or for SSH when the URL names none.
    #[serde(default)]
    pub git_username: Option<String>,
    /// HTTPS token or password for the remote, used by the coordinator
    /// alone (it lists, resolves and creates branches); never sent to an
    /// agent, shown in output, logs or the API.
    #[serde(default)]
    pub git_token: Option<crate::Secret>,
    /// What agents fetch the remote with: a read-only credential, per
    /// environment if need be. Default: none, agents fetch without.
    #[serde(default)]
    pub fetch_credentials: Option<FetchCredentials>,
    /// SSH private key file, on the coordinator's host, for ssh:// remotes.
    #[serde(default)]
    pub git_ssh_key: Option<PathBuf>,
    /// Deployed when a request names no branch. Default `main`.
    #[serde(default = "default_branch")]
    pub default_branch: BranchName,
    /// Shell command that builds the artifact, e.g. `mvn -B package`.
    pub build_command: String,
    /// Path or glob of the built jar, relative to the workspace, e.g. `target/*.jar`.
    pub artifact: String,
    /// Base image for a generated Dockerfile, e.g. `eclipse-temurin:17-jre`.
    /// Exactly one of `base_image` and `dockerfile` must be set.
    #[serde(default)]
    pub base_image: Option<String>,
    /// The repo's own Dockerfile, relative to the workspace; the artifact is
    /// copied next to it as `app.jar`.
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// Port the app listens on inside its container.
    pub container_port: NonZeroU16,
    /// HTTP path that answers 200 when healthy. Default `/actuator/health`.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Seconds the new container may take to become healthy. Default 60.
    #[serde(default = "default_health_timeout_secs")]
    pub health_timeout_secs: u64,
    /// Seconds the build command may run. Default 1800.
    #[serde(default = "default_build_timeout_secs")]
    pub build_timeout_secs: u64,
    /// Seconds the whole job may run. Default 3600.
    #[serde(default = "default_deploy_timeout_secs")]
    pub deploy_timeout_secs: u64,
    /// Images kept on each server per environment, the serving one included;
    /// older releases can no longer be rolled back to. Default 5.
    #[serde(default = "default_keep_releases")]
    pub keep_releases: usize,
    /// The app's stable port on each server, served by Gantry's reverse
    /// proxy: a deploy switches it to the new container once healthy and
    /// drains the old one, so no request is dropped. Unset: each release is
    /// reached on its own published port.
    #[serde(default)]
    pub public_port: Option<NonZeroU16>,
    /// Seconds the replaced release gets to finish its in-flight requests
    /// once the proxy sends traffic to the new one. Default 30.
    #[serde(default = "default_drain_timeout_secs")]
    pub drain_timeout_secs: u64,
}

impl AppConfig {
    /// The app's name.
    pub fn name(&self) -> &AppName {
        self.name.get_ref()
    }
}

impl CoordinatorConfig {
    /// Reads and validates `path`; relative paths inside are taken from the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(path, &text)?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir = base.join(&config.data_dir);
        }
        if let Some(dir) = config.tls_dir.as_mut().filter(|d| d.is_relative()) {
            *dir = path.parent().unwrap_or(Path::new(".")).join(&*dir);
        }
        if let Some(ca) = config.store_ca.as_mut().filter(|c| c.is_relative()) {
            *ca = path.parent().unwrap_or(Path::new(".")).join(&*ca);
        }
        config.check_store_ca(path, &text)?;
        Ok(config)
    }

    /// Parses and validates `text`; `path` is used in messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.validate(path, text)?;
        Ok(config)
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: text[..span.start.min(text.len())].matches('\n').count() + 1,
            message,
        };
        if self.environments.is_empty() {
            return Err(invalid(
                0..0,
                "declare at least one [[environments]]".into(),
            ));
        }
        let key = |name: &str| text.find(name).map_or(0..0, |at| at..at);
        if self.heartbeat_secs == 0 {
            let msg = "heartbeat_secs must be at least 1".to_owned();
            return Err(invalid(key("heartbeat_secs"), msg));
        }
        if self.agent_lease_secs < self.heartbeat_secs.saturating_mul(2) {
            let msg = format!(
                "agent_lease_secs ({}) must be at least twice heartbeat_secs ({}), \
                 or one late heartbeat fails an agent's jobs",
                self.agent_lease_secs, self.heartbeat_secs
            );
            return Err(invalid(key("agent_lease_secs"), msg));
        }
        let mut seen = HashSet::new();
        for env in &self.environments {
            if !seen.insert(env.name()) {
                let msg = format!("environment {:?} is declared twice", env.name().as_str());
                return Err(invalid(env.name.span(), msg));
            }
            if let Some(bad) = env.secrets.keys().find(|k| !is_env_var_name(k)) {
                let msg = format!(
                    "environments.secrets: {bad:?} is not a valid variable name \
                     (use letters, digits and '_', not starting with a digit)"
                );
                return Err(invalid(env.name.span(), msg));
            }
            if let Some(both) = env.secrets.keys().find(|k| env.variables.contains_key(*k)) {
                let msg = format!("{both:?} is both a variable and a secret; keep one");
                return Err(invalid(env.name.span(), msg));
            }
            if let Some(bad) = env.variables.keys().find(|k| !is_env_var_name(k)) {
                let msg = format!(
                    "environments.variables: {bad:?} is not a valid variable name \
                     (use letters, digits and '_', not starting with a digit)"
                );
                return Err(invalid(env.name.span(), msg));
            }
        }
        self.validate_trust(&invalid)?;
        self.validate_store(&invalid, &key)?;
        self.validate_advertise_url(&invalid, &key)?;
        self.validate_fetch(&invalid)?;
        let mut seen = HashSet::new();
        for app in &self.apps {
            let at = app.name.span();
            let name = app.name().as_str();
            if !seen.insert(app.name()) {
                return Err(invalid(at, format!("app {name:?} is declared twice")));
            }
            match (&app.base_image, &app.dockerfile) {
                (Some(_), Some(_)) | (None, None) => {
                    let msg = format!("app {name:?}: set exactly one of base_image and dockerfile");
                    return Err(invalid(at, msg));
                }
                _ => {}
            }
            let checks = [
                (app.remote.trim().is_empty(), "remote must not be empty"),
                (
                    app.build_command.trim().is_empty(),
                    "build_command must not be empty",
                ),
                (app.artifact.trim().is_empty(), "artifact must not be empty"),
                (
                    !app.health_path.starts_with('/'),
                    "health_path must start with '/'",
                ),
                (
                    app.health_timeout_secs == 0,
                    "health_timeout_secs must be at least 1",
                ),
                (
                    app.build_timeout_secs == 0,
                    "build_timeout_secs must be at least 1",
                ),
                (
                    app.deploy_timeout_secs == 0,
                    "deploy_timeout_secs must be at least 1",
                ),
                (
                    app.keep_releases == 0,
                    "keep_releases must be at least 1 (the serving release)",
                ),
                (
                    app.artifact.starts_with('/') || app.artifact.split('/').any(|p| p == ".."),
                    "artifact must be a path inside the workspace",
                ),
                (
                    app.dockerfile.as_ref().is_some_and(|d| {
                        d.trim().is_empty() || d.starts_with('/') || d.split('/').any(|p| p == "..")
                    }),
                    "dockerfile must be a path inside the repository, e.g. \"Dockerfile\"",
                ),
            ];
            if let Some((_, msg)) = checks.iter().find(|(bad, _)| *bad) {
                return Err(invalid(at, format!("app {name:?}: {msg}")));
            }
        }
        Ok(())
    }

    /// The directory of the CA and server certificate.
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls"))
    }

    /// The app named `name`, if configured.
    pub fn app(&self, name: &AppName) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name() == name)
    }

    /// The environment named `name`, if configured.
    pub fn environment(&self, name: &EnvName) -> Option<&EnvironmentConfig> {
        self.environments.iter().find(|e| e.name() == name)
    }
}

/// Whether `name` can be a container's environment variable name.
fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests;
