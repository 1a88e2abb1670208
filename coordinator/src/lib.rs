//! The Gantry coordinator: a gRPC server that agents dial and hold a stream
//! to, that schedules deploy jobs onto them, stores every log line, and
//! serves operators.
//!
//! [`serve`] takes an already-bound listener and a shutdown token, so tests
//! and the demo run it in-process on port 0. Its long-lived tasks belong to
//! a [`supervise::Supervisor`]: if one dies, `serve` stops the others and
//! returns why.

pub mod agent_service;
pub mod audit;
pub mod auth;
pub mod core;
pub mod edge;
pub mod error;
pub mod fleet;
pub mod follow;
pub mod guard;
pub mod hub;
pub mod job;
pub mod lead;
pub mod operator_service;
pub mod rate;
pub mod release;
pub mod request;
pub mod scheduler;
pub mod standby;
pub mod store;
pub mod supervise;
pub mod tail;
pub mod trust;

use std::{sync::Arc, time::Duration};

use gantry_shared::{
    config::{CoordinatorConfig, StoreChoice},
    limits::MAX_GRPC_MESSAGE_BYTES,
    proto,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// HTTP/2 ping interval on every connection (see `serve`).
const SERVER_KEEPALIVE: Duration = Duration::from_secs(60);

/// Time a peer has to answer a ping before its connection is closed: a
/// live peer answers within a round trip, so a dead or stalled one frees
/// its connection within this much after its ping.
const SERVER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Streams one connection may have open at once (the common gRPC
/// default). An agent uses a few, a `gantry` command one or two, and each
/// log follower has a connection of its own; past this, a client's new
/// streams wait for its old ones, so one connection cannot hold unbounded
/// per-stream state.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// Longest a request may take to be answered (its response headers; a
/// stream may then run as long as it runs). The slowest legitimate ones
/// fetch from or push to git under a 60 s timeout; a request whose body
/// never comes is ended after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest header block a request may send: a token and a few names need
/// well under a kilobyte.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

pub use crate::core::Core;

/// How long a stopping coordinator waits for its connections to close
/// (followers and agents are told to go at once; a request in flight, a
/// git fetch at worst, may finish) before it stops them and flushes the
/// store anyway: a supervisor that restarts it should not wait for ever.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// How long a starting coordinator waits for the one before it, in this
/// process or another that is still exiting, to let go of the database.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens the store `config` names: sled in its data directory, or
/// Postgres.
async fn open_store(config: &CoordinatorConfig) -> Result<store::SharedStore, store::StoreError> {
    match config.store_choice() {
        StoreChoice::Sled => open_sled(&config.data_dir).await,
        StoreChoice::Postgres { url, password, ca } => {
            let password = password.map(|p| p.expose());
            Ok(Arc::new(
                store::postgres::PgStore::open_with_ca(url, password, ca).await?,
            ))
        }
    }
}

/// What `config`'s store is, for messages (never with a password: the
/// URL holds none).
fn describe_store(config: &CoordinatorConfig) -> String {
    match config.store_choice() {
        StoreChoice::Sled => format!("the database in {}", config.data_dir.display()),
        StoreChoice::Postgres { url, .. } => format!("the Postgres database {url}"),
    }
}

/// Opens the sled store in `dir`, waiting (up to [`STORE_LOCK_WAIT`])
/// while another coordinator still holds its lock.
async fn open_sled(dir: &std::path::Path) -> Result<store::SharedStore, store::StoreError> {
    let deadline = tokio::time::Instant::now() + STORE_LOCK_WAIT;
    loop {
        match store::sled::SledStore::open(dir) {
            Err(store::StoreError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                warn!(dir = %dir.display(), "the database is still locked by another coordinator; waiting");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            opened => return Ok(Arc::new(opened?)),
        }
    }
}

/// Runs the coordinator on `listener` until `shutdown` is cancelled.
///
/// With a store several coordinators share (Postgres) it leads only while
/// it holds the lease (see [`lead`]): until then, and again after losing
/// it, it stands by ([`standby`]). With sled it always leads.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let store = open_store(&config)
        .await
        .with_context(|| format!("cannot open {}", describe_store(&config)))?;
    gantry_shared::tls::install_crypto_provider();
    if config.plaintext
        && (!config.users.is_empty() || config.environments.iter().any(|e| !e.approve.is_empty()))
    {
        warn!("plaintext: agents are not authenticated, so any local user can attach as an agent of any environment; use TLS (drop `plaintext`) for anything but a demo");
    }
    if !config.plaintext && config.users.is_empty() {
        warn!("no [[users]] are configured, so every operator request is refused; add one with `gantry-coordinator token new`");
    }
    let tls = match config.plaintext {
        true => None,
        false => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            trust::Authority::load(&config.tls_dir())?.server_config()?,
        ))),
    };
    let config = Arc::new(config);
    let per_address = trust::conn::PerAddress::new(config.max_connections_per_address);
    let me = lead::candidate(config.advertised_url());
    let served = loop {
        let term = match store.election() {
            None => None,
            Some(_) => {
                let listener = copy_listener(&listener)?;
                let waited = standby::stand_by(
                    &store,
                    &me,
                    listener,
                    tls.clone(),
                    per_address.clone(),
                    &shutdown,
                );
                match waited.await? {
                    Some(term) => Some(term),
                    None => break Ok(()),
                }
            }
        };
        let term_ended = lead(
            config.clone(),
            store.clone(),
            copy_listener(&listener)?,
            tls.clone(),
            per_address.clone(),
            term.clone(),
            shutdown.clone(),
        )
        .await;
        if let Some(term) = &term {
            lead::resign(&store, term).await;
        }
        match (term_ended, term) {
            (Err(e), Some(term)) if !shutdown.is_cancelled() => {
                warn!(epoch = term.epoch(), error = %format!("{e:#}"), "stopped leading; standing by");
            }
            (ended, _) => break ended,
        }
    };
    let closed = store.close().await;
    served?;
    closed.context("cannot flush the database")?;
    info!("coordinator stopped");
    Ok(())
}

