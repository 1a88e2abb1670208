//! Live log fan-out. Each job being followed has one broadcast channel; the
//! agent connection publishes a line after storing it, and every follower
//! gets it without touching the store. A follower that falls behind gets a
//! `Lagged` signal and catches up from the store, so a slow client never slows
//! the agent or the other followers, and never misses a line.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use gantry_shared::{proto, JobId};
use tokio::sync::broadcast;

/// Batches of lines buffered per job for followers (an agent sends up to a
/// few hundred lines per batch, a slow producer one): at least a tenth of a
/// second of slack before a follower reads from the store instead.
const LIVE_BUFFER: usize = 1024;

/// What followers of a job are told.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// Consecutive lines were stored.
    Lines(Arc<Vec<proto::LogLine>>),
    /// The job ended; no line follows.
    Ended,
}

/// The channels of the jobs being followed or produced.
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
            .or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe()
    }

    /// Tells followers of `job` about stored lines (no-op when none follow).
    pub fn publish(&self, job: JobId, lines: Vec<proto::LogLine>) {
        if lines.is_empty() {
            return;
        }
        let channels = self.channels.lock().expect("hub lock");
        if let Some(tx) = channels.get(&job) {
            let _ = tx.send(LiveEvent::Lines(Arc::new(lines)));
        }
    }

    /// Tells followers that `job` ended and forgets its channel.
    pub fn end(&self, job: JobId) {
        let removed = self.channels.lock().expect("hub lock").remove(&job);
        if let Some(tx) = removed {
            let _ = tx.send(LiveEvent::Ended);
        }
    }

    /// Forgets `job`'s channel if nobody follows it any more.
    pub fn release(&self, job: JobId) {
        let mut channels = self.channels.lock().expect("hub lock");
        if channels
            .get(&job)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(&job);
        }
    }
}
