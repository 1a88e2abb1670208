//! The scheduler's store: reads go straight to it, and writes are kept
//! track of until the answer that depends on them waits for them to be
//! durable (see [`super::Scheduler`]'s `answer`).

use std::ops::Deref;

use gantry_shared::AgentName;

use crate::{
    job::{AgentRecord, JobRecord},
    release::ReleaseRecord,
    store::{Durable, IssuedCert, SharedStore, Store, StoreError},
};

/// The store and the writes not yet waited for.
pub(super) struct Writes {
    store: SharedStore,
    unsynced: Vec<Durable>,
}

impl Writes {
    pub(super) fn new(store: SharedStore) -> Self {
        Self {
            store,
            unsynced: Vec::new(),
        }
    }

    /// Writes `job`.
    pub(super) async fn write_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        let written = self.store.put_job(job).await?;
        self.unsynced.push(written);
        Ok(())
    }

    /// Writes `agent`.
    pub(super) async fn write_agent(&mut self, agent: &AgentRecord) -> Result<(), StoreError> {
        let written = self.store.put_agent(agent).await?;
        self.unsynced.push(written);
        Ok(())
    }

    /// Writes `release`.
    pub(super) async fn write_release(
        &mut self,
        release: &ReleaseRecord,
    ) -> Result<(), StoreError> {
        let written = self.store.put_release(release).await?;
        self.unsynced.push(written);
        Ok(())
    }

    /// Revokes every unrevoked certificate of `name`; returns them.
    pub(super) async fn write_revocation(
        &mut self,
        name: &AgentName,
        now_ms: i64,
    ) -> Result<Vec<IssuedCert>, StoreError> {
        let (revoked, written) = self.store.revoke_certs(name, now_ms).await?;
        self.unsynced.push(written);
        Ok(revoked)
    }

    /// What was written since the last call, as one wait (`None`: nothing).
    pub(super) fn take(&mut self) -> Option<Durable> {
        match self.unsynced.len() {
            0 => None,
            _ => Some(Durable::all(std::mem::take(&mut self.unsynced))),
        }
    }
}

impl Deref for Writes {
    type Target = dyn Store;

    fn deref(&self) -> &dyn Store {
        &*self.store
    }
}
