//! A few connections to the database, each used by one caller at a time
//! (a transaction needs a connection of its own), each with the statements
//! it has prepared, and each opened again when it was lost.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::{
    sync::{Mutex, MutexGuard},
    task::JoinHandle,
};
use tokio_postgres::{Client, Config, Statement};
use tracing::warn;

use super::tls::Tls;
use crate::store::StoreError;

/// One connection, its driving task and its prepared statements.
pub(super) struct Slot {
    /// The connection's client half.
    pub(super) client: Client,
    /// Drives the connection's socket; ends when the client is dropped.
    task: JoinHandle<()>,
    /// Statements prepared on this connection, by their text, so each
    /// query is parsed once per connection rather than on every call.
    statements: HashMap<&'static str, Statement>,
}

impl Slot {
    async fn connect(config: &Config, tls: &Tls) -> Result<Self, StoreError> {
        let (client, connection) = config
            .connect(tls.clone())
            .await
            .map_err(|e| tls.explain(e, config))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "the connection to the database failed");
            }
        });
        // A write is reported durable once its commit returns: that holds
        // only if the commit waits for the WAL flush, whatever the server's
        // default.
        client.batch_execute("SET synchronous_commit = on").await?;
        Ok(Self {
            client,
            task,
            statements: HashMap::new(),
        })
    }

    /// `sql`, prepared on this connection.
    pub(super) async fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The connections.
pub(super) struct Pool {
    /// Where to connect when a connection was lost.
    config: Config,
    /// How each connection's TLS session is made and checked.
    tls: Tls,
    slots: Vec<Mutex<Slot>>,
    /// Which slot a caller who finds none free queues on next.
    next: AtomicUsize,
}

impl Pool {
    /// Opens `size` connections (at least one), each with TLS as `tls`
    /// says.
    pub(super) async fn open(config: Config, tls: Tls, size: usize) -> Result<Self, StoreError> {
        let mut slots = Vec::with_capacity(size.max(1));
        for _ in 0..size.max(1) {
            slots.push(Mutex::new(Slot::connect(&config, &tls).await?));
        }
        Ok(Self {
            config,
            tls,
            slots,
            next: AtomicUsize::new(0),
        })
    }

    /// A connection for the caller alone: a free one if there is one,
    /// else the next in turn once it is free.
    pub(super) async fn get(&self) -> Result<MutexGuard<'_, Slot>, StoreError> {
        let mut slot = match self.slots.iter().find_map(|s| s.try_lock().ok()) {
            Some(slot) => slot,
            None => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
                self.slots[turn].lock().await
            }
        };
        if slot.client.is_closed() {
            warn!("the connection to the database was lost; connecting again");
            *slot = Slot::connect(&self.config, &self.tls).await?;
        }
        Ok(slot)
    }
}
