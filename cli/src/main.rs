//! `gantry`: deploy, follow, cancel and inspect jobs; list apps, environments
//! and agents; or run the demo.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gantry_cli::{
    commands,
    demo::{self, DemoOptions},
    output::Format,
};
use gantry_shared::JobId;

/// Gantry: build and deploy branches to environments.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The coordinator's URL.
    #[arg(
        long,
        global = true,
        env = "GANTRY_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    coordinator: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy a branch of an app to an environment and follow its log.
    Deploy {
        /// The app.
        #[arg(long)]
        app: String,
        /// The environment.
        #[arg(long)]
        env: String,
        /// The branch (default: the app's default branch).
        #[arg(long)]
        branch: Option<String>,
        /// Print the job id and return without following.
        #[arg(long)]
        detach: bool,
    },
    /// Print a job's log; with -f, follow it until the job ends.
    Logs {
        /// The job.
        job: JobId,
        /// Follow live lines until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one job.
    Job {
        /// The job.
        job: JobId,
    },
    /// Cancel a job that has not ended.
    Cancel {
        /// The job.
        job: JobId,
    },
    /// List agents and what they run.
    Agents,
    /// List apps.
    Apps,
    /// List environments.
    Envs,
    /// Run a coordinator, a dev agent and a sample Java service, and deploy it.
    Demo {
        /// Where the demo keeps its repository, config and data.
        #[arg(long, default_value = ".gantry/demo")]
        dir: PathBuf,
        /// Where its coordinator listens.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// Stop and clean up once the deploy is checked, instead of waiting for Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {} ({:?})", status.message(), status.code()),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}

/// Runs the command; `Ok(false)` means it ran but the job did not succeed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let format = cli.output;
    if let Command::Demo { dir, listen, exit } = cli.command {
        demo::run(DemoOptions { dir, listen, exit }).await?;
        return Ok(true);
    }
    let mut client = commands::connect(&cli.coordinator).await?;
    match cli.command {
        Command::Deploy {
            app,
            env,
            branch,
            detach,
        } => return commands::deploy(&mut client, app, env, branch, detach, format).await,
        Command::Logs { job, follow } => {
            commands::logs(&mut client, job.get(), follow, format).await?;
        }
        Command::Jobs { app, env, limit } => {
            commands::jobs(&mut client, app, env, limit, format).await?
        }
        Command::Job { job } => commands::job(&mut client, job.get(), format).await?,
        Command::Cancel { job } => commands::cancel(&mut client, job.get(), format).await?,
        Command::Agents => commands::agents(&mut client, format).await?,
        Command::Apps => commands::apps(&mut client, format).await?,
        Command::Envs => commands::envs(&mut client, format).await?,
        Command::Demo { .. } => unreachable!("handled above"),
    }
    Ok(true)
}
