//! The proxy's control socket: one command per line, one answer per line.
//!
//! | command | answer |
//! |---|---|
//! | `status` | `route ADDR IN_FLIGHT` or `route none` |
//! | `route ADDR` | `ok` (new requests go to ADDR; the route is saved) |
//! | `drain ADDR MILLIS` | `drained` or `timeout N` (N requests still in flight) |
//! | `stop` | `ok`, then the proxy exits |
//!
//! Anything else is answered `error ...`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Router;

/// Longest command line accepted; commands are a word and an address.
const MAX_COMMAND: usize = 256;

/// Serves one control connection.
pub(crate) async fn session(
    stream: UnixStream,
    router: Arc<Router>,
    state: PathBuf,
    stop: CancellationToken,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = if line.len() > MAX_COMMAND {
            "error command too long".to_owned()
        } else {
            handle(&line, &router, &state, &stop).await
        };
        if write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn handle(line: &str, router: &Router, state: &PathBuf, stop: &CancellationToken) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => match router.status() {
            Some((addr, in_flight)) => format!("route {addr} {in_flight}"),
            None => "route none".into(),
        },
        ["route", addr] if is_upstream(addr) => {
            // Saved first: a proxy restarted after this answer serves the
            // same release.
            let temp = state.with_extension("tmp");
            if let Err(e) = std::fs::write(&temp, addr).and_then(|_| std::fs::rename(&temp, state))
            {
                return format!("error cannot save the route: {e}");
            }
            let previous = router.route(addr);
            info!(
                upstream = addr,
                previous = previous.as_deref().unwrap_or("none"),
                "route switched"
            );
            "ok".into()
        }
        ["drain", addr, millis] => match millis.parse::<u64>() {
            Ok(ms) => match router.drain(addr, Duration::from_millis(ms)).await {
                Ok(0) => "drained".into(),
                Ok(left) => {
                    warn!(upstream = addr, left, "drain timed out");
                    format!("timeout {left}")
                }
                Err(e) => format!("error {e}"),
            },
            Err(_) => "error drain takes an address and milliseconds".into(),
        },
        ["stop"] => {
            stop.cancel();
            "ok".into()
        }
        _ => format!("error unknown command {line:?}"),
    }
}

/// `host:port` with a numeric port.
fn is_upstream(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}
