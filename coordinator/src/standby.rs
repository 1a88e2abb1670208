//! A coordinator that does not lead: it serves on its address, so agents
//! and operators that reach it learn where the leader is, and tries for
//! the lead every [`TRY_EVERY`] until it wins.
//!
//! Every request to the agents' or the operators' service is refused with
//! `UNAVAILABLE` naming the leader (see [`gantry_shared::leader`]); it
//! reads nothing and writes nothing, so a client may send it again to the
//! leader. The health service says both services are not serving.

use std::{
    convert::Infallible,
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
};

use gantry_shared::{leader::standby_refusal, proto};
use tokio::{net::TcpListener, sync::watch, time::Instant};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    codegen::{http, Service},
    server::NamedService,
};
use tracing::{info, warn};

use crate::{
    agent_service::AgentService,
    lead::{Term, LEASE},
    operator_service::OperatorService,
    store::{Candidate, SharedStore},
    supervise::Supervisor,
    trust,
};

/// How often a standby tries for the lead.
pub const TRY_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Stands by on `listener` until this coordinator wins the lead (its
/// term) or `stop` is cancelled (`None`). It tries at once first, so a
/// coordinator alone on its database leads without serving refusals.
pub async fn stand_by(
    store: &SharedStore,
    me: &Candidate,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    per_address: Arc<trust::conn::PerAddress>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Arc<Term>>> {
    let election = store.election().expect("only a shared store has standbys");
    let (leader_tx, leader_rx) = watch::channel(None::<String>);
    let serving = stop.child_token();
    let mut server = None;
    let mut said = None;
    loop {
        let asked = Instant::now();
        match election.try_lead(me, LEASE).await {
            Ok(Some(epoch)) => {
                if let Some(server) = server {
                    serving.cancel();
                    server_stopped(server).await?;
                }
                info!(epoch, url = %me.url, "this coordinator leads");
                return Ok(Some(Term::new(epoch, asked)));
            }
            Ok(None) => {
                let leader = match election.leader().await {
                    Ok(leader) => leader.filter(|l| l.live).map(|l| l.url),
                    Err(e) => {
                        warn!(error = %e, "cannot read who leads");
                        None
                    }
                };
                if leader != said {
                    info!(leader = leader.as_deref().unwrap_or("none"), "standing by");
                    said = leader.clone();
                }
                leader_tx.send_replace(leader);
            }
            Err(e) => {
                warn!(error = %e, "cannot reach the database to try for the lead; trying again");
                leader_tx.send_replace(None);
            }
        }
        if server.is_none() {
            let router = refusals(leader_rx.clone()).await?;
            server = Some(serve(
                router,
                &listener,
                tls.clone(),
                per_address.clone(),
                &serving,
            )?);
        }
        tokio::select! {
            _ = stop.cancelled() => {
                if let Some(server) = server {
                    server_stopped(server).await?;
                }
                return Ok(None);
            }
            _ = tokio::time::sleep(TRY_EVERY) => {}
        }
    }
}

/// The standby's services: health, and refusals in place of the agents'
/// and the operators' services.
async fn refusals(
    leader: watch::Receiver<Option<String>>,
) -> anyhow::Result<tonic::transport::server::Router> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<proto::operator_service_server::OperatorServiceServer<OperatorService>>()
        .await;
    health
        .set_not_serving::<proto::agent_service_server::AgentServiceServer<AgentService>>()
        .await;
    let operators: Refusing<
        proto::operator_service_server::OperatorServiceServer<OperatorService>,
    > = Refusing::new(leader.clone());
    let agents: Refusing<proto::agent_service_server::AgentServiceServer<AgentService>> =
        Refusing::new(leader);
    Ok(tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(operators)
        .add_service(agents))
}

/// Serves `router` on a copy of `listener` until `stop`.
fn serve(
    router: tonic::transport::server::Router,
    listener: &TcpListener,
    tls: Option<TlsAcceptor>,
    per_address: Arc<trust::conn::PerAddress>,
    stop: &CancellationToken,
) -> anyhow::Result<Supervisor> {
    let listener = crate::copy_listener(listener)?;
    let mut tasks = Supervisor::default();
    let stopped = stop.clone().cancelled_owned();
    match tls {
        Some(acceptor) => {
            let (accepted, incoming) = tokio::sync::mpsc::channel(trust::accept::ACCEPTED_BUFFER);
            tasks.spawn(
                "the standby's TLS accept loop",
                trust::accept::accept_loop(
                    listener,
                    acceptor,
                    None,
                    per_address,
                    accepted,
                    stop.clone(),
                ),
            );
            tasks.spawn("the standby's server", async move {
                Ok(router
                    .serve_with_incoming_shutdown(ReceiverStream::new(incoming), stopped)
                    .await?)
            });
        }
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tasks.spawn("the standby's server", async move {
                Ok(router
                    .serve_with_incoming_shutdown(incoming, stopped)
                    .await?)
            });
        }
    }
    Ok(tasks)
}

/// Waits for the standby's server to close its connections (clients
/// then reconnect, to the leader).
async fn server_stopped(server: Supervisor) -> anyhow::Result<()> {
    server.drain(crate::DRAIN_GRACE).await
}

/// A service that refuses every request, naming the leader: it stands in
/// for `S` (and answers on its path).
struct Refusing<S> {
    leader: watch::Receiver<Option<String>>,
    service: PhantomData<fn() -> S>,
}

impl<S> Refusing<S> {
    fn new(leader: watch::Receiver<Option<String>>) -> Self {
        Self {
            leader,
            service: PhantomData,
        }
    }
}

impl<S> Clone for Refusing<S> {
    fn clone(&self) -> Self {
        Self::new(self.leader.clone())
    }
}

impl<S: NamedService> NamedService for Refusing<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Refusing<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        let leader = self.leader.borrow().clone();
        std::future::ready(Ok(standby_refusal(leader.as_deref()).into_http()))
    }
}
