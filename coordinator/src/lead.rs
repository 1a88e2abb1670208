//! Leading among coordinators that share a store (Postgres): one leads at
//! a time, by a lease with an epoch that the store keeps (see
//! [`crate::store::Election`]); the others stand by ([`crate::standby`]).
//!
//! A leader's [`Term`] lasts while its lease is renewed. [`keep`] renews it
//! every [`RENEW_EVERY`]; the term also ends by this process's own clock
//! ([`Term::held`]) a [`MARGIN`] before the lease could have run out in
//! the database, so a leader that was paused (a stopped process, a frozen
//! VM) stops acting on agents before it learns it was replaced, and the
//! store refuses whatever it still tries to write.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::bail;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{Candidate, SharedStore};

/// How long a lease lasts unless renewed: a standby takes over at most
/// this long (and one [`crate::standby::TRY_EVERY`]) after a leader dies.
pub const LEASE: Duration = Duration::from_secs(5);

/// How often the leader renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// How much sooner than the database the leader takes its lease to end:
/// room for the two clocks to run at slightly different rates and for the
/// renewal's round trip.
pub const MARGIN: Duration = Duration::from_secs(1);

/// This coordinator as a candidate to lead: a holder name no other
/// process has (host, process id, start time), and its advertised URL.
pub fn candidate(url: String) -> Candidate {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "coordinator".into());
    Candidate {
        holder: format!("{host}/{}/{}", std::process::id(), gantry_shared::now_ms()),
        url,
    }
}

/// A term as leader: its epoch, and until when this process may act as
/// leader by its own clock.
#[derive(Debug)]
pub struct Term {
    epoch: u64,
    until: Mutex<Instant>,
}

impl Term {
    /// A term of `epoch` whose lease was asked for at `asked`.
    pub fn new(epoch: u64, asked: Instant) -> Arc<Self> {
        Arc::new(Self {
            epoch,
            until: Mutex::new(asked + LEASE - MARGIN),
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the lease is surely still this process's.
    pub fn held(&self) -> bool {
        Instant::now() < self.until()
    }

    fn until(&self) -> Instant {
        *self.until.lock().expect("term lock")
    }

    /// The lease was renewed by a request sent at `asked`.
    fn renewed(&self, asked: Instant) {
        *self.until.lock().expect("term lock") = asked + LEASE - MARGIN;
    }
}

/// Renews `term`'s lease until `stop` (`Ok`), or until it is lost: another
/// coordinator took over, or the database did not answer before the lease
/// would run out (the reason, as an error, which ends the term).
pub async fn keep(
    store: SharedStore,
    term: Arc<Term>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let Some(election) = store.election() else {
        return Ok(());
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let asked = Instant::now();
        let deadline = term.until();
        if asked >= deadline {
            bail!(
                "the lease of epoch {} ran out before it was renewed (was this process paused?)",
                term.epoch
            );
        }
        match tokio::time::timeout_at(deadline, election.renew(term.epoch, LEASE)).await {
            Ok(Ok(true)) => term.renewed(asked),
            Ok(Ok(false)) => bail!(
                "another coordinator took the lead (this one led in epoch {})",
                term.epoch
            ),
            Ok(Err(e)) => {
                warn!(epoch = term.epoch, error = %e, "cannot renew the lease; trying again")
            }
            Err(_) => bail!(
                "the database did not answer before the lease of epoch {} ran out",
                term.epoch
            ),
        }
    }
}

/// Ends `term` in the store, so a standby need not wait for the lease to
/// run out (nothing happens if another already leads).
pub async fn resign(store: &SharedStore, term: &Term) {
    if let Some(election) = store.election() {
        match election.resign(term.epoch).await {
            Ok(true) => info!(epoch = term.epoch, "handed the lead over"),
            Ok(false) => {}
            Err(e) => {
                warn!(epoch = term.epoch, error = %e, "cannot hand the lead over; it passes when the lease runs out")
            }
        }
    }
}
