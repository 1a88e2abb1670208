//! The TLS listener: handshakes run beside the accept loop (a slow client
//! cannot hold the door), each address may hold only so many connections
//! and handshakes (see [`super::conn`]), accept errors (descriptors run
//! out) are waited out instead of spun on, and a client that presents a
//! certificate TLS refuses (expired, from another CA, not a client
//! certificate) is audited, since such a refusal never reaches a gRPC
//! handler.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::conn::{Guarded, PerAddress};
use crate::{audit::AuditEntry, core::Core};

/// Time a client gets to finish the TLS handshake: a real one takes a
/// round trip or two, so 5 s leaves room for a slow link while a silent
/// connection gives its slot back soon.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed accept. The usual cause is running out of file
/// descriptors (EMFILE), which fails again at once until a connection
/// closes: retrying at once spins a core; 100 ms costs a waiting client
/// little.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Handshakes in progress at once: a thousand agents reconnecting together
/// fit; a flood of half-open connections waits its turn instead of growing
/// tasks without bound.
const MAX_HANDSHAKES: usize = 1024;

/// Connections past the TLS handshake, as a stream for a tonic server.
pub type Connections = ReceiverStream<std::io::Result<Guarded>>;

/// Connections accepted on `listener` and past the TLS handshake, until
/// `shutdown`: (those that presented a client certificate, i.e. agents;
/// the others, i.e. operators). See [`crate::lanes`]. `per_address` counts
/// what each address holds.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    core: Arc<Core>,
    per_address: Arc<PerAddress>,
    shutdown: CancellationToken,
) -> (Connections, Connections) {
    let (agents, agents_rx) = mpsc::channel(64);
    let (operators, operators_rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut failing = false;
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
                Ok(conn) => {
                    failing = false;
                    conn
                }
                Err(e) => {
                    // Said once per spell of failures, not per retry.
                    if !failing {
                        warn!(error = %e, "cannot accept connections; retrying every {ACCEPT_BACKOFF:?}");
                    }
                    failing = true;
                    drop(slot);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            };
            let (held, handshaking) = match per_address.admit(peer.ip()) {
                Ok(slots) => slots,
                Err(refusal) => {
                    debug!(peer = %peer, "connection refused: {refusal}");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let (agents, operators) = (agents.clone(), operators.clone());
            let core = core.clone();
            let per_address = per_address.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop((slot, handshaking));
                match handshake {
                    Ok(Ok(tls)) => {
                        let conn = Guarded::new(tls, peer, held, per_address);
                        let lane = match conn.has_client_certificate() {
                            true => agents,
                            false => operators,
                        };
                        let _ = lane.send(Ok(conn)).await;
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
