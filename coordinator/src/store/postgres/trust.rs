//! The trust records in Postgres: the audit trail, the agent certificates
//! issued (and revoked), and the join tokens already redeemed.

use gantry_shared::{AgentName, EnvName};
use tokio_postgres::Row;

use super::{col, decode_json, int, pool::Slot, uint};
use crate::{
    audit::AuditEntry,
    store::{IssuedCert, Refusal, StoreError},
};

/// A row of (serial, name, env, issued_ms, revoked_ms) of `certs`.
pub(super) fn decode_cert(row: &Row) -> Result<IssuedCert, StoreError> {
    let serial: String = col(row, 0)?;
    let bad = |e: gantry_shared::NameError| StoreError::Decode {
        key: format!("cert {serial}"),
        message: e.to_string(),
    };
    Ok(IssuedCert {
        name: AgentName::new(col::<String>(row, 1)?).map_err(bad)?,
        env: EnvName::new(col::<String>(row, 2)?).map_err(bad)?,
        issued_ms: col(row, 3)?,
        revoked_ms: col(row, 4)?,
        serial,
    })
}

/// Appends `entry` to the audit trail; its seq is the row's identity.
pub(super) async fn append_audit(
    slot: &mut Slot,
    epoch: i64,
    entry: AuditEntry,
) -> Result<(u64, crate::store::Durable), StoreError> {
    let record = serde_json::to_string(&entry).expect("audit entries serialize");
    let insert = slot
        .statement("INSERT INTO audit (record) VALUES ($1) RETURNING seq")
        .await?;
    let tx = super::lease::begin(slot, epoch).await?;
    let row = tx.query_one(&insert, &[&record]).await?;
    tx.commit().await?;
    Ok((uint(col(&row, 0)?)?, crate::store::Durable::done()))
}

/// See [`crate::store::Store::audit`].
pub(super) async fn audit(
    slot: &mut Slot,
    before: Option<u64>,
    limit: usize,
) -> Result<(Vec<AuditEntry>, bool), StoreError> {
    let page = slot
        .statement(
            "SELECT seq, record FROM audit WHERE ($1::bigint IS NULL OR seq < $1)
             ORDER BY seq DESC LIMIT $2",
        )
        .await?;
    let before = before.map(int).transpose()?;
    // One more than asked, to learn whether older ones remain.
    let rows = slot
        .client
        .query(&page, &[&before, &int(limit as u64 + 1)?])
        .await?;
    let more = rows.len() > limit;
    let mut entries = Vec::with_capacity(limit.min(rows.len()));
    for row in rows.iter().take(limit) {
        let seq = uint(col(row, 0)?)?;
        let mut entry: AuditEntry = decode_json(&format!("audit {seq}"), col(row, 1)?)?;
        entry.seq = seq;
        entries.push(entry);
    }
    Ok((entries, more))
}

/// See [`crate::store::Store::enrol`]: one transaction holding the lock of
/// the name's row in `cert_names`, which every enrolment of the name
/// takes, so of two racing for one name the second sees the first's
/// certificate.
pub(super) async fn enrol(
    slot: &mut Slot,
    epoch: i64,
    cert: &IssuedCert,
    nonce: &str,
) -> Result<Result<Vec<IssuedCert>, Refusal>, StoreError> {
    let lock = slot
        .statement(
            "INSERT INTO cert_names (name) VALUES ($1)
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name",
        )
        .await?;
    let elsewhere = slot
        .statement(
            "SELECT env FROM certs WHERE name = $1 AND revoked_ms IS NULL AND env <> $2
             ORDER BY serial LIMIT 1",
        )
        .await?;
    let redeem = slot
        .statement(
            "INSERT INTO used_tokens (nonce, used_ms) VALUES ($1, $2)
             ON CONFLICT (nonce) DO NOTHING",
        )
        .await?;
    let revoke = slot.statement(REVOKE).await?;
    let insert = slot
        .statement(
            "INSERT INTO certs (serial, name, env, issued_ms, revoked_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    let name = cert.name.as_str();
    let tx = super::lease::begin(slot, epoch).await?;
    tx.execute(&lock, &[&name]).await?;
    if let Some(row) = tx
        .query_opt(&elsewhere, &[&name, &cert.env.as_str()])
        .await?
    {
        let env: String = col(&row, 0)?;
        let env = EnvName::new(env).map_err(|e| StoreError::Decode {
            key: format!("certs of {name}"),
            message: e.to_string(),
        })?;
        tx.rollback().await?;
        return Ok(Err(Refusal::EnrolledElsewhere(env)));
    }
    if tx.execute(&redeem, &[&nonce, &cert.issued_ms]).await? == 0 {
        tx.rollback().await?;
        return Ok(Err(Refusal::TokenUsed));
    }
    let mut replaced = tx
        .query(&revoke, &[&name, &cert.issued_ms])
        .await?
        .iter()
        .map(decode_cert)
        .collect::<Result<Vec<_>, _>>()?;
    replaced.sort_by(|a, b| a.serial.cmp(&b.serial));
    tx.execute(
        &insert,
        &[
            &cert.serial,
            &name,
            &cert.env.as_str(),
            &cert.issued_ms,
            &cert.revoked_ms,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(replaced))
}

/// Revokes the unrevoked certificates of $1 at $2.
const REVOKE: &str = "UPDATE certs SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL
     RETURNING serial, name, env, issued_ms, revoked_ms";

/// The certificate with `serial`.
pub(super) async fn cert(slot: &mut Slot, serial: &str) -> Result<Option<IssuedCert>, StoreError> {
    let one = slot
        .statement("SELECT serial, name, env, issued_ms, revoked_ms FROM certs WHERE serial = $1")
        .await?;
    slot.client
        .query_opt(&one, &[&serial])
        .await?
        .as_ref()
        .map(decode_cert)
        .transpose()
}

/// Every certificate issued to `name`, by serial.
pub(super) async fn certs_of(
    slot: &mut Slot,
    name: &AgentName,
) -> Result<Vec<IssuedCert>, StoreError> {
    let of = slot
        .statement(
            "SELECT serial, name, env, issued_ms, revoked_ms FROM certs WHERE name = $1
             ORDER BY serial",
        )
        .await?;
    slot.client
        .query(&of, &[&name.as_str()])
        .await?
        .iter()
        .map(decode_cert)
        .collect()
}

/// Revokes every unrevoked certificate of `name`; returns them by serial.
pub(super) async fn revoke(
    slot: &mut Slot,
    epoch: i64,
    name: &AgentName,
    now_ms: i64,
) -> Result<Vec<IssuedCert>, StoreError> {
    let revoke = slot.statement(REVOKE).await?;
    let tx = super::lease::begin(slot, epoch).await?;
    let mut revoked = tx
        .query(&revoke, &[&name.as_str(), &now_ms])
        .await?
        .iter()
        .map(decode_cert)
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit().await?;
    revoked.sort_by(|a, b| a.serial.cmp(&b.serial));
    Ok(revoked)
}
