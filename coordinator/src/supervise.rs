//! The coordinator's vital tasks and their one owner.
//!
//! [`crate::serve`] starts each long-lived task (the gRPC server, the TLS
//! accept loop, the scheduler) here. [`Supervisor::watch`] waits until the
//! coordinator is told to stop or one of them ends on its own: a vital task
//! that returns, fails or panics before it was told to stop is the
//! coordinator failing, and `serve` returns that as its error (so the
//! process exits non-zero, saying why) instead of serving on without it.
//! [`Supervisor::drain`] then waits for every task to finish what it holds,
//! up to a grace period, and aborts what is left.

use std::{collections::HashMap, future::Future, time::Duration};

use anyhow::anyhow;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// The vital tasks, by name.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// Runs `task`, named `name` in what is said if it fails. It must end
    /// when the coordinator's stop token is cancelled, and only then.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits until `stop` is cancelled (`Ok`) or a task ends first (the
    /// reason, as an error). Either way `stop` is cancelled on return, so
    /// the other tasks begin to stop.
    pub async fn watch(&mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        let ended = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ended = self.tasks.join_next_with_id() => ended,
        };
        // A task that was told to stop may end before the stop is seen here.
        let stopping = stop.is_cancelled();
        stop.cancel();
        let reason = match ended.map(|ended| self.outcome(ended)) {
            Some((_, Some(failure))) => failure,
            Some((_, None)) if stopping => return Ok(()),
            Some((name, None)) => {
                anyhow!("{name} stopped by itself, so the coordinator cannot serve")
            }
            None => anyhow!("the coordinator has no task to run"),
        };
        error!("{reason:#}; stopping");
        Err(reason)
    }

    /// Waits, for at most `grace`, until every task has ended, and aborts
    /// those still running then. Returns the first failure among them.
    pub async fn drain(mut self, grace: Duration) -> anyhow::Result<()> {
        let mut first = None;
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            let ended = tokio::select! {
                ended = self.tasks.join_next_with_id() => ended,
                _ = &mut deadline => {
                    let left: Vec<_> = self.names.values().copied().collect();
                    warn!(tasks = ?left, "still running {grace:?} after the stop; aborting them");
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            };
            let Some(ended) = ended else { break };
            if let (_, Some(e)) = self.outcome(ended) {
                error!("{e:#}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The name of a task that ended, and its failure if it failed.
    fn outcome(
        &mut self,
        ended: Result<(Id, anyhow::Result<()>), JoinError>,
    ) -> (&'static str, Option<anyhow::Error>) {
        let id = match &ended {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let name = self.names.remove(&id).unwrap_or("a task");
        let failure = match ended {
            Ok((_, Ok(()))) => None,
            Ok((_, Err(e))) => Some(e.context(format!("{name} failed"))),
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                Some(anyhow!("{name} panicked: {message}"))
            }
            Err(_) => Some(anyhow!("{name} was cancelled")),
        };
        (name, failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until `stop`, then takes `cleanup` to finish.
    fn until_stopped(
        stop: &CancellationToken,
        cleanup: Duration,
    ) -> impl Future<Output = anyhow::Result<()>> {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            tokio::time::sleep(cleanup).await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_vital_task_that_fails_stops_the_others_and_is_the_error() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("the scheduler", until_stopped(&stop, Duration::ZERO));
        tasks.spawn("the gRPC server", async { Err(anyhow!("address in use")) });
        let err = tasks.watch(&stop).await.unwrap_err();
        assert_eq!(format!("{err:#}"), "the gRPC server failed: address in use");
        assert!(stop.is_cancelled(), "the others are told to stop");
        tasks.drain(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_vital_task_that_panics_or_returns_early_is_the_error() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("the scheduler", async { panic!("a job record is missing") });
        let err = tasks.watch(&stop).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the scheduler panicked: a job record is missing"
        );

        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("the accept loop", async { Ok(()) });
        let err = tasks.watch(&stop).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the accept loop stopped by itself"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_because_it_was_told_to_stop_is_no_failure() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("the scheduler", until_stopped(&stop, Duration::ZERO));
        tasks.spawn(
            "the gRPC server",
            until_stopped(&stop, Duration::from_secs(1)),
        );
        stop.cancel();
        // The scheduler has ended before the supervisor looks.
        tokio::time::sleep(Duration::from_millis(1)).await;
        tasks.watch(&stop).await.unwrap();
        tasks.drain(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_drains_every_task_and_aborts_those_past_the_grace() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("quick", until_stopped(&stop, Duration::from_millis(10)));
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("stuck", async move {
            let _held = dropped_tx;
            std::future::pending().await
        });
        stop.cancel();
        tasks.watch(&stop).await.unwrap();
        let started = tokio::time::Instant::now();
        tasks.drain(Duration::from_secs(5)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Aborted: what it held is dropped.
        assert!(dropped.await.is_err());
    }
}
