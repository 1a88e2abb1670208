//! `gantry-agent`: run in the foreground (from flags or a config file),
//! install / uninstall as a systemd service, or (started by the agent
//! itself) run one app's reverse proxy.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use gantry_agent::{
    install::{self, Target},
    proxy::{self, ProxyOptions},
    AgentOptions,
};
use gantry_shared::{
    config::agent::{self as agent_config, AgentConfig},
    url::CoordinatorList,
    AgentName, EnvName,
};
use tokio_util::sync::CancellationToken;

/// The Gantry agent: runs deploy jobs on this server for one environment.
///
/// Without a subcommand it runs in the foreground from [`Flags`]. Those are
/// always parsed (clap counts a flag read from its variable as given, so an
/// optional group of them would be "present" whenever `GANTRY_COORDINATOR`
/// is set, and then demand `--env` of every subcommand); every field is
/// optional or defaulted, so a variable never makes a subcommand fail, and
/// flags typed before a subcommand are still refused
/// (`args_conflicts_with_subcommands` looks only at the command line).
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground with the settings of a config file.
    Run {
        /// The config file.
        #[arg(long, default_value = agent_config::DEFAULT_AGENT_CONFIG)]
        config: PathBuf,
    },
    /// Write the config file and a systemd unit, and enable the service.
    Install {
        #[command(flatten)]
        flags: Box<Flags>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Stop and disable the service, and remove its unit and config.
    Uninstall {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Enrol this host: redeem a one-time token from `gantry-coordinator
    /// agent enroll` for a client certificate (the key is made here).
    Join {
        /// The coordinator's URL, https://HOST:PORT; or several separated
        /// by commas, tried in turn until one enrols the agent.
        #[arg(long, env = "GANTRY_COORDINATOR")]
        coordinator: String,
        /// The join token.
        #[arg(long, env = "GANTRY_JOIN_TOKEN")]
        token: String,
        /// Where to write the key and certificates.
        #[arg(long, default_value = gantry_agent::join::DEFAULT_TLS_DIR)]
        tls_dir: PathBuf,
    },
    /// Run one app's reverse proxy (the agent starts these itself).
    Proxy {
        /// The app's stable address, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The control socket.
        #[arg(long)]
        control: PathBuf,
        /// The file keeping the current route across restarts.
        #[arg(long)]
        state: PathBuf,
    },
}

/// Where `install` and `uninstall` put files.
#[derive(Args)]
struct TargetArgs {
    /// The config file.
    #[arg(long, default_value = agent_config::DEFAULT_AGENT_CONFIG)]
    config: PathBuf,
    /// Directory of the systemd unit.
    #[arg(long, default_value = install::DEFAULT_UNIT_DIR)]
    unit_dir: PathBuf,
    /// Only write or remove files; do not run systemctl.
    #[arg(long)]
    no_systemctl: bool,
}

/// Everything an agent is started with. The environment and name are
/// checked when the config is made, not by clap, so that a malformed
/// `GANTRY_ENV` only matters where it is used.
#[derive(Args)]
struct Flags {
    /// The coordinator's URL; or, for coordinators sharing one store, all
    /// their URLs separated by commas (the agent finds the leader).
    #[arg(
        long,
        env = "GANTRY_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    coordinator: String,
    /// The environment this server belongs to (required).
    #[arg(long, env = "GANTRY_ENV")]
    env: Option<String>,
    /// This agent's unique name (required).
    #[arg(long, env = "GANTRY_AGENT_NAME")]
    name: Option<String>,
    /// Where mirrors, workspaces and the spool live.
    #[arg(long, env = "GANTRY_WORK_DIR", default_value = "/var/lib/gantry-agent")]
    work_dir: PathBuf,
    /// Jobs run at once.
    #[arg(long, default_value_t = agent_config::default_capacity())]
    capacity: u32,
    /// A label shown to operators, as key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Host address containers publish their port on.
    #[arg(long, default_value = "0.0.0.0")]
    publish_ip: String,
    /// Host the agent reaches published ports on for health checks.
    #[arg(long, default_value = "127.0.0.1")]
    health_host: String,
    /// Host put in the URLs operators are given (default: --health-host).
    #[arg(long)]
    public_host: Option<String>,
    /// Seconds running jobs get to finish on SIGTERM.
    #[arg(long, default_value_t = agent_config::default_drain_grace_secs())]
    drain_grace_secs: u64,
    /// Where `join` wrote the certificate (for an https:// coordinator).
    #[arg(long, env = "GANTRY_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// The unprivileged user builds run as (install: gantry-build, which
    /// it creates; otherwise the agent's own user).
    #[arg(long)]
    build_user: Option<String>,
}

impl Flags {
    fn into_config(self) -> anyhow::Result<AgentConfig> {
        let (Some(env), Some(name)) = (self.env, self.name) else {
            bail!(
                "give --env and --name (or GANTRY_ENV and GANTRY_AGENT_NAME), \
                 or `run --config FILE`; see --help"
            );
        };
        CoordinatorList::parse(&self.coordinator).context("--coordinator (GANTRY_COORDINATOR)")?;
        let env = EnvName::new(env).context("--env (GANTRY_ENV)")?;
        let name = AgentName::new(name).context("--name (GANTRY_AGENT_NAME)")?;
        let mut labels = BTreeMap::new();
        for label in &self.labels {
            let Some((k, v)) = label.split_once('=') else {
                bail!("--label {label:?} must be KEY=VALUE");
            };
            labels.insert(k.to_owned(), v.to_owned());
        }
        if self.capacity == 0 {
            bail!("--capacity must be at least 1");
        }
        Ok(AgentConfig {
            coordinator: self.coordinator,
            env,
            name,
            work_dir: self.work_dir,
            capacity: self.capacity,
            publish_ip: self.publish_ip,
            health_host: self.health_host,
            public_host: self.public_host,
            drain_grace_secs: self.drain_grace_secs,
            tls_dir: self.tls_dir,
            build_user: self.build_user,
            labels,
        })
    }
}

fn options(config: AgentConfig) -> AgentOptions {
    AgentOptions {
        public_host: config
            .public_host
            .unwrap_or_else(|| config.health_host.clone()),
        coordinator: config.coordinator,
        name: config.name,
        env: config.env,
        work_dir: config.work_dir,
        capacity: config.capacity,
        labels: config.labels,
        publish_ip: config.publish_ip,
        health_host: config.health_host,
        drain_grace: Duration::from_secs(config.drain_grace_secs),
        proxy_program: None,
        tls_dir: config.tls_dir,
        build_user: config.build_user,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colours for a terminal only: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let cli = Cli::parse();
    let config = match (cli.command, cli.flags) {
        (Some(Command::Run { config }), _) => AgentConfig::load(&config)?,
        (Some(Command::Install { flags, target }), _) => {
            let mut config = flags.into_config()?;
            config
                .build_user
                .get_or_insert_with(|| install::DEFAULT_BUILD_USER.to_owned());
            let binary = std::env::current_exe().context("cannot find this binary's path")?;
            let target = Target {
                config_path: target.config,
                unit_dir: target.unit_dir,
                systemctl: !target.no_systemctl,
            };
            install::install(&config, &binary, &target)?;
            println!(
                "installed {} and {}",
                target.config_path.display(),
                target.unit_dir.join(install::UNIT_NAME).display()
            );
            return Ok(());
        }
        (Some(Command::Uninstall { target }), _) => {
            let target = Target {
                config_path: target.config,
                unit_dir: target.unit_dir,
                systemctl: !target.no_systemctl,
            };
            install::uninstall(&target)?;
            println!("uninstalled {}", install::UNIT_NAME);
            return Ok(());
        }
        (
            Some(Command::Join {
                coordinator,
                token,
                tls_dir,
            }),
            _,
        ) => {
            let joined = gantry_agent::join::join(&coordinator, &token, &tls_dir).await?;
            println!(
                "enrolled as agent {} of {}; certificate in {}",
                joined.name,
                joined.env,
                joined.dir.display()
            );
            println!(
                "next: gantry-agent install --coordinator {} --env {} --name {} --tls-dir {}",
                CoordinatorList::parse(&coordinator).map_or(coordinator, |list| list.to_text()),
                joined.env,
                joined.name,
                joined.dir.display()
            );
            return Ok(());
        }
        (
            Some(Command::Proxy {
                listen,
                control,
                state,
            }),
            _,
        ) => {
            let options = ProxyOptions {
                listen,
                control,
                state,
                max_connections: proxy::limits::MAX_CONNECTIONS,
            };
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            return proxy::serve(options, shutdown).await;
        }
        (None, flags) => flags.into_config()?,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    gantry_agent::run(options(config), shutdown).await
}
