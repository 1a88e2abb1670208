//! Live log fan-out. Each job being followed has a broadcast channel; the
//! agent connection publishes a run of lines after storing it, encoded once,
//! and every follower gets it without touching the store. A follower that falls behind gets a
//! `Lagged` signal and catches up from the store, so a slow client never slows
//! the agent or the other followers, and never misses a line.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use gantry_shared::{proto, JobId};
use prost::Message;
use tokio::sync::broadcast;

/// Batches of lines buffered per job for followers (an agent sends up to a
/// few hundred lines per batch, a slow producer one): at least a tenth of a
/// second of slack before a follower reads from the store instead.
const LIVE_BUFFER: usize = 1024;

/// Consecutive lines of a job's log, encoded once as a `LogBatch` (the form
/// they are stored in), so that every follower sends the same bytes.
#[derive(Debug, Clone)]
pub struct Run {
    /// Seq of the first and the last line.
    pub first: u64,
    pub last: u64,
    /// The encoded `LogBatch` of exactly these lines.
    pub encoded: Bytes,
}

impl Run {
    /// The run of `lines` (consecutive, at least one).
    pub fn of(lines: &[proto::LogLine]) -> Self {
        Self {
            first: lines.first().map_or(0, |l| l.seq),
            last: lines.last().map_or(0, |l| l.seq),
            encoded: proto::LogBatch::encode_lines(lines),
        }
    }

    /// How many lines it holds (never none).
    pub fn lines_count(&self) -> u64 {
        self.last + 1 - self.first
    }

    /// Its lines, decoded.
    pub fn lines(&self) -> Result<Vec<proto::LogLine>, prost::DecodeError> {
        Ok(proto::LogBatch::decode(self.encoded.clone())?.lines)
    }

    /// The part from seq `from` on (`from` within the run).
    pub fn from_seq(self, from: u64) -> Result<Self, prost::DecodeError> {
        if from <= self.first {
            return Ok(self);
        }
        let lines: Vec<_> = self
            .lines()?
            .into_iter()
            .filter(|l| l.seq >= from)
            .collect();
        Ok(Self::of(&lines))
    }
}

/// What followers of a job are told.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// Consecutive lines were stored.
    Lines(Run),
    /// The job ended; no line follows.
    Ended,
}

/// One followed job's channels. The agent's connection publishes into
/// `upstream`, which has one receiver: a relay task, started by the first
/// follower on the followers' runtime, that passes each event on to
/// `downstream`, where the followers listen. Storing a run thus wakes one
/// task however many follow, and waking the followers is work done on their
/// side (see [`crate::lanes`]).
struct Channel {
    upstream: broadcast::Sender<LiveEvent>,
    downstream: broadcast::Sender<LiveEvent>,
}

impl Channel {
    fn start() -> Self {
        let (upstream, mut from_agent) = broadcast::channel(LIVE_BUFFER);
        let downstream = broadcast::channel(LIVE_BUFFER).0;
        let to_followers = downstream.clone();
        // Ends when the channel is forgotten (upstream closes).
        tokio::spawn(async move {
            loop {
                match from_agent.recv().await {
                    Ok(event) => {
                        let _ = to_followers.send(event);
                    }
                    // Runs the relay missed: the next run's first seq shows
                    // followers the gap, and they read it from the store.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self {
            upstream,
            downstream,
        }
    }
}

/// The channels of the jobs being followed.
#[derive(Default, Clone)]
pub struct LogHub {
    channels: Arc<Mutex<HashMap<JobId, Channel>>>,
}

impl LogHub {
    /// Follows `job`'s live events.
    pub fn subscribe(&self, job: JobId) -> broadcast::Receiver<LiveEvent> {
        let mut channels = self.channels.lock().expect("hub lock");
        channels
            .entry(job)
            .or_insert_with(Channel::start)
            .downstream
            .subscribe()
    }

    /// Tells followers of `job` about a stored run (no-op when none follow).
    pub fn publish(&self, job: JobId, run: Run) {
        let channels = self.channels.lock().expect("hub lock");
        if let Some(channel) = channels.get(&job) {
            let _ = channel.upstream.send(LiveEvent::Lines(run));
        }
    }

    /// Tells followers that `job` ended and forgets its channel.
    pub fn end(&self, job: JobId) {
        let removed = self.channels.lock().expect("hub lock").remove(&job);
        if let Some(channel) = removed {
            let _ = channel.upstream.send(LiveEvent::Ended);
        }
    }

    /// Forgets `job`'s channel if nobody follows it any more.
    pub fn release(&self, job: JobId) {
        let mut channels = self.channels.lock().expect("hub lock");
        if channels
            .get(&job)
            .is_some_and(|c| c.downstream.receiver_count() == 0)
        {
            channels.remove(&job);
        }
    }
}
