//! The agent's configuration file, `/etc/gantry/agent.toml`, written by
//! `gantry-agent install` and read by `gantry-agent run`. Strict like the
//! coordinator's: unknown fields and bad values name the file, line and field.

use std::{collections::BTreeMap, path::Path, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::domain::{AgentName, EnvName};

/// Where `install` writes the config and `run` reads it by default.
pub const DEFAULT_AGENT_CONFIG: &str = "/etc/gantry/agent.toml";

/// Default work dir: the FHS place for a service's state.
pub fn default_work_dir() -> PathBuf {
    PathBuf::from("/var/lib/gantry-agent")
}

/// Two jobs at once: a deploy of one app need not wait for another's build,
/// and two JVM builds still fit a small server.
pub fn default_capacity() -> u32 {
    2
}

/// Publish on every interface, so the app is reachable from the network.
pub fn default_publish_ip() -> String {
    "0.0.0.0".into()
}

/// The agent probes health from the same host.
pub fn default_health_host() -> String {
    "127.0.0.1".into()
}

/// A minute lets a typical build-and-deploy finish before a restart.
pub fn default_drain_grace_secs() -> u64 {
    60
}

/// The whole `agent.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The coordinator's URL, e.g. `http://coordinator.internal:7700`; or
    /// the URLs of coordinators sharing one store, separated by commas
    /// (`https://a:7700,https://b:7700`): the agent finds the leader.
    pub coordinator: String,
    /// The environment this server belongs to.
    pub env: EnvName,
    /// This agent's unique name.
    pub name: AgentName,
    /// Mirrors, workspaces and the spool. Default `/var/lib/gantry-agent`.
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
    /// Jobs run at once. Default 2.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Host address containers publish their port on. Default `0.0.0.0`.
    #[serde(default = "default_publish_ip")]
    pub publish_ip: String,
    /// Host the agent reaches published ports on. Default `127.0.0.1`.
    #[serde(default = "default_health_host")]
    pub health_host: String,
    /// Host put in the URLs operators are given. Default: `health_host`.
    #[serde(default)]
    pub public_host: Option<String>,
    /// Seconds running jobs get to finish on SIGTERM. Default 60.
    #[serde(default = "default_drain_grace_secs")]
    pub drain_grace_secs: u64,
    /// Where `gantry-agent join` wrote this agent's certificate, used for
    /// an https:// coordinator. Default `/etc/gantry/tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
    /// The unprivileged user builds run as (`install` writes
    /// `gantry-build`). Default: the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_user: Option<String>,
    /// Labels shown by `gantry agents`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl AgentConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`; `path` is used in messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        if let Err(e) = crate::url::CoordinatorList::parse(&config.coordinator) {
            let line = text
                .lines()
                .position(|line| line.trim_start().starts_with("coordinator"))
                .map_or(1, |at| at + 1);
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line,
                message: format!("coordinator: {e}"),
            });
        }
        if config.capacity == 0 {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: 1,
                message: "capacity must be at least 1".into(),
            });
        }
        Ok(config)
    }

    /// The file's text, as `install` writes it.
    pub fn to_toml(&self) -> String {
        format!(
            "# Written by `gantry-agent install`; read by `gantry-agent run`.\n{}",
            toml::to_string(self).expect("agent configs serialize")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_config_reads_back_and_typos_are_refused() {
        let config = AgentConfig {
            coordinator: "http://c:7700,http://d:7700".into(),
            env: EnvName::new("prod").unwrap(),
            name: AgentName::new("prod-1").unwrap(),
            work_dir: default_work_dir(),
            capacity: 2,
            publish_ip: default_publish_ip(),
            health_host: default_health_host(),
            public_host: Some("prod-1.example.com".into()),
            drain_grace_secs: 60,
            tls_dir: Some("/etc/gantry/tls".into()),
            build_user: Some("gantry-build".into()),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
        };
        let text = config.to_toml();
        assert_eq!(
            AgentConfig::parse(Path::new("agent.toml"), &text).unwrap(),
            config
        );
        let bad_url = text.replace("http://d:7700", "d:7700");
        let msg = AgentConfig::parse(Path::new("agent.toml"), &bad_url)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("agent.toml, line 2") && msg.contains("coordinator 2 of the list"),
            "{msg}"
        );
        let bad = text.replace("capacity", "capacty");
        let msg = AgentConfig::parse(Path::new("agent.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("agent.toml") && msg.contains("capacty") && msg.contains("line"),
            "{msg}"
        );
    }
}
