//! Two lanes for connections, so that reading never slows the agents down.
//!
//! Agents' connections (log ingestion, dispatch, heartbeats) run on the
//! runtime `serve` was called on. Operators' connections (reads, log
//! followers, `gantry logs`) run on a runtime of their own whose threads
//! run under Linux's `SCHED_IDLE` policy: they get a core only when nothing
//! else wants it, and a waking agent thread takes it from them at once.
//! When the machine is busy the agents' work goes first and followers take
//! what is left, catching up from the store; when it is not, followers get
//! all they can use.
//!
//! Tokio shares a runtime's turns equally among its tasks, so on one
//! runtime a hundred followers' connections would get a hundred turns for
//! each one of the agent's; this is what the separate runtime fixes, and the
//! policy keeps the two runtimes' threads from sharing the cores equally.
//! A lock held by a lane thread cannot starve an agent thread for long: the
//! agent thread waiting on it leaves its core idle, which is the lane's cue.
//!
//! A connection's lane is known after the TLS handshake: agents present a
//! client certificate and operators do not. Without TLS (`plaintext`, only
//! ever on loopback) every connection takes the agents' lane.
//!
//! Only the streams that follow logs do their work on the lane. Every other
//! request of an operator's connection (deploys, cancels, approvals, joins)
//! is run on the agents' runtime by [`OnMain`]: those take the locks and
//! the store that ingestion needs, and fetch from git under a timeout, so
//! they must not wait for an idle core.

use std::{
    convert::Infallible,
    future::Future,
    task::{Context, Poll},
};

use tonic::{
    codegen::{http, BoxFuture, Service},
    server::NamedService,
};
use tracing::debug;

/// The niceness of the operators' lane threads where `SCHED_IDLE` is
/// refused: the lowest, weight 15 against 1,024 for the agents' threads.
const OPERATOR_NICENESS: libc::c_int = 19;

/// The operators' lane: a multi-threaded runtime of idle-priority threads.
pub struct OperatorLane {
    runtime: Option<tokio::runtime::Runtime>,
}

impl OperatorLane {
    /// Starts the lane's threads, as many as there are cores.
    pub fn start() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("gantry-operators")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` (and every task it spawns) on the lane.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .as_ref()
            .expect("the lane runs until dropped")
            .spawn(future)
    }
}

impl Drop for OperatorLane {
    fn drop(&mut self) {
        // Dropped from async code when the coordinator stops: do not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The methods whose work stays on the operators' lane: they stream logs
/// to readers, which is all the lane is for.
const LANE_METHODS: [&str; 3] = ["FollowJobLogs", "StreamJobLogs", "StreamAppLogs"];

/// A gRPC service on the operators' lane whose requests, but for
/// [`LANE_METHODS`], run on the agents' runtime.
#[derive(Clone)]
pub struct OnMain<S> {
    inner: S,
    main: tokio::runtime::Handle,
}

impl<S> OnMain<S> {
    /// Wraps `inner`; `main` is the agents' runtime.
    pub fn new(inner: S, main: tokio::runtime::Handle) -> Self {
        Self { inner, main }
    }
}

impl<S: NamedService> NamedService for OnMain<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for OnMain<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or("");
        let on_lane = LANE_METHODS.contains(&method);
        let call = self.inner.call(request);
        if on_lane {
            return Box::pin(call);
        }
        let task = self.main.spawn(call);
        Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                Ok(tonic::Status::internal(format!("the request's task failed: {e}")).into_http())
            })
        })
    }
}

/// Puts the calling thread under `SCHED_IDLE` (on Linux, the policy and
/// the niceness are per thread), or at the lowest niceness if that is
/// refused. Failing both is harmless: the lane still has its own turns.
pub fn lower_priority() {
    if let Err(e) = idle_policy() {
        debug!(error = %e, "SCHED_IDLE refused; using niceness instead");
        // SAFETY: setpriority only reads its integer arguments; `who` 0 is
        // the calling thread.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, OPERATOR_NICENESS) } != 0 {
            debug!(error = %std::io::Error::last_os_error(), "cannot lower the operators' lane priority");
        }
    }
}

/// Puts the calling thread (or, before exec, process) under `SCHED_IDLE`.
pub fn idle_policy() -> std::io::Result<()> {
    // SAFETY: an all-zero sched_param is valid (priority 0, which
    // SCHED_IDLE requires).
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // Threads and processes this one starts inherit the policy
    // (`SCHED_RESET_ON_FORK` would not change that: it resets only real-time
    // policies and negative niceness), so only the lane's own threads and
    // the bench's followers process call this.
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0
    // is the calling thread.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that answers with the name of the thread that ran it.
    #[derive(Clone)]
    struct ThreadName;

    impl Service<http::Request<()>> for ThreadName {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                Ok(http::Response::builder()
                    .header("thread", name)
                    .body(tonic::body::Body::empty())
                    .expect("a valid response"))
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_the_lane_only_log_streams_run_there() {
        let lane = OperatorLane::start().unwrap();
        let main = tokio::runtime::Handle::current();
        let ran_on = |path: &'static str| {
            let mut service = OnMain::new(ThreadName, main.clone());
            lane.spawn(async move {
                let request = http::Request::builder().uri(path).body(()).unwrap();
                let response = service.call(request).await.unwrap();
                response.headers()["thread"].to_str().unwrap().to_owned()
            })
        };
        let follow = ran_on("/gantry.v1.OperatorService/FollowJobLogs")
            .await
            .unwrap();
        assert_eq!(follow, "gantry-operators");
        let deploy = ran_on("/gantry.v1.OperatorService/Deploy").await.unwrap();
        assert_ne!(deploy, "gantry-operators");
        let join = ran_on("/gantry.v1.AgentService/Join").await.unwrap();
        assert_ne!(join, "gantry-operators");
    }

    #[tokio::test]
    async fn lane_threads_run_at_idle_priority() {
        let lane = OperatorLane::start().unwrap();
        let (policy, niceness) = lane
            .spawn(async {
                // SAFETY: both only read their integer arguments.
                unsafe {
                    (
                        libc::sched_getscheduler(0),
                        libc::getpriority(libc::PRIO_PROCESS, 0),
                    )
                }
            })
            .await
            .unwrap();
        assert!(
            policy == libc::SCHED_IDLE || niceness == OPERATOR_NICENESS,
            "policy {policy}, niceness {niceness}"
        );
        // The caller's own thread is untouched.
        // SAFETY: as above.
        assert_ne!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
        let name = lane
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("gantry-operators"));
    }
}
