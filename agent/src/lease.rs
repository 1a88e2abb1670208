//! The agent's side of its lease. The coordinator fails the jobs of an
//! agent it has not heard from for a lease. The agent never switches
//! traffic to a new release without a fresh word that the coordinator still
//! holds its session, which keeps a partition from leaving a release
//! serving that the coordinator recorded as failed. And an agent cut off
//! for twice the lease knows its jobs were failed, so it stops them itself
//! (the second lease leaves room for a coordinator restart and the agent's
//! reconnect backoff, so a restart never costs a running job).

use std::{sync::Mutex, time::Duration};

use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

/// When the agent last heard from the coordinator, and how long it may go
/// without.
pub struct Lease {
    /// The coordinator's lease; `None` until it names one, and from a
    /// coordinator that holds none (an older version): then nothing waits
    /// for it and nothing is stopped for want of it.
    length: Mutex<Option<Duration>>,
    /// Last message of any kind from the coordinator (`None`: never).
    heard: watch::Sender<Option<Instant>>,
    /// Last answer to a heartbeat.
    answered: watch::Sender<Option<Instant>>,
    /// Asks the connection for a heartbeat now.
    ask: Notify,
}

/// Why a job was stopped, or a release not committed: no word from the
/// coordinator for this long (twice its lease).
#[derive(Debug, thiserror::Error)]
#[error(
    "agent lost: no word from the coordinator for more than {}s, so it has failed this job; \
     the serving release was left alone",
    .0.as_secs()
)]
pub struct LeaseLost(pub Duration);

impl Default for Lease {
    fn default() -> Self {
        Self {
            length: Mutex::new(None),
            heard: watch::Sender::new(None),
            answered: watch::Sender::new(None),
            ask: Notify::new(),
        }
    }
}

impl Lease {
    /// The lease the coordinator named (zero: it holds none).
    pub fn set_length(&self, length: Duration) {
        *self.length.lock().expect("lease lock") = Some(length).filter(|l| !l.is_zero());
    }

    /// How long the agent goes without a word before it stops its jobs:
    /// twice the coordinator's lease (`None`: it never does).
    pub fn patience(&self) -> Option<Duration> {
        self.length.lock().expect("lease lock").map(|l| l * 2)
    }

    /// A message came from the coordinator.
    pub fn heard(&self) {
        self.heard.send_replace(Some(Instant::now()));
    }

    /// The coordinator answered a heartbeat.
    pub fn answered(&self) {
        let now = Instant::now();
        self.heard.send_replace(Some(now));
        self.answered.send_replace(Some(now));
    }

    /// Follows the time of the last word from the coordinator.
    pub fn heard_changes(&self) -> watch::Receiver<Option<Instant>> {
        self.heard.subscribe()
    }

    /// Resolves when a heartbeat is wanted now (see [`Lease::confirm`]).
    pub async fn asked(&self) {
        self.ask.notified().await
    }

    /// When patience runs out, counting from the last word (`None`: the
    /// coordinator was never heard, so no job can be running, or it holds
    /// no lease).
    fn expiry(&self) -> Option<Instant> {
        let heard = (*self.heard.borrow())?;
        Some(heard + self.patience()?)
    }

    /// Resolves once the coordinator has not been heard for twice its
    /// lease. Waits again while it keeps being heard.
    pub async fn expired(&self) {
        self.quiet_for(2).await
    }

    /// Resolves once the coordinator has not been heard for one lease,
    /// though asked every heartbeat: its session is taken for dead (a
    /// coordinator paused, or cut off without its connection closing), so
    /// the agent dials again, another coordinator if it was given several.
    /// Waits again while it keeps being heard.
    pub async fn silent(&self) {
        self.quiet_for(1).await
    }

    /// Resolves once the coordinator has not been heard for `leases`
    /// times its lease; never while it holds none or was never heard.
    async fn quiet_for(&self, leases: u32) {
        let mut heard = self.heard.subscribe();
        loop {
            let length = *self.length.lock().expect("lease lock");
            let expiry = (*heard.borrow_and_update())
                .zip(length)
                .map(|(at, l)| at + l * leases);
            match expiry {
                Some(at) if Instant::now() >= at => return,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = heard.changed() => {}
                    }
                }
                None => {
                    let _ = heard.changed().await;
                }
            }
        }
    }

    /// Waits for the coordinator to answer a heartbeat sent from now on,
    /// which says it still holds this agent's session and jobs; fails once
    /// patience runs out first. A job calls it before the step that cannot
    /// be taken back: switching traffic to its release.
    pub async fn confirm(&self) -> Result<(), LeaseLost> {
        let Some(patience) = self.patience() else {
            return Ok(());
        };
        let asked = Instant::now();
        let mut answered = self.answered.subscribe();
        self.ask.notify_one();
        loop {
            if (*answered.borrow_and_update()).is_some_and(|at| at >= asked) {
                return Ok(());
            }
            // A word heard at all (a reconnect) pushes the expiry back; the
            // confirmation itself needs a heartbeat's answer.
            let at = self.expiry().unwrap_or(asked + patience);
            if Instant::now() >= at {
                return Err(LeaseLost(patience));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = answered.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_commit_waits_for_an_answer_given_after_it_asked() {
        let lease = std::sync::Arc::new(Lease::default());
        lease.set_length(Duration::from_secs(10));
        lease.answered();
        tokio::time::advance(Duration::from_secs(1)).await;
        let waiting = tokio::spawn({
            let lease = lease.clone();
            async move { lease.confirm().await }
        });
        // The connection is asked for a heartbeat; an answer from before
        // the question does not count.
        lease.asked().await;
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!waiting.is_finished());
        lease.answered();
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_is_refused_once_the_lease_runs_out_unanswered() {
        let lease = Lease::default();
        lease.set_length(Duration::from_secs(10));
        lease.heard();
        let started = Instant::now();
        let err = lease.confirm().await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        assert!(err
            .to_string()
            .starts_with("agent lost: no word from the coordinator for more than 20s"));
    }

    #[tokio::test(start_paused = true)]
    async fn patience_runs_out_twice_the_lease_after_the_last_word() {
        let lease = std::sync::Arc::new(Lease::default());
        lease.set_length(Duration::from_secs(10));
        lease.heard();
        let started = Instant::now();
        let expiry = tokio::spawn({
            let lease = lease.clone();
            async move { lease.expired().await }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        lease.heard();
        expiry.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(26));
    }

    #[tokio::test(start_paused = true)]
    async fn a_coordinator_that_holds_no_lease_is_never_waited_for() {
        let lease = Lease::default();
        lease.set_length(Duration::ZERO);
        lease.heard();
        assert!(lease.confirm().await.is_ok());
        let expired = tokio::time::timeout(Duration::from_secs(3600), lease.expired()).await;
        assert!(expired.is_err(), "nothing is stopped for want of a lease");
    }
}
