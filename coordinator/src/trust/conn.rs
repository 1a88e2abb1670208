//! What one peer address may hold of the listener, and the connection type
//! handed to the gRPC server: a TLS stream that must start speaking HTTP/2
//! within [`PREFACE_TIMEOUT`] and is closed after [`IDLE_TIMEOUT`] without
//! a request in flight.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Time from the end of the TLS handshake to the client's first bytes of
/// HTTP/2 (its preface): clients send it with their last handshake flight,
/// so 5 s is generous, and a connection that says nothing is let go soon.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a connection may stay open with no request in flight: an agent
/// always holds its stream open and a `gantry` command's connection lives
/// as long as the command, so only connections nobody uses are closed
/// (a client reconnects on its next call).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Handshakes one address (an IPv6 /64) may have in progress at once: an
/// office behind one NAT reconnecting together fits, and one host holding
/// thousands of silent connections holds this many handshake slots, not
/// all of them.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;

/// Connections and handshakes held by each peer address, and the
/// requests in flight on each connection.
pub struct PerAddress {
    /// Most connections (in handshake or past it) one address may hold.
    max_connections: usize,
    held: Mutex<HashMap<IpAddr, Held>>,
    /// Each open connection's requests, by its peer's address and port.
    connections: Mutex<HashMap<SocketAddr, Arc<Activity>>>,
}

#[derive(Default)]
struct Held {
    connections: usize,
    handshakes: usize,
}

/// Why a connection was refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address holds as many connections as it may.
    Connections(usize),
    /// The address has as many handshakes in progress as it may.
    Handshakes(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Connections(n) => write!(f, "the address holds {n} connections, the most it may (max_connections_per_address)"),
            Refusal::Handshakes(n) => write!(f, "the address has {n} TLS handshakes in progress, the most it may (MAX_HANDSHAKES_PER_ADDRESS)"),
        }
    }
}

impl PerAddress {
    /// At most `max_connections` connections per address.
    pub fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            max_connections,
            held: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a connection slot and a handshake slot for `ip`, or says
    /// which bound it is at.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Slot, Slot), Refusal> {
        let key = crate::auth::address_key(ip);
        let mut held = self.held.lock().expect("per-address lock");
        let entry = held.entry(key).or_default();
        if entry.connections >= self.max_connections {
            return Err(Refusal::Connections(self.max_connections));
        }
        if entry.handshakes >= MAX_HANDSHAKES_PER_ADDRESS {
            return Err(Refusal::Handshakes(MAX_HANDSHAKES_PER_ADDRESS));
        }
        entry.connections += 1;
        entry.handshakes += 1;
        let slot = |handshake| Slot {
            key,
            handshake,
            table: self.clone(),
        };
        Ok((slot(false), slot(true)))
    }

    /// The request counter of the connection from `peer`, if it is one of
    /// ours.
    pub fn activity(&self, peer: SocketAddr) -> Option<Arc<Activity>> {
        let connections = self.connections.lock().expect("connections lock");
        connections.get(&peer).cloned()
    }

    fn release(&self, key: IpAddr, handshake: bool) {
        let mut held = self.held.lock().expect("per-address lock");
        if let Some(entry) = held.get_mut(&key) {
            match handshake {
                true => entry.handshakes = entry.handshakes.saturating_sub(1),
                false => entry.connections = entry.connections.saturating_sub(1),
            }
            if entry.connections == 0 && entry.handshakes == 0 {
                held.remove(&key);
            }
        }
    }
}

/// A connection's or a handshake's place in its address's count, given
/// back when dropped.
pub struct Slot {
    key: IpAddr,
    handshake: bool,
    table: Arc<PerAddress>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.release(self.key, self.handshake);
    }
}

/// The requests in flight on one connection, and since when it has had
/// none.
pub struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    /// Counts a request until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection becomes idle too long to keep; `None` while a
    /// request is in flight.
    fn idle_deadline(&self) -> Option<Instant> {
        match self.in_flight.load(Ordering::SeqCst) {
            0 => Some(*self.idle_since.lock().expect("activity lock") + IDLE_TIMEOUT),
            _ => None,
        }
    }
}

/// One request in flight: from its call until its response body is gone.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().expect("activity lock");
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
        }
    }
}

