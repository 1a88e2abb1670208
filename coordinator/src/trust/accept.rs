//! The TLS listener: handshakes run beside the accept loop (a slow client
//! cannot hold the door), each address may hold only so many connections
//! and handshakes (see [`super::conn`]), accept errors (descriptors run
//! out) are waited out instead of spun on (but a listening socket that is
//! gone ends the loop, and the coordinator), and a client that presents a
//! certificate TLS refuses (expired, from another CA, not a client
//! certificate) is audited, since such a refusal never reaches a gRPC
//! handler.
//!
//! Kept rather than tonic's own TLS serving (`Server::tls_config`), which
//! drops a failed handshake with a debug line (no audit), bounds neither
//! the handshakes in progress nor what one address holds, and retries a
//! failing accept at once.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc, task::JoinSet};
use tokio_rustls::TlsAcceptor;
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

/// Connections past their handshake, waiting for the gRPC server to take
/// them: it takes each at once, so a few are plenty.
pub const ACCEPTED_BUFFER: usize = 64;

/// Accepts connections on `listener` until `stop` (or until the server
/// that takes them is gone) and hands each one past its TLS handshake to
/// `server`. `per_address` counts what each address holds; a refused
/// client certificate is audited through `core` (a standby has none and
/// writes nothing). The
/// handshakes in progress are this loop's: they are aborted when it ends.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    core: Option<Arc<Core>>,
    per_address: Arc<PerAddress>,
    server: mpsc::Sender<std::io::Result<Guarded>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut handshakes = JoinSet::new();
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = server.closed() => return Ok(()),
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => {
                failing = false;
                conn
            }
            Err(e) if listener_broken(&e) => {
                let at = listener
                    .local_addr()
                    .map_or("the listener".into(), |a| a.to_string());
                return Err(anyhow::Error::new(e).context(format!(
                    "the listening socket ({at}) no longer accepts connections"
                )));
            }
            Err(e) => {
                // Said once per spell of failures, not per retry.
                if !failing {
                    warn!(error = %e, "cannot accept connections; retrying every {ACCEPT_BACKOFF:?}");
                }
                failing = true;
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
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
        let server = server.clone();
        let core = core.clone();
        let per_address = per_address.clone();
        handshakes.spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(handshaking);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = server
                        .send(Ok(Guarded::new(tls, peer, held, per_address)))
                        .await;
                }
                Ok(Err(e)) => {
                    let refused_cert = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .filter(|err| matches!(err, rustls::Error::InvalidCertificate(_)));
                    match (refused_cert, &core) {
                        (Some(err), Some(core)) if core.auth.failure_worth_auditing(Some(peer)) => {
                            core.audit(AuditEntry::new(
                                "unknown",
                                peer.to_string(),
                                "tls-handshake",
                                "coordinator",
                                false,
                                format!("client certificate refused: {err}"),
                            ))
                            .await
                        }
                        _ => debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    }
                }
                Err(_) => debug!(peer = %peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Whether a failed accept says the listening socket itself is unusable
/// (closed, shut down, not a socket), which no wait mends; every other
/// failure (descriptors or memory run out, a connection reset before it
/// was taken) passes.
fn listener_broken(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT)
    )
}
