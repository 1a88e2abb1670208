//! The TLS listener: handshakes run beside the accept loop (a slow client
//! cannot hold the door), and a client that presents a certificate TLS
//! refuses (expired, from another CA, not a client certificate) is audited,
//! since such a refusal never reaches a gRPC handler.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{audit::AuditEntry, core::Core};

/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once: a thousand agents reconnecting together
/// fit; a flood of half-open connections waits its turn instead of growing
/// tasks without bound.
const MAX_HANDSHAKES: usize = 1024;

/// Connections past the TLS handshake, as a stream for a tonic server.
pub type Connections = ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>>;

/// Connections accepted on `listener` and past the TLS handshake, until
/// `shutdown`: (those that presented a client certificate, i.e. agents;
/// the others, i.e. operators). See [`crate::lanes`].
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    core: Arc<Core>,
    shutdown: CancellationToken,
) -> (Connections, Connections) {
    let (agents, agents_rx) = mpsc::channel(64);
    let (operators, operators_rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = agents.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let (agents, operators) = (agents.clone(), operators.clone());
            let core = core.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(slot);
                match handshake {
                    Ok(Ok(tls)) => {
                        let lane = match tls.get_ref().1.peer_certificates() {
                            Some(_) => agents,
                            None => operators,
                        };
                        let _ = lane.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        let refused_cert = e
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                            .filter(|err| matches!(err, rustls::Error::InvalidCertificate(_)));
                        match refused_cert {
                            Some(err) if core.auth.failure_worth_auditing(Some(peer)) => core
                                .audit(AuditEntry::new(
                                    "unknown",
                                    peer.to_string(),
                                    "tls-handshake",
                                    "coordinator",
                                    false,
                                    format!("client certificate refused: {err}"),
                                )),
                            _ => debug!(peer = %peer, error = %e, "TLS handshake failed"),
                        }
                    }
                    Err(_) => debug!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (
        ReceiverStream::new(agents_rx),
        ReceiverStream::new(operators_rx),
    )
}
