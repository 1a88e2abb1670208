//! Group commit for sled: writes go to sled's page cache at once, and one
//! thread flushes them to disk, everything written since its last flush at
//! a time. A flush is asked for by the first wait on a write's [`Durable`],
//! which resolves after a flush that began once the write was applied.
//! (What nobody waits for, sled's own flusher takes within half a second.)
//!
//! Why not a flush per write: a flush waits for the disk (fsync here:
//! p50 0.2-0.8 ms, p99 5-10 ms), and the scheduler writes a deploy's job
//! twice before its assignment is sent (dispatch's p99 target is 5 ms).
//! Sharing a flush, and starting it only when someone waits (the scheduler
//! waits once it has sent the assignment), keeps the disk off that path,
//! while every answer and acknowledgement still waits for it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
};

use tokio::sync::watch;
use tracing::error;

use crate::store::{Durable, StoreError};

/// How far the disk has caught up.
#[derive(Debug, Clone, Default)]
struct Flushed {
    /// Every write numbered up to this is durable.
    upto: u64,
    /// A flush failed: nothing after `upto` is known to be durable.
    failed: Option<String>,
}

/// What the writers and the flushing thread share.
struct Shared {
    /// The number of the last write applied.
    written: AtomicU64,
    /// The highest write number someone waits for.
    requested: AtomicU64,
    /// Whether the thread should stop once it has caught up; with
    /// `wake`, it sleeps here while there is nothing to flush.
    stop: Mutex<bool>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
}

/// The flushing thread of one database.
pub(super) struct Committer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    /// Starts the thread that flushes `db`.
    pub(super) fn start(db: sled::Db) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            flushed: watch::channel(Flushed::default()).0,
        });
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn({
                let shared = shared.clone();
                move || flush_loop(&db, &shared)
            })?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Refuses writes once a flush failed: the caller stops.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        match &self.shared.flushed.borrow().failed {
            Some(why) => Err(StoreError::Commit(why.clone())),
            None => Ok(()),
        }
    }

    /// Called after a write was applied: its durability.
    pub(super) fn written(&self) -> Durable {
        let number = self.shared.written.fetch_add(1, Ordering::SeqCst) + 1;
        let shared = self.shared.clone();
        Durable::new(async move {
            shared.request(number);
            let mut flushed = shared.flushed.subscribe();
            let seen = flushed
                .wait_for(|f| f.upto >= number || f.failed.is_some())
                .await
                .map_err(|_| StoreError::Commit("the store is closed".into()))?;
            match &seen.failed {
                Some(why) if seen.upto < number => Err(StoreError::Commit(why.clone())),
                _ => Ok(()),
            }
        })
    }

    /// Flushes what was written and stops the thread.
    pub(super) async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.written().await;
        // Writes after this are refused, and none waits for ever.
        self.shared.flushed.send_modify(|f| {
            f.failed.get_or_insert_with(|| "the store is closed".into());
        });
        {
            let mut stop = self.shared.stop.lock().expect("commit lock");
            *stop = true;
            self.shared.wake.notify_one();
        }
        let thread = self.thread.lock().expect("commit thread lock").take();
        if let Some(thread) = thread {
            // It has flushed everything (or failed), so it is ending now.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        flushed
    }
}

impl Shared {
    /// Asks for a flush that holds write `number`.
    fn request(&self, number: u64) {
        self.requested.fetch_max(number, Ordering::SeqCst);
        // Under the lock, so the thread cannot miss it between its check
        // and its wait.
        let _stop = self.stop.lock().expect("commit lock");
        self.wake.notify_one();
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        *self.shared.stop.lock().expect("commit lock") = true;
        self.shared.wake.notify_one();
    }
}

/// Flushes whenever a write not yet flushed is waited for, until told to
/// stop with nothing asked for left, or a flush fails.
fn flush_loop(db: &sled::Db, shared: &Shared) {
    let mut upto = 0;
    loop {
        let target = {
            let mut stop = shared.stop.lock().expect("commit lock");
            loop {
                if shared.requested.load(Ordering::SeqCst) > upto {
                    // Everything applied so far, which holds what was asked.
                    break shared.written.load(Ordering::SeqCst);
                }
                if *stop {
                    return;
                }
                stop = shared.wake.wait(stop).expect("commit lock");
            }
        };
        // Every write numbered up to `target` was applied before its
        // number was taken, so this flush holds it.
        match db.flush() {
            Ok(_) => {
                upto = target;
                shared.flushed.send_modify(|f| f.upto = upto);
            }
            Err(e) => {
                error!(error = %e, "cannot flush the store; it takes no more writes");
                shared
                    .flushed
                    .send_modify(|f| f.failed = Some(e.to_string()));
                return;
            }
        }
    }
}
