//! One address holding 2,000 silent TCP connections, and 5,000 TLS
//! connections that finish their handshake and then say nothing: a
//! legitimate operator and an agent reconnecting still get through within
//! two seconds, the silent connections beyond the address's handshake
//! bound are closed at once and the rest within the handshake timeout, and
//! every idle TLS connection is closed within the preface timeout.

mod running;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use futures::StreamExt;
use gantry_coordinator::trust::{
    accept::HANDSHAKE_TIMEOUT,
    conn::{MAX_HANDSHAKES_PER_ADDRESS, PREFACE_TIMEOUT},
};
use tokio::io::AsyncReadExt;

/// Silent TCP connections, all from [`SILENT_FROM`].
const SILENT: usize = 2_000;
const SILENT_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Idle TLS connections, spread over [`IDLE_ADDRESSES`] addresses from
/// 127.0.0.3 (each under the per-address connection bound, so each is
/// admitted and must be closed by the timeout).
const IDLE: usize = 5_000;
const IDLE_ADDRESSES: usize = 20;

/// TLS handshakes the flood runs at once.
const IDLE_PARALLEL: usize = 200;

/// What a legitimate call may take under the flood.
const LEGITIMATE: Duration = Duration::from_secs(2);

/// Slack on top of a timeout for the close to reach the client. On this
/// 2-core machine, with the flood's own 7,000 connections and the
/// coordinator sharing the cores, 3 s was seen to leave 120 of 2,000
/// silent connections unclosed at the deadline (once in about five runs);
/// a connection closed in time ends its wait at once, so the slack costs
/// only a failing run.
const SLACK: Duration = Duration::from_secs(10);

/// Silent connections made before the legitimate calls go: more than the
/// coordinator's 1,024 handshake slots in all.
const SILENT_HELD: usize = 1_200;

/// Waits until `count` reaches `at_least` (two minutes at most).
async fn wait_for(count: &std::sync::atomic::AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(std::sync::atomic::Ordering::SeqCst) < at_least {
        assert!(Instant::now() < deadline, "the flood did not get in");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `conn` is closed by the peer before `by` (a read ends or fails).
async fn closed_by<S: tokio::io::AsyncRead + Unpin>(mut conn: S, by: Instant) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::from_std(by);
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Legitimate calls under the flood: an operator's `whoami` and an agent's
/// reconnect, each within [`LEGITIMATE`].
async fn legitimate(secure: &running::Secure, when: &str) {
    let whoami = secure.whoami().await;
    let (reconnect, agent) = secure.agent_attach().await;
    drop(agent);
    eprintln!("{when}: whoami {whoami:?}, the agent's reconnect {reconnect:?}");
    assert!(whoami < LEGITIMATE, "{when}: whoami took {whoami:?}");
    assert!(
        reconnect < LEGITIMATE,
        "{when}: the agent's reconnect took {reconnect:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_floods_keep_out_neither_an_operator_nor_an_agent() {
    let limit = running::raise_fd_limit();
    assert!(
        limit > (SILENT + IDLE + 512) as u64,
        "open-file limit {limit} too low"
    );
    let secure = running::secure().await;
    let addr = secure.running.addr;
    // The agent is connected before the flood, and reconnects under it.
    let (_, agent) = secure.agent_attach().await;

    let silent_started = Instant::now();
    let silent_made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let silent = tokio::spawn({
        let made = silent_made.clone();
        futures::stream::iter(0..SILENT)
            .map(move |_| {
                let made = made.clone();
                async move {
                    let conn = running::tcp_from(SILENT_FROM, addr).await.ok()?;
                    made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Some(conn)
                }
            })
            .buffer_unordered(256)
            .filter_map(|c| async move { c })
            .collect::<Vec<_>>()
    });
    // The legitimate calls go while the flood holds more connections than
    // there are handshake slots in all.
    wait_for(&silent_made, SILENT_HELD).await;
    legitimate(&secure, "under the silent flood").await;
    let silent = silent.await.unwrap();
    eprintln!(
        "{} of {SILENT} silent connections made in {:?}",
        silent.len(),
        silent_started.elapsed()
    );
    // Each is watched from now on: when does the coordinator close it?
    let silent = tokio::spawn(futures::future::join_all(silent.into_iter().map(
        |c| async move {
            let closed = closed_by(c, silent_started + HANDSHAKE_TIMEOUT + SLACK).await;
            (closed, Instant::now())
        },
    )));
    drop(agent);

    // The idle flood: each connection, once past its handshake, is held
    // until the coordinator closes it (or the preface timeout and slack
    // pass).
    // Attempts count whether or not the handshake got through: on a loaded
    // machine some of the flood's own handshakes run past the coordinator's
    // handshake timeout, which is the coordinator defending itself.
    let tried = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let config = secure.tls_client();
    let tried_by_flood = tried.clone();
    let idle = futures::stream::iter(0..IDLE)
        .map(move |n| {
            let from = Ipv4Addr::new(127, 0, 0, 3 + (n % IDLE_ADDRESSES) as u8);
            let (config, tried) = (config.clone(), tried_by_flood.clone());
            async move {
                let conn = running::tls_from(from, addr, config).await;
                tried.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(closed_by(conn.ok()?, Instant::now() + PREFACE_TIMEOUT + SLACK).await)
            }
        })
        .buffer_unordered(IDLE_PARALLEL)
        .collect::<Vec<_>>();
    let idle = tokio::spawn(idle);
    legitimate(&secure, "during the TLS handshake flood").await;
    wait_for(&tried, IDLE * 9 / 10).await;
    legitimate(&secure, "with the idle TLS connections held").await;

    // Every silent connection is closed: those past the address's bound at
    // once, the rest when their handshake times out.
    let early = silent_started + HANDSHAKE_TIMEOUT / 2;
    let closed = silent.await.unwrap();
    let open = closed.iter().filter(|(c, _)| !c).count();
    let at_once = closed.iter().filter(|(c, at)| *c && *at < early).count();
    eprintln!("silent: {open} still open after the timeout, {at_once} closed at once");
    assert_eq!(
        open, 0,
        "silent connections still open after the handshake timeout"
    );
    assert!(
        at_once >= SILENT - MAX_HANDSHAKES_PER_ADDRESS,
        "only {at_once} silent connections were refused at once"
    );

    // Every idle TLS connection is closed within the preface timeout.
    let idle = idle.await.unwrap();
    let made = idle.iter().flatten().count();
    let open = idle.iter().flatten().filter(|closed| !**closed).count();
    eprintln!("idle: {made} of {IDLE} made, {open} still open after the preface timeout");
    assert!(made > IDLE / 2, "the idle flood did not get in");
    assert_eq!(
        open, 0,
        "idle TLS connections still open after the preface timeout"
    );
    legitimate(&secure, "after the flood").await;
}
