//! Live log fan-out. Each job being followed has a broadcast channel; the
//! agent connection publishes a run of lines after storing it, encoded once,
//! and every follower gets it without touching the store. A follower that falls behind gets a
//! `Lagged` signal and catches up from the store, so a slow client never slows
//! the agent or the other followers, and never misses a line.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use gantry_shared::{proto, JobId};
use prost::Message;
use tokio::sync::broadcast;

/// Runs buffered per followed job for the relay (an agent sends up to a
/// few hundred lines per run, a slow producer one). The relay runs at the
/// followers' low priority, so it may wait while a fast producer has the
/// CPU: 2,048 runs of 512 lines hold about a million lines of slack before
/// followers read the missed runs from the store instead.
const RELAY_BUFFER: usize = 2048;

/// Bytes of runs waiting for one job's relay at most; past it a run is not
/// relayed, and followers read it from the store. Bounds the memory a
/// relay that runs late holds, whatever the length of the lines.
const RELAY_BYTES: usize = 64 * 1024 * 1024;

/// Events buffered per followed job for its followers; the relay joins the
/// runs waiting for it into events of up to [`JOIN_BYTES`] (a single larger
/// run goes alone), and a follower further behind reads from the store.
const FOLLOWER_BUFFER: usize = 256;

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

    /// Consecutive runs as one (protobuf merges the lines of encoded
    /// batches laid end to end); `runs` holds at least one.
    pub fn joined(runs: Vec<Run>) -> Self {
        if runs.len() == 1 {
            return runs.into_iter().next().expect("one run");
        }
        let size = runs.iter().map(|r| r.encoded.len()).sum();
        let mut encoded = bytes::BytesMut::with_capacity(size);
        for run in &runs {
            encoded.extend_from_slice(&run.encoded);
        }
        Self {
            first: runs.first().map_or(0, |r| r.first),
            last: runs.last().map_or(0, |r| r.last),
            encoded: encoded.freeze(),
        }
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

/// A run on its way to the relay, counted in its channel's bytes in
/// flight until the last copy of it is dropped (the relay has taken it,
/// or the channel dropped it unread).
#[derive(Debug)]
struct InFlight {
    run: Run,
    bytes: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.bytes
            .fetch_sub(self.run.encoded.len(), Ordering::Relaxed);
    }
}

/// What the agent's connection tells a job's relay.
#[derive(Debug, Clone)]
enum Upstream {
    Lines(Arc<InFlight>),
    Ended,
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
    upstream: broadcast::Sender<Upstream>,
    downstream: broadcast::Sender<LiveEvent>,
    /// Bytes of runs sent upstream that the relay has not taken yet.
    in_flight: Arc<AtomicUsize>,
}

