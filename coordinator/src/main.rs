//! `gantry-coordinator --config coordinator.toml`

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gantry_shared::config::CoordinatorConfig;
use tokio_util::sync::CancellationToken;

/// The Gantry coordinator: schedules deploys onto agents and serves operators.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path of the configuration file.
    #[arg(long, env = "GANTRY_CONFIG", default_value = "coordinator.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = CoordinatorConfig::load(&args.config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    gantry_coordinator::serve(config, listener, shutdown).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
