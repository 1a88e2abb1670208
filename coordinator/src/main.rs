//! `gantry-coordinator --config coordinator.toml` serves; `ca init`,
//! `agent enroll` and `token new` set up trust beforehand; `migrate`
//! moves a sled data directory into the configured Postgres store.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gantry_coordinator::{
    lead,
    store::{copy, postgres::PgStore, Election, Store},
    trust,
};
use gantry_shared::{
    config::{CoordinatorConfig, StoreChoice},
    tls::fingerprint,
    AgentName, EnvName,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The Gantry coordinator: schedules deploys onto agents and serves operators.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path of the configuration file.
    #[arg(
        long,
        global = true,
        env = "GANTRY_CONFIG",
        default_value = "coordinator.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// The certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Agents' enrolment.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Operators' API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Copy every record of a sled data directory into the Postgres
    /// database the config's `store` names (which must hold none), in one
    /// transaction. Stop the coordinator first.
    Migrate {
        /// The sled data directory to copy (default: the config's data_dir).
        #[arg(long, value_name = "DIR")]
        from_sled: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA, the server certificate and the join key in the TLS
    /// directory (`tls_dir`, default `<data_dir>/tls`).
    Init {
        /// A name or address agents and operators reach the coordinator
        /// by; repeat for several. localhost and loopback are always in.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Make a new server certificate with the same CA (before it expires,
    /// or for new host names); enrolled agents are unaffected.
    RenewServer {
        /// A name or address of the coordinator; repeat for several.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Print a one-time join token for an agent of an environment.
    Enroll {
        /// The environment the agent's certificate will be bound to.
        #[arg(long)]
        env: EnvName,
        /// The agent's name.
        #[arg(long)]
        name: AgentName,
        /// Minutes the token stays valid (at most a week).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=10_080))]
        ttl_minutes: u64,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make an API token for a user and print the `[[users]]` entry to add
    /// to the config (only its hash is stored).
    New {
        /// The user's name.
        #[arg(long)]
        name: String,
        /// A role; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
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
    let args = Args::parse();
    gantry_shared::tls::install_crypto_provider();
    match args.command {
        None | Some(Command::Serve) => {}
        Some(Command::Migrate { from_sled }) => return migrate(&args.config, from_sled).await,
        Some(command) => return admin(&args.config, command),
    }
    let config = CoordinatorConfig::load(&args.config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let serving = gantry_coordinator::serve(config, listener, shutdown.clone());
    tokio::pin!(serving);
    // A signal asks the coordinator to stop; it then drains and returns. An
    // error (a vital task died) is returned from `main`, which prints it
    // and exits non-zero.
    let signalled = tokio::select! {
        served = &mut serving => return served,
        signalled = shutdown_signal() => signalled,
    };
    tracing::info!("asked to stop; draining");
    shutdown.cancel();
    let served = serving.await;
    signalled.and(served)
}

/// The set-up commands: they work on files and print what to do next.
fn admin(config_path: &std::path::Path, command: Command) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(config_path)?;
    let dir = config.tls_dir();
    match command {
        Command::Serve | Command::Migrate { .. } => unreachable!("handled by main"),
        Command::Ca {
            command: CaCommand::Init { hosts },
        } => {
            let made = trust::ca::init(&dir, &hosts)?;
            println!("CA and server certificate created in {}", dir.display());
            println!("server names: {}", made.hosts.join(", "));
            println!("CA fingerprint (sha256): {}", made.ca_fingerprint);
            println!("next: gantry-coordinator agent enroll --env ENV --name NAME");
        }
        Command::Ca {
            command: CaCommand::RenewServer { hosts },
        } => {
            let made = trust::ca::renew_server(&dir, &hosts)?;
            println!("new server certificate in {}", dir.display());
            println!("server names: {}", made.hosts.join(", "));
            println!(
                "restart the coordinator to serve it; agents and logins keep working (same CA)"
            );
        }
        Command::Agent {
            command:
                AgentCommand::Enroll {
                    env,
                    name,
                    ttl_minutes,
                },
        } => {
            if config.environment(&env).is_none() {
                let known: Vec<_> = config
                    .environments
                    .iter()
                    .map(|e| e.name().to_string())
                    .collect();
                anyhow::bail!(
                    "unknown environment {env}; configured: {}",
                    known.join(", ")
                );
            }
            let authority = trust::Authority::load(&dir)?;
            let token = authority.enroll(env, name, Duration::from_secs(ttl_minutes * 60));
            println!("{token}");
            eprintln!(
                "one-time token for agent {} in {}, valid {ttl_minutes} minutes; on the agent's host run:\n  \
                 gantry-agent join --coordinator https://COORDINATOR:PORT --token <the token above>",
                token.name, token.env
            );
        }
        Command::Token {
            command: TokenCommand::New { name, roles },
        } => {
            let bad = std::iter::once(&name)
                .chain(&roles)
                .find(|v| !gantry_shared::config::trust::is_role_name(v));
            if let Some(bad) = bad {
                anyhow::bail!("{bad:?}: names and roles use lowercase letters, digits and '-', starting with a letter");
            }
            let token = trust::ca::new_api_token();
            println!("token: {token}");
            println!("\nadd to {}:\n", config_path.display());
            println!(
                "[[users]]\nname = {name:?}\nroles = {roles:?}\ntoken_sha256 = \"{}\"",
                fingerprint(token.as_bytes())
            );
            eprintln!("\ngive the token to {name} for `gantry login`; it is not stored anywhere, so it cannot be shown again");
        }
    }
    Ok(())
}

/// `migrate`: copies the sled database in `from_sled` (default: the
/// config's data_dir) into the config's Postgres store, and says what to
/// do next. The copy is one transaction: refused or failed, it changed
/// nothing, and can be run again.
async fn migrate(config_path: &std::path::Path, from_sled: Option<PathBuf>) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(config_path)?;
    let StoreChoice::Postgres { url, password, ca } = config.store_choice() else {
        anyhow::bail!(
            "the store in {} is sled, so there is nowhere to migrate to: set store = \
             \"postgres://USER@HOST:PORT/DATABASE\" (and store_password) to the database to \
             copy into, then run migrate again",
            config_path.display()
        );
    };
    let dir = from_sled.unwrap_or_else(|| config.data_dir.clone());
    let source = copy::open_sled_source(&dir)?;
    let copied = async {
        let destination = PgStore::open_with_ca(url, password.map(|p| p.expose()), ca)
            .await
            .with_context(|| format!("cannot open the Postgres database {url}"))?;
        // Holding the lead for the copy keeps coordinators from starting
        // to lead on a half-filled database, and refuses a running one.
        let me = lead::candidate(format!("{} (migrate)", config.advertised_url()));
        let Some(epoch) = destination.try_lead(&me, Duration::from_secs(3600)).await? else {
            let leader = destination.leader().await?.map_or("?".into(), |l| l.url);
            anyhow::bail!(
                "a coordinator leads on the Postgres database {url} ({leader}): stop every \
                 coordinator on it, then run migrate again"
            );
        };
        let moved = copy::copy_into_postgres(&source, &destination).await;
        let _ = destination.resign(epoch).await?;
        destination.close().await?;
        anyhow::Ok(moved?)
    }
    .await;
    // The source was only read; closing it lets go of its lock.
    source
        .close()
        .await
        .with_context(|| format!("cannot close the sled database in {}", dir.display()))?;
    let moved = copied?;
    println!(
        "copied the sled database in {} into the Postgres database {url}:",
        dir.display()
    );
    println!("{moved}");
    println!(
        "\nnext: start the coordinator with store = \"{url}\" (as in {}):\n  \
         gantry-coordinator --config {}\n\
         The sled database in {} is left in place; keep it until you have checked the \
         copy (data_dir also holds the CA in tls/ and the git mirrors, which the coordinator \
         still uses).",
        config_path.display(),
        config_path.display(),
        dir.display()
    );
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot handle Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
