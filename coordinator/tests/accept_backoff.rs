//! With its file descriptors used up, the coordinator waits between failed
//! accepts instead of spinning on them, and serves again once connections
//! close.

mod running;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use gantry_coordinator::trust::accept::HANDSHAKE_TIMEOUT;

/// The coordinator's descriptor limit in this test: what it needs to
/// start and serve, and not much more.
const OPEN_FILES: u64 = 64;

/// Silent connections, more than the limit leaves room for, spread over
/// a few addresses (each far under the per-address bounds).
const SILENT: usize = 100;

/// How long the coordinator's CPU use is watched while accepts fail.
const WATCH: Duration = Duration::from_secs(2);

/// CPU the coordinator may use in [`WATCH`] while its descriptors are
/// exhausted: a spinning accept loop takes a whole core.
const CPU_BUDGET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_descriptors_are_waited_out_not_spun_on() {
    running::raise_fd_limit();
    let secure = running::secure_with(Some(OPEN_FILES)).await;
    let addr = secure.running.addr;
    let mut silent = Vec::new();
    for n in 0..SILENT {
        let from = Ipv4Addr::new(127, 0, 0, 2 + (n % 4) as u8);
        silent.push(running::tcp_from(from, addr).await.unwrap());
    }
    let flooded = Instant::now();
    let pid = secure.running.pid();
    let before = running::cpu_time(pid);
    tokio::time::sleep(WATCH).await;
    let used = running::cpu_time(pid) - before;
    eprintln!("CPU used in {WATCH:?} with descriptors exhausted: {used:?}");
    assert!(
        used < CPU_BUDGET,
        "the coordinator used {used:?} of CPU in {WATCH:?} while accepts failed"
    );
    // The silent connections it took time out; then it serves again.
    let deadline = flooded + HANDSHAKE_TIMEOUT + Duration::from_secs(10);
    drop(silent);
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(secure.url.clone())
            .unwrap()
            .connect_timeout(Duration::from_secs(2));
        let channel = gantry_shared::tls::with_tls(endpoint, &secure.ca_pem, None).unwrap();
        if channel.connect().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator did not serve again"
        );
    }
    let took = secure.whoami().await;
    assert!(took < Duration::from_secs(2), "whoami took {took:?}");
}
