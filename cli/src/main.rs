//! `gantry`: deploy branches and branch sets, roll back, follow, cancel and
//! inspect jobs and releases; list branches, apps, environments and agents;
//! or run the demo.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gantry_cli::{
    commands::{self, DeployArgs},
    demo::{self, DemoOptions},
    output::{self, Format},
    releases, tell, trust,
};
use gantry_shared::JobId;

/// Gantry: build and deploy branches to environments.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The coordinator's URL (default: the one `gantry login` saved, else
    /// http://127.0.0.1:7700); for coordinators sharing one store, all
    /// their URLs separated by commas: each command goes to the leader.
    #[arg(long, global = true, env = "GANTRY_COORDINATOR")]
    coordinator: Option<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy a branch, or a set of branches merged together, to an
    /// environment and follow its log.
    Deploy {
        /// The app.
        #[arg(long)]
        app: String,
        /// The environment.
        #[arg(long)]
        env: String,
        /// A branch; repeat for a set, merged in this order onto the default
        /// branch (none: the app's default branch).
        #[arg(long = "branch")]
        branches: Vec<String>,
        /// Add a branch to the set the environment runs now; repeatable.
        #[arg(long, conflicts_with = "branches")]
        add: Vec<String>,
        /// Remove a branch from the set the environment runs now; repeatable.
        #[arg(long, conflicts_with = "branches")]
        remove: Vec<String>,
        /// Print the job id and return without following.
        #[arg(long)]
        detach: bool,
    },
    /// Put an earlier release back, without rebuilding, and follow it.
    Rollback {
        /// The app.
        #[arg(long)]
        app: String,
        /// The environment.
        #[arg(long)]
        env: String,
        /// The release number (default: the one before the release serving).
        #[arg(long)]
        to: Option<u64>,
        /// Print the job id and return without following.
        #[arg(long)]
        detach: bool,
    },
    /// List an environment's releases, newest first.
    Releases {
        /// The app.
        #[arg(long)]
        app: String,
        /// The environment.
        #[arg(long)]
        env: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// What an environment runs.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// How two environments' branch sets differ.
    Diff {
        /// The app.
        #[arg(long)]
        app: String,
        /// One environment.
        from: String,
        /// The other.
        to: String,
    },
    /// List the app remote's branches.
    Branches {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Create branches on the app's remote.
    Branch {
        #[command(subcommand)]
        command: BranchCommand,
    },
    /// Print a job's log (with -f, follow it until the job ends), or with
    /// --app and --env the running containers' own output from every server.
    Logs {
        /// The job.
        #[arg(required_unless_present = "app")]
        job: Option<JobId>,
        /// The app whose running containers to read.
        #[arg(long, requires = "env", conflicts_with = "job")]
        app: Option<String>,
        /// Their environment.
        #[arg(long, requires = "app")]
        env: Option<String>,
        /// Follow live lines (until the job ends, or Ctrl-C).
        #[arg(long, short)]
        follow: bool,
        /// With --app: recent lines per server to start with.
        #[arg(long, default_value_t = 100)]
        tail: u32,
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
    /// Check an API token and save it, with the coordinator's URL and CA,
    /// for the next commands.
    Login {
        /// The token (from `gantry-coordinator token new`).
        #[arg(long, env = "GANTRY_TOKEN")]
        token: String,
        /// The coordinator's CA certificate, for https://.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Who the token belongs to, and where they may deploy and approve.
    Whoami,
    /// Let a deploy that waits for approval run.
    Approve {
        /// The job.
        job: JobId,
        /// Why, for the job and the audit trail.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Refuse a deploy that waits for approval.
    Reject {
        /// The job.
        job: JobId,
        /// Why, for the job and the audit trail.
        #[arg(long)]
        comment: Option<String>,
    },
    /// The audit trail, newest first.
    Audit {
        /// At most this many entries (read from the coordinator a page at
        /// a time, so any number fits).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Manage agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
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

#[derive(Subcommand)]
enum AgentCommand {
    /// Revoke an agent's certificates: it is disconnected and refused.
    Revoke {
        /// The agent's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// The release serving (branches, commits, image, servers) and what waits.
    Show {
        /// The app.
        #[arg(long)]
        app: String,
        /// The environment.
        #[arg(long)]
        env: String,
    },
}

#[derive(Subcommand)]
enum BranchCommand {
    /// Create a branch on the remote.
    Create {
        /// The app.
        #[arg(long)]
        app: String,
        /// The new branch's name.
        #[arg(long)]
        name: String,
        /// A branch or commit to start from (default: the default branch).
        #[arg(long)]
        from: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        // Colours for a terminal only: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => tell!("error: {} ({:?})", status.message(), status.code()),
                None => tell!("error: {e:#}"),
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
    if let Command::Login { token, ca } = cli.command {
        let url = cli
            .coordinator
            .unwrap_or_else(|| gantry_cli::login::DEFAULT_COORDINATOR.to_owned());
        trust::login(&url, token, ca.as_deref()).await?;
        return Ok(true);
    }
    let mut client = gantry_cli::login::connect(cli.coordinator.as_deref()).await?;
    match cli.command {
        Command::Deploy {
            app,
            env,
            branches,
            add,
            remove,
            detach,
        } => {
            let args = DeployArgs {
                app,
                env,
                branches,
                add,
                remove,
            };
            return commands::deploy(&mut client, args, detach, format).await;
        }
        Command::Rollback {
            app,
            env,
            to,
            detach,
        } => return releases::rollback(&mut client, app, env, to, detach, format).await,
        Command::Releases { app, env, limit } => {
            releases::releases(&mut client, app, env, limit, format).await?
        }
        Command::Env {
            command: EnvCommand::Show { app, env },
        } => releases::env_show(&mut client, app, env, format).await?,
        Command::Diff { app, from, to } => {
            releases::diff(&mut client, app, from, to, format).await?
        }
        Command::Branches { app } => releases::branches(&mut client, app, format).await?,
        Command::Branch {
            command: BranchCommand::Create { app, name, from },
        } => releases::create_branch(&mut client, app, name, from, format).await?,
        Command::Logs {
            job,
            app,
            env,
            follow,
            tail,
        } => match (job, app, env) {
            (Some(job), _, _) => {
                commands::logs(&mut client, job.get(), follow, format).await?;
            }
            (None, Some(app), Some(env)) => {
                releases::app_logs(&mut client, app, env, follow, tail, format).await?
            }
            _ => anyhow::bail!("give a job, or --app and --env"),
        },
        Command::Jobs { app, env, limit } => {
            commands::jobs(&mut client, app, env, limit, format).await?
        }
        Command::Job { job } => commands::job(&mut client, job.get(), format).await?,
        Command::Cancel { job } => commands::cancel(&mut client, job.get(), format).await?,
        Command::Agents => commands::agents(&mut client, format).await?,
        Command::Apps => commands::apps(&mut client, format).await?,
        Command::Envs => commands::envs(&mut client, format).await?,
        Command::Whoami => trust::whoami(&mut client, format).await?,
        Command::Approve { job, comment } => {
            trust::decide(&mut client, job.get(), true, comment, format).await?
        }
        Command::Reject { job, comment } => {
            trust::decide(&mut client, job.get(), false, comment, format).await?
        }
        Command::Audit { limit } => trust::audit(&mut client, limit, format).await?,
        Command::Agent {
            command: AgentCommand::Revoke { name },
        } => trust::revoke(&mut client, name).await?,
        Command::Demo { .. } | Command::Login { .. } => unreachable!("handled above"),
    }
    Ok(true)
}