/// Another handle on `listener`'s socket: each term, and each spell of
/// standing by, serves on one of its own and closes it when it ends,
/// while the socket stays bound.
pub(crate) fn copy_listener(listener: &TcpListener) -> std::io::Result<TcpListener> {
    use std::os::fd::AsFd;
    let copy = listener.as_fd().try_clone_to_owned()?;
    TcpListener::from_std(std::net::TcpListener::from(copy))
}

/// One term as leader (for ever, with sled): the services, the scheduler
/// and the lease's renewal, until `shutdown` or until a vital task ends
/// (the lease lost among them).
async fn lead(
    config: Arc<CoordinatorConfig>,
    store: store::SharedStore,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    per_address: Arc<trust::conn::PerAddress>,
    term: Option<Arc<lead::Term>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;

    let authority = match config.plaintext {
        true => None,
        false => Some(trust::Authority::load(&config.tls_dir())?),
    };
    let core = Core::new(config, store, authority).await?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::operator_service_server::OperatorServiceServer<operator_service::OperatorService>>()
        .await;
    health_reporter
        .set_serving::<proto::agent_service_server::AgentServiceServer<agent_service::AgentService>>()
        .await;
    // Both reflection versions: grpcurl speaks v1, many clients (Python's
    // grpcio-reflection among them) still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("cannot build the reflection service")?;

    // Cancelled by the caller's shutdown, or by the supervisor when a vital
    // task dies: either way everything below stops.
    let stop = shutdown.child_token();
    let agents = proto::agent_service_server::AgentServiceServer::new(
        agent_service::AgentService::new(core.clone(), stop.clone()),
    )
    .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let operators = proto::operator_service_server::OperatorServiceServer::new(
        operator_service::OperatorService::new(core.clone(), stop.clone()),
    )
    .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);

    info!(addr = %listener.local_addr()?, tls = tls.is_some(), open = core.auth.is_open(), epoch = term.as_ref().map(|t| t.epoch()), "coordinator serving");
    let edge = edge::EdgeLayer::new(core.clone(), tls.is_some().then(|| per_address.clone()));
    // Agents' liveness comes from their heartbeats and the lease; this ping
    // only finds dead connections of idle operator streams, so it is rare:
    // a thousand agents would otherwise cost a ping every 10 ms.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE))
        .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .timeout(REQUEST_TIMEOUT)
        .layer(edge)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agents)
        .add_service(operators);

    let mut tasks = supervise::Supervisor::default();
    // The server stops accepting when `stop` is cancelled, tells every
    // connection to go, and ends once they have (the services end their
    // streams on `stop`).
    let stopped = stop.clone().cancelled_owned();
    match tls {
        Some(acceptor) => {
            let (accepted, incoming) = tokio::sync::mpsc::channel(trust::accept::ACCEPTED_BUFFER);
            tasks.spawn(
                "the TLS accept loop",
                trust::accept::accept_loop(
                    listener,
                    acceptor,
                    Some(core.clone()),
                    per_address,
                    accepted,
                    stop.clone(),
                ),
            );
            let incoming = ReceiverStream::new(incoming);
            tasks.spawn("the gRPC server", async move {
                Ok(router
                    .serve_with_incoming_shutdown(incoming, stopped)
                    .await?)
            });
        }
        None => {
            // Nagle's algorithm off: agents and followers send many small
            // messages, and delayed ACKs would otherwise add ~40 ms to a
            // pushed assignment or a live log line.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tasks.spawn("the gRPC server", async move {
                Ok(router
                    .serve_with_incoming_shutdown(incoming, stopped)
                    .await?)
            });
        }
    }
    // The owner of scheduling: it stops at a store error (and then so does
    // the coordinator), or when told to; in a term, also when the lease
    // may have run out.
    let mut scheduler = core
        .take_scheduler()
        .context("the scheduler was started twice")?;
    if let Some(term) = &term {
        scheduler = scheduler.in_term(term.clone());
        tasks.spawn(
            "the leader's lease",
            lead::keep(core.store.clone(), term.clone(), stop.clone()),
        );
    }
    tasks.spawn("the scheduler", {
        let stop = stop.clone();
        async move { Ok(scheduler.run(stop).await?) }
    });

    // In order: stop accepting and end every stream (the tasks stop on
    // `stop`), then make every write durable, whichever way the term ends.
    let watched = tasks.watch(&stop).await;
    let drained = tasks.drain(DRAIN_GRACE).await;
    watched?;
    drained
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_still_held_by_a_stopping_coordinator_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let held = store::sled::SledStore::open(dir.path()).unwrap();
        let opening = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { open_sled(&dir).await }
        });
        // The opener is refused while the store is held, and keeps trying.
        tokio::task::yield_now().await;
        assert!(!opening.is_finished());
        drop(held);
        let reopened = opening.await.unwrap().unwrap();
        assert_eq!(reopened.next_job_id().await.unwrap().get(), 1);
    }

    #[tokio::test]
    async fn a_postgres_url_in_the_config_opens_that_database() {
        let db = store::postgres::testdb::TestDb::create().await;
        let text = format!(
            "store = \"{}\"\nstore_password = \"unused\"\n[[environments]]\nname = \"dev\"\n",
            db.postgres_url()
        );
        let config = CoordinatorConfig::parse(std::path::Path::new("c.toml"), &text).unwrap();
        assert!(describe_store(&config).starts_with("the Postgres database postgres://"));
        let store = open_store(&config).await.unwrap();
        let me = store::Candidate {
            holder: "test".into(),
            url: "http://127.0.0.1:7700".into(),
        };
        let election = store.election().expect("postgres elects a leader");
        let ttl = Duration::from_secs(60);
        let epoch = election.try_lead(&me, ttl).await.unwrap().unwrap();
        assert_eq!(store.next_job_id().await.unwrap().get(), 1);
        assert!(election.resign(epoch).await.unwrap());
        // It is that database: a second store on it goes on counting.
        let again = store::postgres::PgStore::open(&db.url, None).await.unwrap();
        store::Election::try_lead(&again, &me, ttl)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store::Store::next_job_id(&again).await.unwrap().get(), 2);
    }
}