impl Channel {
    fn start() -> Self {
        let (upstream, mut from_agent) = broadcast::channel(RELAY_BUFFER);
        let downstream = broadcast::channel(FOLLOWER_BUFFER).0;
        let to_followers = downstream.clone();
        // Ends when the channel is forgotten (upstream closes).
        tokio::spawn(async move {
            loop {
                match from_agent.recv().await {
                    Ok(Upstream::Lines(sent)) => {
                        let run = sent.run.clone();
                        drop(sent);
                        relay_runs(run, &mut from_agent, &to_followers)
                    }
                    Ok(Upstream::Ended) => {
                        let _ = to_followers.send(LiveEvent::Ended);
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
            in_flight: Arc::default(),
        }
    }
}

/// Bytes of lines the relay joins into one event at most.
const JOIN_BYTES: usize = 256 * 1024;

/// Passes `run` on to the followers, joined with the runs already waiting
/// behind it: when the relay runs late (the machine is busy taking lines
/// in), followers get fewer, larger events, and each costs them a wake-up
/// and a message. Nothing waits to be joined: an idle machine relays every
/// run as it comes.
fn relay_runs(
    run: Run,
    from_agent: &mut broadcast::Receiver<Upstream>,
    to_followers: &broadcast::Sender<LiveEvent>,
) {
    let mut waiting = vec![run];
    let mut size = waiting[0].encoded.len();
    let mut ended = false;
    while size < JOIN_BYTES {
        match from_agent.try_recv() {
            Ok(Upstream::Lines(sent)) => {
                let next = sent.run.clone();
                drop(sent);
                let apart = waiting.last().is_some_and(|r| r.last + 1 != next.first);
                if apart || size + next.encoded.len() > JOIN_BYTES {
                    // Not consecutive (the agent resent, or a gap), or too
                    // much for one event: what waits goes first.
                    let _ = to_followers
                        .send(LiveEvent::Lines(Run::joined(std::mem::take(&mut waiting))));
                    size = 0;
                }
                size += next.encoded.len();
                waiting.push(next);
            }
            Ok(Upstream::Ended) => {
                ended = true;
                break;
            }
            // Nothing more waiting, or missed runs (followers see the gap).
            Err(_) => break,
        }
    }
    if !waiting.is_empty() {
        let _ = to_followers.send(LiveEvent::Lines(Run::joined(waiting)));
    }
    if ended {
        let _ = to_followers.send(LiveEvent::Ended);
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
        let Some(channel) = channels.get(&job) else {
            return;
        };
        let size = run.encoded.len();
        if channel.in_flight.load(Ordering::Relaxed) + size > RELAY_BYTES {
            // The relay is that far behind: the next run it gets shows
            // followers the gap, and they read this one from the store.
            return;
        }
        channel.in_flight.fetch_add(size, Ordering::Relaxed);
        let bytes = channel.in_flight.clone();
        let _ = channel
            .upstream
            .send(Upstream::Lines(Arc::new(InFlight { run, bytes })));
    }

    /// Tells followers that `job` ended and forgets its channel.
    pub fn end(&self, job: JobId) {
        let removed = self.channels.lock().expect("hub lock").remove(&job);
        if let Some(channel) = removed {
            let _ = channel.upstream.send(Upstream::Ended);
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

#[cfg(test)]
mod tests {
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
            LiveEvent::Lines(run) => {
                let seqs: Vec<_> = run.lines().unwrap().iter().map(|l| l.seq).collect();
                assert_eq!((run.first, run.last), (seqs[0], *seqs.last().unwrap()));
                seqs
            }
            LiveEvent::Ended => Vec::new(),
        }
    }

    // One thread: the relay runs only when the test awaits, so the runs
    // published before are all waiting when it does.
    #[tokio::test]
    async fn runs_waiting_for_the_relay_reach_followers_joined_and_in_order() {
        let hub = LogHub::default();
        let job = JobId::new(1).unwrap();
        let mut follower = hub.subscribe(job);
        hub.publish(job, run(1..=2));
        hub.publish(job, run(3..=3));
        hub.publish(job, run(4..=6));
        hub.end(job);
        assert_eq!(seqs(follower.recv().await.unwrap()), [1, 2, 3, 4, 5, 6]);
        assert!(matches!(follower.recv().await.unwrap(), LiveEvent::Ended));
        // The channel is gone with the relay.
        assert!(matches!(
            follower.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
    }

    #[tokio::test]
    async fn runs_that_do_not_follow_on_are_relayed_apart() {
        let hub = LogHub::default();
        let job = JobId::new(1).unwrap();
        let mut follower = hub.subscribe(job);
        hub.publish(job, run(1..=2));
        hub.publish(job, run(5..=6));
        assert_eq!(seqs(follower.recv().await.unwrap()), [1, 2]);
        assert_eq!(seqs(follower.recv().await.unwrap()), [5, 6]);
    }

    #[tokio::test]
    async fn a_run_is_relayed_at_once_when_nothing_waits_behind_it() {
        let hub = LogHub::default();
        let job = JobId::new(1).unwrap();
        let mut follower = hub.subscribe(job);
        hub.publish(job, run(1..=1));
        assert_eq!(seqs(follower.recv().await.unwrap()), [1]);
        hub.publish(job, run(2..=2));
        assert_eq!(seqs(follower.recv().await.unwrap()), [2]);
    }

    #[tokio::test]
    async fn a_relay_far_behind_holds_no_more_than_its_byte_budget() {
        let hub = LogHub::default();
        let job = JobId::new(1).unwrap();
        let mut follower = hub.subscribe(job);
        let mib = |seq: u64| {
            Run::of(&[proto::LogLine {
                seq,
                text: "x".repeat(1024 * 1024),
                ..Default::default()
            }])
        };
        // One thread: the relay cannot run until the test awaits.
        for seq in 1..=70 {
            hub.publish(job, mib(seq));
        }
        let in_flight = |hub: &LogHub| {
            let channels = hub.channels.lock().unwrap();
            channels[&job].in_flight.load(Ordering::Relaxed)
        };
        assert!(in_flight(&hub) <= RELAY_BYTES, "{}", in_flight(&hub));
        let relayed = RELAY_BYTES / mib(1).encoded.len();
        for seq in 1..=relayed as u64 {
            assert_eq!(seqs(follower.recv().await.unwrap()), [seq]);
        }
        assert_eq!(in_flight(&hub), 0);
        // Followers see the runs left out as a gap, and read them from the store.
        hub.publish(job, mib(71));
        assert_eq!(seqs(follower.recv().await.unwrap()), [71]);
    }
}
