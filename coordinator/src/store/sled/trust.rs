//! The trust records: the audit trail, the agent certificates issued (and
//! revoked), and the join tokens already redeemed.

use std::sync::Mutex;

use gantry_shared::AgentName;

use super::decode_json;
use crate::{
    audit::AuditEntry,
    store::{IssuedCert, Refusal, StoreError},
};

/// The trust trees.
pub(super) struct Trust {
    /// Audit seq (big-endian) -> JSON [`AuditEntry`]; only ever appended to.
    audit: sled::Tree,
    /// Held while an entry is numbered and inserted.
    audit_lock: Mutex<()>,
    /// Certificate serial (hex) -> JSON [`IssuedCert`].
    certs: sled::Tree,
    /// Held by every change to `certs`, so an enrolment's check of the
    /// name's other certificates and its insert are one step.
    cert_lock: Mutex<()>,
    /// Nonce of each join token redeemed -> when (ms, big-endian).
    used_tokens: sled::Tree,
}

impl Trust {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            audit: db.open_tree("audit")?,
            audit_lock: Mutex::new(()),
            certs: db.open_tree("certs")?,
            cert_lock: Mutex::new(()),
            used_tokens: db.open_tree("used_tokens")?,
        })
    }

    /// Appends `entry` to the audit trail, numbering it; returns its seq.
    pub(super) fn append_audit(&self, mut entry: AuditEntry) -> Result<u64, StoreError> {
        // One writer at a time takes the next number after the last entry.
        let _one_writer = self.audit_lock.lock().expect("audit lock");
        let seq = match self.audit.last()? {
            Some((key, _)) => u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0; 8])) + 1,
            None => 1,
        };
        entry.seq = seq;
        let bytes = serde_json::to_vec(&entry).expect("audit entries serialize");
        self.audit.insert(seq.to_be_bytes(), bytes)?;
        Ok(seq)
    }

    /// The newest `limit` audit entries older than `before` (all when
    /// `None`), newest first, and whether older ones remain.
    pub(super) fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, bool), StoreError> {
        let range = match before {
            Some(seq) => self.audit.range(..seq.to_be_bytes()),
            None => self.audit.range::<[u8; 8], _>(..),
        };
        let mut older = range.rev();
        let entries = older
            .by_ref()
            .take(limit)
            .map(|kv| {
                let (key, value) = kv?;
                decode_json(&format!("audit {key:?}"), &value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let more = older.next().transpose()?.is_some();
        Ok((entries, more))
    }

    /// Records `cert`, issued for a join token with `nonce`, as one step
    /// with the checks that allow it: the name holds no unrevoked
    /// certificate of another environment, and the token was not redeemed
    /// before. Then the token is marked used, the name's earlier
    /// certificates (of the same environment: a reinstalled host) are
    /// revoked and returned, and `cert` is stored. Concurrent enrolments of
    /// one name in two environments cannot both pass: the check and the
    /// insert run under one lock, which every change to the certificates
    /// takes.
    pub(super) fn enrol(
        &self,
        cert: &IssuedCert,
        nonce: &str,
    ) -> Result<Result<Vec<IssuedCert>, Refusal>, StoreError> {
        let _one_step = self.cert_lock.lock().expect("certificate lock");
        let earlier = self.certs_of(&cert.name)?;
        if let Some(other) = earlier
            .iter()
            .find(|c| c.revoked_ms.is_none() && c.env != cert.env)
        {
            return Ok(Err(Refusal::EnrolledElsewhere(other.env.clone())));
        }
        let previous = self.used_tokens.compare_and_swap(
            nonce.as_bytes(),
            None as Option<&[u8]>,
            Some(&cert.issued_ms.to_be_bytes()[..]),
        )?;
        if previous.is_err() {
            return Ok(Err(Refusal::TokenUsed));
        }
        let replaced = self.revoke_unlocked(&cert.name, cert.issued_ms)?;
        let bytes = serde_json::to_vec(cert).expect("certificate records serialize");
        self.certs.insert(cert.serial.as_bytes(), bytes)?;
        Ok(Ok(replaced))
    }

    /// The certificate with `serial`, if this coordinator issued it.
    pub(super) fn cert(&self, serial: &str) -> Result<Option<IssuedCert>, StoreError> {
        self.certs
            .get(serial.as_bytes())?
            .map(|v| decode_json(&format!("cert {serial}"), &v))
            .transpose()
    }

    /// Every certificate issued to `name`.
    pub(super) fn certs_of(&self, name: &AgentName) -> Result<Vec<IssuedCert>, StoreError> {
        let mut certs = Vec::new();
        for kv in self.certs.iter() {
            let (key, value) = kv?;
            let cert: IssuedCert = decode_json(&format!("cert {key:?}"), &value)?;
            if &cert.name == name {
                certs.push(cert);
            }
        }
        Ok(certs)
    }

    /// Every certificate issued, by serial.
    pub(super) fn all_certs(&self) -> Result<Vec<IssuedCert>, StoreError> {
        self.certs
            .iter()
            .map(|kv| {
                let (key, value) = kv?;
                decode_json(&format!("cert {}", String::from_utf8_lossy(&key)), &value)
            })
            .collect()
    }

    /// The nonce of every join token redeemed and when (ms), by nonce.
    pub(super) fn used_tokens(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.used_tokens
            .iter()
            .map(|kv| {
                let (key, value) = kv?;
                let bad = |message: String| StoreError::Decode {
                    key: format!("used token {}", String::from_utf8_lossy(&key)),
                    message,
                };
                let nonce = String::from_utf8(key.to_vec()).map_err(|e| bad(e.to_string()))?;
                let used: [u8; 8] = value
                    .as_ref()
                    .try_into()
                    .map_err(|_| bad(format!("{} bytes, not 8", value.len())))?;
                Ok((nonce, i64::from_be_bytes(used)))
            })
            .collect()
    }

    /// Revokes every unrevoked certificate of `name`; returns them.
    pub(super) fn revoke_certs(
        &self,
        name: &AgentName,
        now_ms: i64,
    ) -> Result<Vec<IssuedCert>, StoreError> {
        let _one_step = self.cert_lock.lock().expect("certificate lock");
        self.revoke_unlocked(name, now_ms)
    }

    /// As [`Trust::revoke_certs`], for a caller holding the certificate lock.
    fn revoke_unlocked(
        &self,
        name: &AgentName,
        now_ms: i64,
    ) -> Result<Vec<IssuedCert>, StoreError> {
        let mut revoked = Vec::new();
        for kv in self.certs.iter() {
            let (key, value) = kv?;
            let mut cert: IssuedCert = decode_json(&format!("cert {key:?}"), &value)?;
            if &cert.name == name && cert.revoked_ms.is_none() {
                cert.revoked_ms = Some(now_ms);
                self.certs.insert(
                    key,
                    serde_json::to_vec(&cert).expect("certificate records serialize"),
                )?;
                revoked.push(cert);
            }
        }
        Ok(revoked)
    }
}
