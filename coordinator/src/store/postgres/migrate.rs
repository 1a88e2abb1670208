//! The schema's versions, kept in `coordinator/migrations/` and applied at
//! open, each in the one transaction that records it in
//! `schema_migrations`, so a database is at one version or the next.

use tokio_postgres::Client;
use tracing::info;

use crate::store::StoreError;

/// Every version, in order: (number, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/0001_init.sql")),
    (2, include_str!("../../../migrations/0002_leadership.sql")),
];

/// The advisory lock that coordinators starting at once on one database
/// take, so one applies the migrations and the others then see them.
const MIGRATION_LOCK: i64 = 0x6761_6e74_7279; // "gantry"

/// Brings the database up to the newest version this coordinator knows.
pub(super) async fn run(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let mut applied = Vec::new();
    for row in tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
    {
        applied.push(row.try_get::<_, i32>(0)?);
    }
    let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if let Some(newer) = applied.iter().find(|v| **v > known) {
        return Err(StoreError::Decode {
            key: "schema_migrations".into(),
            message: format!(
                "the database is at version {newer}, newer than this coordinator's {known}: \
                 run a coordinator of the version that wrote it"
            ),
        });
    }
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        info!(version, "applied a database migration");
    }
    tx.commit().await?;
    Ok(())
}
