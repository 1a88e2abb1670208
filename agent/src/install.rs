//! Installing the agent as a systemd service: `gantry-agent install` writes
//! `/etc/gantry/agent.toml` and a unit that starts after Docker, restarts on
//! failure and stops with SIGTERM (which drains), then enables it;
//! `uninstall` disables it and removes both files.
//!
//! Stopping or restarting the unit stops the agent only (`KillMode=process`):
//! the app proxies it started live in the unit's control group (a new
//! session does not leave it), and any other kill mode would take the
//! stable ports down with every `systemctl restart`. Docker's and
//! containerd's own units do the same for the containers they start. The
//! agent ends its builds itself when it drains, and on start kills what an
//! unclean exit left (`leftovers.rs`), so nothing else depends on systemd
//! killing the group.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use gantry_shared::config::agent::AgentConfig;

/// The systemd unit's name.
pub const UNIT_NAME: &str = "gantry-agent.service";

/// Where units installed by an administrator live.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";

/// The user an installed agent's builds run as: a system user of their
/// own, in no group but its own, so a build reaches neither Docker nor
/// the agent's keys.
pub const DEFAULT_BUILD_USER: &str = "gantry-build";

/// Open files allowed to the agent and, by inheritance, every proxy it
/// starts. A proxy at its connection cap holds three descriptors per
/// connection (client, upstream, one pooled); 65,536 covers that with room
/// for the agent's own (Docker, git, build pipes), where systemd's default
/// soft limit of 1,024 would cut a proxy down to about 320 connections.
pub const LIMIT_NOFILE: u64 = 65_536;

const _: () = assert!(
    LIMIT_NOFILE
        >= crate::proxy::limits::FDS_PER_CONNECTION * crate::proxy::limits::MAX_CONNECTIONS as u64
            + 1_024,
    "a proxy at its connection cap must fit in the unit's open-files limit"
);

/// Where the files go and whether to talk to systemd.
pub struct Target {
    /// The agent config file.
    pub config_path: PathBuf,
    /// The directory of the unit file.
    pub unit_dir: PathBuf,
    /// Run `systemctl` (off where there is no systemd, e.g. in containers and tests).
    pub systemctl: bool,
}

/// The unit file for an agent binary at `binary` reading `config_path`.
pub fn unit_text(binary: &Path, config_path: &Path, drain_grace_secs: u64) -> String {
    format!(
        "# Written by `gantry-agent install`.\n\
         [Unit]\n\
         Description=Gantry agent: runs deploy jobs for this server's environment\n\
         Documentation=https://github.com/gantry/gantry\n\
         After=network-online.target docker.service\n\
         Wants=network-online.target\n\
         Requires=docker.service\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={binary} run --config {config}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         # SIGTERM drains: running jobs get their grace period, then the agent exits.\n\
         KillSignal=SIGTERM\n\
         # Only the agent stops: the app proxies it started keep the stable ports\n\
         # serving through a restart or an upgrade.\n\
         KillMode=process\n\
         TimeoutStopSec={stop}\n\
         # For the agent and the proxies it starts (they inherit it).\n\
         LimitNOFILE={nofile}\n\
         Environment=RUST_LOG=info\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        binary = binary.display(),
        config = config_path.display(),
        stop = drain_grace_secs.saturating_add(30),
        nofile = LIMIT_NOFILE,
    )
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("cannot run systemctl {}", args.join(" ")))?;
    if !status.success() {
        bail!("systemctl {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Writes the config and the unit (config mode 0600, it names the
/// coordinator), and enables and starts the service.
pub fn install(config: &AgentConfig, binary: &Path, target: &Target) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = target.config_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&target.config_path, config.to_toml())
        .with_context(|| format!("cannot write {}", target.config_path.display()))?;
    std::fs::set_permissions(&target.config_path, std::fs::Permissions::from_mode(0o600))?;
    std::fs::create_dir_all(&target.unit_dir)
        .with_context(|| format!("cannot create {}", target.unit_dir.display()))?;
    let unit = target.unit_dir.join(UNIT_NAME);
    std::fs::write(
        &unit,
        unit_text(binary, &target.config_path, config.drain_grace_secs),
    )
    .with_context(|| format!("cannot write {}", unit.display()))?;
    if target.systemctl {
        if let Some(user) = &config.build_user {
            ensure_user(user)?;
        }
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT_NAME])?;
    }
    Ok(())
}