/// A connection past its TLS handshake, as the gRPC server reads it. A
/// read fails with `TimedOut` (and the server closes the connection) when
/// no byte came within [`PREFACE_TIMEOUT`] of the handshake, or when no
/// request has been in flight for [`IDLE_TIMEOUT`].
pub struct Guarded {
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    /// Whether the client has sent anything yet.
    spoke: bool,
    opened: Instant,
    activity: Arc<Activity>,
    table: Arc<PerAddress>,
    timer: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl Guarded {
    /// Wraps `tls` from `peer`, holding its address's connection `slot`.
    pub fn new(
        tls: TlsStream<TcpStream>,
        peer: SocketAddr,
        slot: Slot,
        table: Arc<PerAddress>,
    ) -> Self {
        let opened = Instant::now();
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(opened),
        });
        table
            .connections
            .lock()
            .expect("connections lock")
            .insert(peer, activity.clone());
        Self {
            tls,
            peer,
            spoke: false,
            opened,
            activity,
            table,
            timer: Box::pin(tokio::time::sleep_until(opened + PREFACE_TIMEOUT)),
            _slot: slot,
        }
    }

    /// The moment the connection is to be closed, and why.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        match self.spoke {
            false => Some((self.opened + PREFACE_TIMEOUT, "no HTTP/2 preface in time")),
            true => self
                .activity
                .idle_deadline()
                .map(|at| (at, "idle: no request in flight for too long")),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let mut connections = self.table.connections.lock().expect("connections lock");
        if connections
            .get(&self.peer)
            .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
        {
            connections.remove(&self.peer);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Checked first too, so that a peer that never stops sending
        // (pings, window updates) without a request is closed all the same.
        if let Some((_, why)) = this.deadline().filter(|(at, _)| *at <= Instant::now()) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
        }
        let before = buf.filled().len();
        if let Poll::Ready(read) = Pin::new(&mut this.tls).poll_read(cx, buf) {
            this.spoke |= buf.filled().len() > before;
            return Poll::Ready(read);
        }
        let Some((at, why)) = this.deadline() else {
            return Poll::Pending;
        };
        if this.timer.deadline() != at {
            this.timer.as_mut().reset(at);
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

impl Connected for Guarded {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn an_address_past_its_bounds_is_refused_and_its_slots_come_back() {
        let table = PerAddress::new(MAX_HANDSHAKES_PER_ADDRESS + 1);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let handshaking: Vec<_> = (0..MAX_HANDSHAKES_PER_ADDRESS)
            .map(|_| table.admit(ip).unwrap())
            .collect();
        let refused = table.admit(ip).err();
        assert_eq!(
            refused,
            Some(Refusal::Handshakes(MAX_HANDSHAKES_PER_ADDRESS))
        );
        // Another address is not held back by this one.
        let other = table.admit(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(other.is_ok());
        // Past their handshakes, the connections still count.
        let connections: Vec<_> = handshaking.into_iter().map(|(held, _)| held).collect();
        let last = table.admit(ip).unwrap();
        let refused = table.admit(ip).err();
        assert_eq!(
            refused,
            Some(Refusal::Connections(MAX_HANDSHAKES_PER_ADDRESS + 1))
        );
        drop((connections, last, other));
        assert!(table.held.lock().unwrap().is_empty());
    }

    /// A TLS connection over loopback, its server end wrapped as the
    /// listener wraps it; and the client end.
    async fn connection(
        table: &Arc<PerAddress>,
    ) -> (Guarded, tokio_rustls::client::TlsStream<TcpStream>) {
        use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
        gantry_shared::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        crate::trust::ca::init(dir.path(), &[]).unwrap();
        let authority = crate::trust::Authority::load(dir.path()).unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(authority.server_config().unwrap()));
        let ca = std::fs::read(dir.path().join(gantry_shared::tls::files::CA_CERT)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&ca).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (server, client) = tokio::join!(
            async {
                let (tcp, peer) = listener.accept().await.unwrap();
                (acceptor.accept(tcp).await.unwrap(), peer)
            },
            async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                connector.connect(name, tcp).await.unwrap()
            }
        );
        let (tls, peer) = server;
        let (slot, handshake) = table.admit(peer.ip()).unwrap();
        drop(handshake);
        (Guarded::new(tls, peer, slot, table.clone()), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_speaks_is_closed_after_the_preface_timeout() {
        let table = PerAddress::new(4);
        let (mut conn, _client) = connection(&table).await;
        let opened = Instant::now();
        let read = tokio::time::timeout(PREFACE_TIMEOUT * 2, conn.read(&mut [0; 8])).await;
        let err = read.expect("a silent connection is closed").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("no HTTP/2 preface"), "{err}");
        assert!(opened.elapsed() >= PREFACE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_kept_while_a_request_runs_and_closed_when_idle() {
        let table = PerAddress::new(4);
        let (mut conn, mut client) = connection(&table).await;
        client.write_all(b"PRI").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0; 8];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 3);
        let peer = conn.peer;
        let request = table.activity(peer).unwrap().begin();
        // A request in flight (a stream that runs for hours): never idle.
        let waited = tokio::time::timeout(IDLE_TIMEOUT * 3, conn.read(&mut buf)).await;
        assert!(waited.is_err(), "closed while a request ran: {waited:?}");
        drop(request);
        let idle_from = Instant::now();
        let read = tokio::time::timeout(IDLE_TIMEOUT * 2, conn.read(&mut buf)).await;
        let err = read.expect("an idle connection is closed").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("idle"), "{err}");
        assert!(idle_from.elapsed() >= IDLE_TIMEOUT);
        // Closed, it gives its place back.
        drop(conn);
        assert!(table.activity(peer).is_none());
        assert!(table.held.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_keeps_sending_without_a_request_is_closed_when_idle() {
        let table = PerAddress::new(4);
        let (mut conn, mut client) = connection(&table).await;
        let opened = Instant::now();
        let mut buf = [0; 8];
        let err = loop {
            client.write_all(b"x").await.unwrap();
            client.flush().await.unwrap();
            if let Err(e) = conn.read(&mut buf).await {
                break e;
            }
            tokio::time::advance(IDLE_TIMEOUT / 10).await;
            assert!(opened.elapsed() < IDLE_TIMEOUT * 2, "still open");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("idle"), "{err}");
        assert!(opened.elapsed() >= IDLE_TIMEOUT);
    }
}
