//! The app proxy against hostile and careless clients, on loopback: the
//! real `gantry-agent proxy` process (started as the agent starts it) in
//! front of a tiny upstream that answers every request with the head it
//! received. Slowloris and silent connections are closed by the proxy's
//! timeouts without keeping a normal request waiting; hop-by-hop headers
//! never cross it; the upstream learns who the client was; a dead release's
//! address is never shown; past its cap the proxy answers 503 at once.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use gantry_agent::proxy::{
    self,
    client::Proxy,
    limits::{HEADER_READ_TIMEOUT, KEEP_ALIVE_TIMEOUT},
    ProxyOptions,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

mod raw_http;
use raw_http::{exchange, free_port, get, EchoUpstream};

/// The binary under test.
const AGENT: &str = env!("CARGO_BIN_EXE_gantry-agent");

/// Slowloris connections that send part of a head, a byte a second.
const SLOW: usize = 1_000;

/// Connections that send nothing at all.
const SILENT: usize = 1_000;

/// How long a normal request may take while the flood holds its connections.
const NORMAL_GET: Duration = Duration::from_secs(2);

/// Slack on every timeout the proxy enforces: its timers, the kernel
/// delivering the close and this loaded 2-core machine noticing it.
const SLACK: Duration = Duration::from_secs(3);

/// Connections the flood opens at once: more would overflow the proxy's
/// listen backlog (1,024), and the kernel would then hand it some of them
/// seconds later, so their timeouts would start late.
const CONNECTING_AT_ONCE: usize = 128;

/// The connection cap of the proxy the cap test runs.
const SMALL_CAP: usize = 16;

