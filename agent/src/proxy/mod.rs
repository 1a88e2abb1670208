//! Gantry's reverse proxy: one small process per (environment, app) on each
//! server, owning the app's stable port. It forwards every HTTP request to
//! the container of the release serving now, so a deploy switches traffic
//! only once the new container is healthy, and the old one is stopped only
//! after its in-flight requests are done. It runs apart from the agent
//! (`gantry-agent proxy`, started detached by the agent), so it keeps
//! serving while the agent restarts or is upgraded.
//!
//! The agent drives it over a Unix socket with one-line commands (see
//! [`control`]); the current route is also written to a state file, so a
//! restarted proxy comes back serving the same release.
//!
//! It faces whoever reaches the stable port, so what one client may hold is
//! bounded ([`limits`]), and what it forwards is cleaned ([`headers`]).

pub mod client;
mod control;
mod forward;
pub mod headers;
pub mod limits;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

/// How often a proxy at its connection cap says so in its log, so a flood
/// shows without writing a line per refused connection.
const FULL_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a proxy listens and is controlled.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The app's stable address, e.g. `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// The control socket.
    pub control: PathBuf,
    /// The file holding the current route across restarts.
    pub state: PathBuf,
    /// Client connections served at once ([`limits::MAX_CONNECTIONS`];
    /// lowered to what the open-files limit allows).
    pub max_connections: usize,
}

/// One container the proxy forwards to, with its requests in flight.
pub(crate) struct Upstream {
    /// `host:port` of the container's published port.
    pub addr: String,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Upstream {
    fn new(addr: String) -> Arc<Self> {
        Arc::new(Self {
            addr,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Requests forwarded to it whose responses have not been fully sent.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Counts one request in flight until it is dropped (when the response
/// body has been sent, or the request failed).
pub(crate) struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The current route, and every upstream that may still have requests.
#[derive(Default)]
pub(crate) struct Router {
    current: RwLock<Option<Arc<Upstream>>>,
    known: Mutex<HashMap<String, Arc<Upstream>>>,
}

impl Router {
    /// Picks the current upstream for one request and counts it in flight.
    /// Counting happens under the route's read lock, so once [`Router::route`]
    /// has switched, no new request can reach the old upstream: a drain that
    /// then sees zero in flight is final.
    pub fn pick(&self) -> Option<InFlight> {
        let current = self.current.read().expect("route lock");
        let upstream = current.as_ref()?;
        upstream.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(upstream.clone()))
    }

    /// Sends every new request to `addr`; returns the previous route.
    pub fn route(&self, addr: &str) -> Option<String> {
        let upstream = self
            .known
            .lock()
            .expect("upstreams lock")
            .entry(addr.to_owned())
            .or_insert_with(|| Upstream::new(addr.to_owned()))
            .clone();
        let previous = self.current.write().expect("route lock").replace(upstream);
        previous.map(|p| p.addr.clone()).filter(|p| p != addr)
    }

    /// The current route and its requests in flight.
    pub fn status(&self) -> Option<(String, usize)> {
        let current = self.current.read().expect("route lock");
        current.as_ref().map(|u| (u.addr.clone(), u.in_flight()))
    }

    /// Waits until `addr` has no request in flight, or `timeout` passes;
    /// returns how many were left. Refused for the current route.
    pub async fn drain(&self, addr: &str, timeout: std::time::Duration) -> Result<usize, String> {
        if self.status().is_some_and(|(current, _)| current == addr) {
            return Err(format!(
                "{addr} is the current route; route elsewhere first"
            ));
        }
        let Some(upstream) = self
            .known
            .lock()
            .expect("upstreams lock")
            .get(addr)
            .cloned()
        else {
            return Ok(0);
        };
        let idle = async {
            loop {
                let notified = upstream.idle.notified();
                if upstream.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let left = match tokio::time::timeout(timeout, idle).await {
            Ok(()) => 0,
            Err(_) => upstream.in_flight(),
        };
        self.known.lock().expect("upstreams lock").remove(addr);
        Ok(left)
    }
}

/// Runs a proxy until `shutdown` fires or a `stop` command arrives.
pub async fn serve(options: ProxyOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let router = Arc::new(Router::default());
    if let Ok(addr) = std::fs::read_to_string(&options.state) {
        let addr = addr.trim();
        if !addr.is_empty() {
            router.route(addr);
            info!(upstream = addr, "route read back");
        }
    }
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let _ = std::fs::remove_file(&options.control);
    let control = tokio::net::UnixListener::bind(&options.control)
        .with_context(|| format!("cannot bind control socket {}", options.control.display()))?;
    let open_files = limits::raise_open_files();
    let cap = limits::connection_cap(options.max_connections, open_files);
    if cap < options.max_connections {
        warn!(
            cap,
            open_files, "the open-files limit allows fewer connections than wanted"
        );
    }
    info!(listen = %options.listen, control = %options.control.display(), cap, "proxy serving");
    let permits = Arc::new(Semaphore::new(cap));
    let mut warned_full: Option<tokio::time::Instant> = None;
    let tasks = TaskTracker::new();
    let client = forward::client();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        tasks.spawn(forward::connection(stream, peer, router.clone(), client.clone(), permit));
                    }
                    Err(_) => {
                        forward::refuse_busy(stream);
                        if warned_full.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY) {
                            warn!(cap, "connection cap reached; new connections are answered 503");
                            warned_full = Some(tokio::time::Instant::now());
                        }
                    }
                },
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(limits::ACCEPT_BACKOFF).await;
                }
            },
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    let (router, state, stop) = (router.clone(), options.state.clone(), shutdown.clone());
                    tasks.spawn(control::session(stream, router, state, stop));
                }
                Err(e) => warn!(error = %e, "control accept failed"),
            },
        }
    }
    let _ = std::fs::remove_file(&options.control);
    info!("proxy stopped");
    Ok(())
}
