//! The leader's lease in Postgres: one row of `leadership` (see
//! `migrations/0002_leadership.sql`) holding the epoch, the holder, its
//! URL and when the lease runs out, by the database's clock.
//!
//! Every write is a transaction that first share-locks that row and
//! checks the epoch it leads in ([`begin`]). A takeover updates the row,
//! so it waits for the writes in flight to commit, and every write after
//! it sees the new epoch and is refused: a leader that was paused past its
//! lease and replaced writes nothing once it runs again.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use tokio_postgres::Transaction;
use tracing::info;

use super::{col, int, pool::Slot, uint, PgStore};
use crate::store::{Candidate, Election, Leader, StoreError};

/// The epoch this store writes in; 0 while it does not lead.
#[derive(Default)]
pub(super) struct Fence(AtomicU64);

impl Fence {
    /// The epoch writes are fenced by, or why there is none.
    pub(super) fn epoch(&self) -> Result<i64, StoreError> {
        match self.0.load(Ordering::SeqCst) {
            0 => Err(StoreError::NotLeader),
            epoch => int(epoch),
        }
    }

    fn set(&self, epoch: u64) {
        self.0.store(epoch, Ordering::SeqCst);
    }

    /// Stops writing in `epoch` (if it is still the one).
    fn clear(&self, epoch: u64) {
        let _ = self
            .0
            .compare_exchange(epoch, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Share-locks the lease row until the transaction ends and reads its
/// epoch.
const CHECK: &str = "SELECT epoch FROM leadership WHERE id = 1 FOR SHARE";

/// Takes the lead when no lease is running, one epoch on.
const TAKE: &str = "INSERT INTO leadership (id, epoch, holder, url, expires_at)
     VALUES (1, 1, $1, $2, now() + make_interval(secs => $3))
     ON CONFLICT (id) DO UPDATE SET epoch = leadership.epoch + 1,
         holder = EXCLUDED.holder, url = EXCLUDED.url, expires_at = EXCLUDED.expires_at
     WHERE leadership.expires_at <= now()
     RETURNING epoch";

/// Extends the lease of an epoch that still leads.
const RENEW: &str = "UPDATE leadership SET expires_at = now() + make_interval(secs => $2)
     WHERE id = 1 AND epoch = $1 RETURNING epoch";

/// Ends the lease of an epoch now, if it is still running.
const RESIGN: &str = "UPDATE leadership SET expires_at = now()
     WHERE id = 1 AND epoch = $1 AND expires_at > now() RETURNING epoch";

/// Who leads.
const LEADER: &str = "SELECT epoch, holder, url, expires_at > now() FROM leadership WHERE id = 1";

/// Begins a transaction on `slot` whose writes are applied only if
/// `epoch` still leads when it commits.
pub(super) async fn begin(slot: &mut Slot, epoch: i64) -> Result<Transaction<'_>, StoreError> {
    let check = slot.statement(CHECK).await?;
    let tx = slot.client.transaction().await?;
    let newest: Option<i64> = match tx.query_opt(&check, &[]).await? {
        Some(row) => Some(col(&row, 0)?),
        None => None,
    };
    if newest != Some(epoch) {
        // Dropping the transaction rolls it back.
        return Err(StoreError::Fenced {
            epoch: uint(epoch)?,
            newest: uint(newest.unwrap_or(0))?,
        });
    }
    Ok(tx)
}

#[async_trait]
impl Election for PgStore {
    async fn try_lead(&self, me: &Candidate, ttl: Duration) -> Result<Option<u64>, StoreError> {
        self.check()?;
        let rows = self
            .query(TAKE, &[&me.holder, &me.url, &ttl.as_secs_f64()])
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let epoch = uint(col(row, 0)?)?;
        self.fence.set(epoch);
        info!(epoch, holder = %me.holder, "took the lead");
        Ok(Some(epoch))
    }

    async fn renew(&self, epoch: u64, ttl: Duration) -> Result<bool, StoreError> {
        let rows = self
            .query(RENEW, &[&int(epoch)?, &ttl.as_secs_f64()])
            .await?;
        if rows.is_empty() {
            self.fence.clear(epoch);
        }
        Ok(!rows.is_empty())
    }

    async fn leader(&self) -> Result<Option<Leader>, StoreError> {
        let rows = self.query(LEADER, &[]).await?;
        rows.first()
            .map(|row| {
                Ok(Leader {
                    epoch: uint(col(row, 0)?)?,
                    holder: col(row, 1)?,
                    url: col(row, 2)?,
                    live: col(row, 3)?,
                })
            })
            .transpose()
    }

    async fn resign(&self, epoch: u64) -> Result<bool, StoreError> {
        self.fence.clear(epoch);
        Ok(!self.query(RESIGN, &[&int(epoch)?]).await?.is_empty())
    }
}

#[cfg(test)]
impl PgStore {
    /// Leads for a test: takes the lease for an hour, or, when another
    /// store of the test holds it, writes in that store's epoch too.
    pub(crate) async fn lead_for_test(&self) {
        let me = Candidate {
            holder: "a test".into(),
            url: "http://127.0.0.1:7700".into(),
        };
        let hour = Duration::from_secs(3600);
        if self.try_lead(&me, hour).await.unwrap().is_none() {
            let leader = self.leader().await.unwrap().expect("someone leads");
            self.fence.set(leader.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{postgres::testdb::TestDb, Store};

    fn candidate(name: &str) -> Candidate {
        Candidate {
            holder: name.into(),
            url: format!("https://{name}:7700"),
        }
    }

    /// Tries `store` for the lead until it has it (a lease running out is
    /// waited for with a deadline, never a fixed sleep).
    async fn lead_once_free(store: &PgStore, me: &Candidate, ttl: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(epoch) = store.try_lead(me, ttl).await.unwrap() {
                return epoch;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease never ran out"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn a_job(id: u64, reason: &str) -> crate::job::JobRecord {
        let mut job = crate::job::JobRecord::queued(
            gantry_shared::JobId::new(id).unwrap(),
            gantry_shared::AppName::new("hello").unwrap(),
            gantry_shared::EnvName::new("dev").unwrap(),
            crate::job::JobKind::Deploy,
            Vec::new(),
            None,
            "abc".into(),
            "ann".into(),
            0,
        );
        job.reason = reason.into();
        job
    }

    #[tokio::test]
    async fn one_leads_and_a_standby_writes_nothing() {
        let db = TestDb::create().await;
        let a = PgStore::open(&db.url, None).await.unwrap();
        let b = PgStore::open(&db.url, None).await.unwrap();
        let hour = Duration::from_secs(3600);

        // Before anyone leads, nothing is written.
        assert!(matches!(
            a.put_job(&a_job(1, "early")).await,
            Err(StoreError::NotLeader)
        ));
        assert_eq!(a.try_lead(&candidate("a"), hour).await.unwrap(), Some(1));
        assert_eq!(b.try_lead(&candidate("b"), hour).await.unwrap(), None);
        let leader = b.leader().await.unwrap().unwrap();
        assert_eq!(
            leader,
            Leader {
                epoch: 1,
                holder: "a".into(),
                url: "https://a:7700".into(),
                live: true
            }
        );
        a.put_job(&a_job(1, "by a")).await.unwrap().await.unwrap();
        // b reads what a wrote, and writes nothing itself.
        assert_eq!(
            b.job(a_job(1, "").id).await.unwrap().unwrap().reason,
            "by a"
        );
        assert!(matches!(
            b.put_job(&a_job(1, "by b")).await,
            Err(StoreError::NotLeader)
        ));
        assert!(matches!(b.next_job_id().await, Err(StoreError::NotLeader)));
        assert_eq!(
            b.job(a_job(1, "").id).await.unwrap().unwrap().reason,
            "by a"
        );
    }

    #[tokio::test]
    async fn a_leader_replaced_after_its_lease_ran_out_is_fenced() {
        let db = TestDb::create().await;
        let old = PgStore::open(&db.url, None).await.unwrap();
        let new = PgStore::open(&db.url, None).await.unwrap();
        let short = Duration::from_millis(300);
        assert_eq!(
            old.try_lead(&candidate("old"), short).await.unwrap(),
            Some(1)
        );
        old.put_job(&a_job(1, "by old"))
            .await
            .unwrap()
            .await
            .unwrap();

        // The old leader stops renewing (paused); once its lease runs out
        // the other takes over, one epoch on.
        let epoch = lead_once_free(&new, &candidate("new"), Duration::from_secs(3600)).await;
        assert_eq!(epoch, 2);

        // Every kind of write by the old one is refused and changes nothing.
        let fenced = |r: Result<_, StoreError>| {
            matches!(
                r,
                Err(StoreError::Fenced {
                    epoch: 1,
                    newest: 2
                })
            )
        };
        assert!(fenced(old.put_job(&a_job(1, "late")).await.map(drop)));
        let id = a_job(1, "").id;
        let line = crate::store::tests::line(1, "late");
        assert!(fenced(old.append_logs(id, vec![line]).await.map(drop)));
        let entry = crate::audit::AuditEntry::new("ann", "cli", "deploy", "hello", true, "late");
        assert!(fenced(old.append_audit(entry).await.map(drop)));
        assert_eq!(new.job(id).await.unwrap().unwrap().reason, "by old");
        assert_eq!(new.last_seq(id).await.unwrap(), 0);
        assert!(new.audit(None, 10).await.unwrap().0.is_empty());
        // It learns it lost the lead when it tries to renew.
        assert!(!old.renew(1, short).await.unwrap());
        assert!(matches!(
            old.put_job(&a_job(1, "later")).await,
            Err(StoreError::NotLeader)
        ));
        new.put_job(&a_job(1, "by new"))
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(new.renew(2, short).await.unwrap());
    }

    #[tokio::test]
    async fn a_resigning_leader_hands_over_at_once_and_two_candidates_never_both_win() {
        let db = TestDb::create().await;
        let a = PgStore::open(&db.url, None).await.unwrap();
        let hour = Duration::from_secs(3600);
        let epoch = a.try_lead(&candidate("a"), hour).await.unwrap().unwrap();
        assert!(a.resign(epoch).await.unwrap());
        assert!(!a.resign(epoch).await.unwrap(), "resigned once");
        assert!(matches!(
            a.put_job(&a_job(1, "after")).await,
            Err(StoreError::NotLeader)
        ));
        assert!(!a.leader().await.unwrap().unwrap().live);

        // With the lease free, of candidates trying at once exactly one
        // wins, round after round.
        let stores: Vec<Arc<PgStore>> = futures::future::join_all(
            (0..3).map(|_| async { Arc::new(PgStore::open(&db.url, None).await.unwrap()) }),
        )
        .await;
        for round in 0..10u64 {
            let tries = stores.iter().enumerate().map(|(i, s)| async move {
                let won = s
                    .try_lead(&candidate(&format!("c{i}")), hour)
                    .await
                    .unwrap();
                won.map(|epoch| (i, epoch))
            });
            let won: Vec<(usize, u64)> = futures::future::join_all(tries)
                .await
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(won.len(), 1, "round {round}: {won:?}");
            let (winner, epoch) = won[0];
            assert_eq!(epoch, round + 2);
            stores[winner].resign(epoch).await.unwrap();
        }
    }
}
