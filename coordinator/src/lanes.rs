//! Two lanes for connections, so that reading never slows the agents down.
//!
//! Agents' connections (log ingestion, dispatch, heartbeats) run on the
//! runtime `serve` was called on. Operators' connections (reads, log
//! followers, `gantry logs`) run on a runtime of their own whose threads
//! have a lower CPU priority. When the machine is busy the kernel gives the
//! agents' threads the CPU first and followers take what is left, catching
//! up from the store; when it is not, followers get all they can use.
//!
//! Tokio shares a runtime's turns equally among its tasks, so on one
//! runtime a hundred followers' connections would get a hundred turns for
//! each one of the agent's; this is what the separate runtime fixes, and the
//! lower priority keeps the two runtimes' threads from sharing the cores
//! equally.
//!
//! A connection's lane is known after the TLS handshake: agents present a
//! client certificate and operators do not. Without TLS (`plaintext`, only
//! ever on loopback) every connection takes the agents' lane.

use std::future::Future;

use tracing::debug;

/// The niceness of the operators' lane threads: weight 110 against 1,024
/// for the agents' threads, so ingestion keeps about 90% of a contended
/// core.
const OPERATOR_NICENESS: libc::c_int = 19;

/// The operators' lane: a multi-threaded runtime of low-priority threads.
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

/// Lowers the calling thread's CPU priority (on Linux, niceness is per
/// thread). Failing to is harmless: the lane still has its own turns.
fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments; `who` 0 is the
    // calling thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, OPERATOR_NICENESS) };
    if result != 0 {
        debug!(error = %std::io::Error::last_os_error(), "cannot lower the operators' lane priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lane_threads_run_at_the_lower_priority() {
        let lane = OperatorLane::start().unwrap();
        let niceness = lane
            .spawn(async {
                // SAFETY: getpriority only reads its integer arguments.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
            })
            .await
            .unwrap();
        // Only an unprivileged process that was already nicer can be
        // above it.
        assert!(niceness >= OPERATOR_NICENESS, "niceness {niceness}");
        let name = lane
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("gantry-operators"));
    }
}
