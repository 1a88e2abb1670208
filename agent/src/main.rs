//! `gantry-agent --coordinator URL --env dev --name dev-1 --work-dir DIR`

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::bail;
use clap::Parser;
use gantry_agent::AgentOptions;
use gantry_shared::{AgentName, EnvName};
use tokio_util::sync::CancellationToken;

/// The Gantry agent: runs deploy jobs on this server for one environment.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "GANTRY_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    coordinator: String,
    /// The environment this server belongs to.
    #[arg(long, env = "GANTRY_ENV")]
    env: EnvName,
    /// This agent's unique name.
    #[arg(long, env = "GANTRY_AGENT_NAME")]
    name: AgentName,
    /// Where mirrors and workspaces live.
    #[arg(long, env = "GANTRY_WORK_DIR", default_value = "/var/lib/gantry-agent")]
    work_dir: PathBuf,
    /// Jobs run at once.
    #[arg(long, default_value_t = 2)]
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
    /// Host put in the URLs operators are given (this server's name or address).
    #[arg(long, default_value = "127.0.0.1")]
    public_host: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let Some((k, v)) = label.split_once('=') else {
            bail!("--label {label:?} must be KEY=VALUE");
        };
        labels.insert(k.to_owned(), v.to_owned());
    }
    let options = AgentOptions {
        coordinator: args.coordinator,
        name: args.name,
        env: args.env,
        work_dir: args.work_dir,
        capacity: args.capacity,
        labels,
        publish_ip: args.publish_ip,
        health_host: args.health_host,
        public_host: args.public_host,
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
    gantry_agent::run(options, shutdown).await
}
