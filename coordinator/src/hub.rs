//! Live log fan-out: one bounded broadcast channel per followed job. The
//! agent's connection publishes each run of lines after storing it, and
//! every follower of the job gets it from the channel. A follower that
//! falls a whole channel behind is told it lagged and reads what it missed
//! from the store, so a slow client never slows the agent or the other
//! followers, and never misses a line.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use gantry_shared::JobId;
use tokio::sync::broadcast;

use crate::store::Run;

/// Runs held per followed job for its followers (an agent sends up to a
/// few hundred lines per run). A follower further behind reads from the
/// store. Bounds a job's channel to this many runs, each at most one agent
/// message (`MAX_AGENT_MESSAGE_BYTES`), and shared by every follower.
const FOLLOWER_BUFFER: usize = 256;

/// What followers of a job are told.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// Consecutive lines were stored.
    Lines(Run),
    /// The job ended; no line follows.
    Ended,
}

/// The channels of the jobs being followed.
#[derive(Default, Clone)]
pub struct LogHub {
    channels: Arc<Mutex<HashMap<JobId, broadcast::Sender<LiveEvent>>>>,
}

impl LogHub {
    /// Follows `job`'s live events.
    pub fn subscribe(&self, job: JobId) -> broadcast::Receiver<LiveEvent> {
        let mut channels = self.channels.lock().expect("hub lock");
        channels
            .entry(job)
            .or_insert_with(|| broadcast::channel(FOLLOWER_BUFFER).0)
            .subscribe()
    }

    /// Tells followers of `job` about a stored run (no-op when none follow).
    pub fn publish(&self, job: JobId, run: Run) {
        let channels = self.channels.lock().expect("hub lock");
        if let Some(channel) = channels.get(&job) {
            let _ = channel.send(LiveEvent::Lines(run));
        }
    }

    /// Tells followers that `job` ended and forgets its channel.
    pub fn end(&self, job: JobId) {
        let removed = self.channels.lock().expect("hub lock").remove(&job);
        if let Some(channel) = removed {
            let _ = channel.send(LiveEvent::Ended);
        }
    }

    /// Forgets `job`'s channel if nobody follows it any more.
    pub fn release(&self, job: JobId) {
        let mut channels = self.channels.lock().expect("hub lock");
        if channels.get(&job).is_some_and(|c| c.receiver_count() == 0) {
            channels.remove(&job);
        }
    }
}

#[cfg(test)]
mod tests {
    use gantry_shared::proto;

    use super::*;

    fn run(seqs: std::ops::RangeInclusive<u64>) -> Run {
        let lines: Vec<_> = seqs
            .map(|seq| proto::LogLine {
                seq,
                text: format!("line {seq}"),
                ..Default::default()
            })
            .collect();
        Run::of(&lines)
    }

    fn seqs(event: LiveEvent) -> Vec<u64> {
        match event {
            LiveEvent::Lines(run) => run.lines().unwrap().iter().map(|l| l.seq).collect(),
            LiveEvent::Ended => Vec::new(),
        }
    }

    #[tokio::test]
    async fn followers_get_every_run_in_order_then_the_end() {
        let hub = LogHub::default();
        let job = JobId::new(1).unwrap();
        let mut followers = [hub.subscribe(job), hub.subscribe(job)];
        hub.publish(job, run(1..=2));
        hub.publish(job, run(3..=3));
        hub.end(job);
        for follower in &mut followers {
            assert_eq!(seqs(follower.recv().await.unwrap()), [1, 2]);
            assert_eq!(seqs(follower.recv().await.unwrap()), [3]);
            assert!(matches!(follower.recv().await.unwrap(), LiveEvent::Ended));
            // The channel is gone with the job.
            assert!(matches!(
                follower.recv().await,
                Err(broadcast::error::RecvError::Closed)
            ));
        }
    }

    #[tokio::test]
    async fn a_follower_a_channel_behind_is_told_it_lagged() {
        let hub = LogHub::default();
        let job = JobId::new(1).unwrap();
        let mut follower = hub.subscribe(job);
        for seq in 1..=FOLLOWER_BUFFER as u64 + 1 {
            hub.publish(job, run(seq..=seq));
        }
        assert!(matches!(
            follower.recv().await,
            Err(broadcast::error::RecvError::Lagged(1))
        ));
        // What is still held follows, from the run after the one it missed.
        assert_eq!(seqs(follower.recv().await.unwrap()), [2]);
    }

    #[tokio::test]
    async fn a_job_nobody_follows_has_no_channel() {
        let hub = LogHub::default();
        let job = JobId::new(1).unwrap();
        hub.publish(job, run(1..=1));
        let follower = hub.subscribe(job);
        drop(follower);
        hub.release(job);
        assert!(hub.channels.lock().unwrap().is_empty());
    }
}