/// A proxy process started as the agent starts one, stopped when dropped.
struct RunningProxy {
    proxy: Proxy,
    socket: PathBuf,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RunningProxy {
    async fn start(app: &str) -> Self {
        // Each client here and each connection the proxy holds is a file.
        proxy::limits::raise_open_files();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let proxy = Proxy::ensure(Path::new(AGENT), dir.path(), "dev", app, "127.0.0.1", port)
            .await
            .expect("the proxy starts");
        let (socket, _, _) = proxy::client::paths(dir.path(), "dev", app);
        Self {
            proxy,
            socket,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }
}

impl RunningProxy {
    /// A proxy routed to `upstream`.
    async fn routed(app: &str, upstream: &EchoUpstream) -> Self {
        let running = Self::start(app).await;
        let addr = upstream.addr.to_string();
        running
            .proxy
            .route(&addr)
            .await
            .expect("the route is taken");
        running
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        use std::io::Write;
        if let Ok(mut socket) = std::os::unix::net::UnixStream::connect(&self.socket) {
            let _ = socket.write_all(b"stop\n");
        }
    }
}

/// A slowloris client: connects, sends part of a head a byte a second (or,
/// `silent`, nothing), and counts itself in `closed` once the proxy has
/// closed the connection. It gives up by itself at `give_up`.
async fn slow_client(
    addr: SocketAddr,
    silent: bool,
    connecting: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    give_up: Instant,
) {
    let turn = connecting.acquire_owned().await.expect("never closed");
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    drop(turn);
    connected.fetch_add(1, Ordering::SeqCst);
    if !silent
        && stream
            .write_all(b"GET / HTTP/1.1\r\nhost: shop.example\r\nx-slow: ")
            .await
            .is_err()
    {
        closed.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = tick.tick(), if !silent => if stream.write_all(b"a").await.is_err() {
                break;
            },
            () = tokio::time::sleep_until(give_up) => return,
        }
    }
    closed.fetch_add(1, Ordering::SeqCst);
}

/// Waits until `done` holds or `deadline` passes; returns whether it held.
async fn wait_until(deadline: Instant, done: impl Fn() -> bool) -> bool {
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_in_time_and_a_normal_get_is_served_meanwhile() {
    let upstream = EchoUpstream::start().await;
    let running = RunningProxy::routed("ae-slowloris", &upstream).await;

    let started = Instant::now();
    let give_up = started + HEADER_READ_TIMEOUT + SLACK * 4;
    let connected = Arc::new(AtomicUsize::new(0));
    let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let (slow_closed, silent_closed) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = JoinSet::new();
    for n in 0..SLOW + SILENT {
        let silent = n % 2 == 1;
        let closed = if silent { &silent_closed } else { &slow_closed };
        clients.spawn(slow_client(
            running.addr,
            silent,
            connecting.clone(),
            connected.clone(),
            closed.clone(),
            give_up,
        ));
    }
    let all = SLOW + SILENT;
    assert!(
        wait_until(started + SLACK * 2, || connected.load(Ordering::SeqCst)
            == all)
        .await,
        "only {} of {all} slow clients connected",
        connected.load(Ordering::SeqCst)
    );
    let flooded = Instant::now();

    let asked = Instant::now();
    let answer = tokio::time::timeout(NORMAL_GET, get(running.addr))
        .await
        .expect("a normal GET is answered within 2 s during the flood");
    eprintln!(
        "normal GET answered {} in {:?} with {all} slow connections held",
        answer.status,
        asked.elapsed()
    );
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with("GET / HTTP/1.1"), "{}", answer.body);

    let silent_deadline = flooded + KEEP_ALIVE_TIMEOUT + SLACK;
    let silent_gone = wait_until(silent_deadline, || {
        silent_closed.load(Ordering::SeqCst) == SILENT
    })
    .await;
    let (silent_open, silent_at) = (
        SILENT - silent_closed.load(Ordering::SeqCst),
        flooded.elapsed(),
    );
    let slow_deadline = flooded + HEADER_READ_TIMEOUT + SLACK;
    let slow_gone = wait_until(slow_deadline, || slow_closed.load(Ordering::SeqCst) == SLOW).await;
    let (slow_open, slow_at) = (SLOW - slow_closed.load(Ordering::SeqCst), flooded.elapsed());
    eprintln!(
        "{silent_open} of {SILENT} silent connections open {silent_at:.1?} after the flood \
         (idle timeout {KEEP_ALIVE_TIMEOUT:?}); {slow_open} of {SLOW} slowloris connections \
         open {slow_at:.1?} after it (header timeout {HEADER_READ_TIMEOUT:?})"
    );
    assert!(
        silent_gone,
        "{silent_open} silent connections outlived the idle timeout"
    );
    assert!(
        slow_gone,
        "{slow_open} slowloris connections outlived the header timeout"
    );
    // With the flood gone, the proxy serves as before.
    assert_eq!(get(running.addr).await.status, 200);
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_once_idle() {
    let upstream = EchoUpstream::start().await;
    let running = RunningProxy::routed("ae-idle", &upstream).await;
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    let answer = exchange(&mut stream, "GET / HTTP/1.1\r\nhost: shop.example\r\n\r\n").await;
    assert_eq!(answer.status, 200);
    let promised = format!("timeout={}", KEEP_ALIVE_TIMEOUT.as_secs());
    assert_eq!(answer.header("keep-alive"), Some(promised.as_str()));
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(KEEP_ALIVE_TIMEOUT + SLACK, stream.read_to_end(&mut rest)).await;
    let idle = idle_from.elapsed();
    assert!(closed.is_ok(), "still open after {idle:?}");
    assert!(
        idle + Duration::from_millis(500) >= KEEP_ALIVE_TIMEOUT && idle < HEADER_READ_TIMEOUT,
        "closed after {idle:?}"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop_and_the_upstream_learns_the_client() {
    let upstream = EchoUpstream::start().await;
    let running = RunningProxy::routed("ae-headers", &upstream).await;
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    let answer = exchange(
        &mut stream,
        "GET /orders?id=7 HTTP/1.1\r\nhost: shop.example\r\n\
         connection: keep-alive, X-Session-Hop\r\nconnection: Upgrade, HTTP2-Settings\r\n\
         x-session-hop: secret\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\
         keep-alive: timeout=30\r\nproxy-authorization: Basic c2VjcmV0\r\n\
         proxy-connection: keep-alive\r\nte: trailers\r\n\
         x-forwarded-for: 203.0.113.7\r\nx-forwarded-proto: https\r\n\
         accept: text/plain\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    let received: Vec<(String, String)> = answer
        .body
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let names: Vec<&str> = received.iter().map(|(n, _)| n.as_str()).collect();
    for hop in [
        "connection",
        "x-session-hop",
        "upgrade",
        "http2-settings",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
    ] {
        assert!(
            !names.contains(&hop),
            "{hop} reached the upstream: {}",
            answer.body
        );
    }
    let value = |name: &str| {
        received
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert!(answer.body.starts_with("GET /orders?id=7 HTTP/1.1"));
    assert_eq!(value("host"), Some("shop.example"));
    assert_eq!(value("accept"), Some("text/plain"));
    assert_eq!(value("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(value("x-forwarded-proto"), Some("http"));

    for hop in ["x-upstream-hop", "upgrade", "proxy-authenticate"] {
        assert!(
            answer.header(hop).is_none(),
            "the upstream's {hop} reached the client"
        );
    }
    assert_ne!(answer.header("keep-alive"), Some("timeout=99"));
}

#[tokio::test]
async fn a_release_that_does_not_answer_gets_a_502_that_hides_its_address() {
    let running = RunningProxy::start("ae-badgateway").await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    running.proxy.route(&dead.to_string()).await.unwrap();
    let answer = get(running.addr).await;
    assert_eq!(answer.status, 502);
    assert!(
        !answer.body.contains("127.0.0.1") && !answer.body.contains(&dead.port().to_string()),
        "the 502 shows the upstream: {}",
        answer.body
    );
    assert!(answer.body.contains("did not answer"), "{}", answer.body);
}

#[tokio::test]
async fn past_its_cap_the_proxy_answers_503_at_once_and_serves_again_below_it() {
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (control, state) = (dir.path().join("p.sock"), dir.path().join("p.route"));
    std::fs::write(&state, upstream.addr.to_string()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(proxy::serve(
        ProxyOptions {
            listen: addr,
            control: control.clone(),
            state,
            max_connections: SMALL_CAP,
        },
        shutdown.clone(),
    ));
    let until = Instant::now() + SLACK;
    let mut held = Vec::new();
    while held.len() < SMALL_CAP {
        match TcpStream::connect(addr).await {
            Ok(stream) => held.push(stream),
            Err(_) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("the proxy does not listen: {e}"),
        }
    }
    // The cap's worth answers normally; the next is refused at once.
    let first = exchange(&mut held[0], "GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(first.status, 200);
    let asked = Instant::now();
    let mut over = TcpStream::connect(addr).await.unwrap();
    let mut refusal = String::new();
    tokio::time::timeout(Duration::from_secs(1), over.read_to_string(&mut refusal))
        .await
        .expect("the refusal comes at once")
        .unwrap();
    assert!(
        refusal.starts_with("HTTP/1.1 503") && refusal.contains("too many clients"),
        "{refusal:?} after {:?}",
        asked.elapsed()
    );
    drop(held);
    let mut again = None;
    let until = Instant::now() + SLACK;
    while again.is_none() && Instant::now() < until {
        // A connection the proxy still refuses may be reset mid-exchange.
        let attempt = tokio::spawn(get(addr)).await;
        match attempt {
            Ok(answer) if answer.status == 200 => again = Some(answer),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(again.is_some(), "below the cap again, the proxy serves");
    shutdown.cancel();
    serving.await.unwrap().unwrap();
}