/// Creates the system user `name` (with its own group and a home for
/// build caches) unless it exists.
fn ensure_user(name: &str) -> anyhow::Result<()> {
    if crate::build_user::BuildUser::lookup(name).is_ok() {
        return Ok(());
    }
    let home = format!("/var/lib/{name}");
    let status = Command::new("useradd")
        .args(["--system", "--user-group", "--create-home", "--home-dir"])
        .arg(&home)
        .args(["--shell", "/usr/sbin/nologin", name])
        .status()
        .with_context(|| format!("cannot run useradd to create build user {name}"))?;
    if !status.success() {
        bail!("useradd {name} failed with {status}; create the user or pass --build-user");
    }
    Ok(())
}

/// Stops and disables the service and removes its files.
pub fn uninstall(target: &Target) -> anyhow::Result<()> {
    if target.systemctl {
        systemctl(&["disable", "--now", UNIT_NAME])?;
    }
    for path in [target.unit_dir.join(UNIT_NAME), target.config_path.clone()] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    if target.systemctl {
        systemctl(&["daemon-reload"])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[Service]` section's `key=value` lines.
    fn service_settings(unit: &str) -> Vec<(&str, &str)> {
        unit.lines()
            .skip_while(|line| *line != "[Service]")
            .skip(1)
            .take_while(|line| !line.starts_with('['))
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .collect()
    }

    #[test]
    fn the_unit_stops_the_agent_only_and_raises_the_open_files_limit() {
        let unit = unit_text(
            Path::new("/usr/local/bin/gantry-agent"),
            Path::new("/etc/gantry/agent.toml"),
            60,
        );
        let settings = service_settings(&unit);
        let value = |key: &str| -> Vec<&str> {
            settings
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(value("KillMode"), ["process"], "{unit}");
        assert_eq!(value("KillSignal"), ["SIGTERM"]);
        assert_eq!(value("LimitNOFILE"), ["65536"]);
        assert_eq!(value("TimeoutStopSec"), ["90"]);
        assert_eq!(
            value("ExecStart"),
            ["/usr/local/bin/gantry-agent run --config /etc/gantry/agent.toml"]
        );
    }

    /// Several coordinators given to `install` are all in the config the
    /// service runs with, in their order.
    #[test]
    fn install_keeps_every_coordinator_of_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::parse(
            Path::new("flags"),
            "coordinator = \"https://a:7700,https://b:7700\"\nenv = \"prod\"\nname = \"prod-1\"\n",
        )
        .unwrap();
        let target = Target {
            config_path: dir.path().join("agent.toml"),
            unit_dir: dir.path().join("units"),
            systemctl: false,
        };
        install(&config, Path::new("/usr/local/bin/gantry-agent"), &target).unwrap();
        let written = AgentConfig::load(&target.config_path).unwrap();
        assert_eq!(written.coordinator, "https://a:7700,https://b:7700");
        let list = gantry_shared::url::CoordinatorList::parse(&written.coordinator).unwrap();
        assert_eq!(list.len(), 2);
    }

    /// systemd's own parser reads the unit without a complaint (it warns
    /// on stderr, still exiting 0, for an unknown key or a bad value).
    #[test]
    fn systemd_reads_the_unit_without_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let binary = std::env::current_exe().unwrap();
        let unit = dir.path().join(UNIT_NAME);
        std::fs::write(
            &unit,
            unit_text(&binary, &dir.path().join("agent.toml"), 60),
        )
        .unwrap();
        let verified = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze (Debian's systemd package) checks the unit; scripts/test installs it");
        let stderr = String::from_utf8_lossy(&verified.stderr);
        assert!(
            verified.status.success() && stderr.trim().is_empty(),
            "{}: {stderr}",
            verified.status
        );
    }
}
