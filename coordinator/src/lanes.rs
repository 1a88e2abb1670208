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

use std::future::Future;

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
    let param = libc::sched_param { sched_priority: 0 };
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
