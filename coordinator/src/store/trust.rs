//! The trust records: the audit trail, the agent certificates issued (and
//! revoked), and the join tokens already redeemed.

use gantry_shared::{AgentName, EnvName};
use serde::{Deserialize, Serialize};

use super::{decode_json, Store, StoreError};
use crate::audit::AuditEntry;

/// An agent certificate the coordinator signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Its serial number, hex.
    pub serial: String,
    /// The agent it names.
    pub name: AgentName,
    /// The environment it binds the agent to.
    pub env: EnvName,
    /// When it was issued, ms since the epoch.
    pub issued_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

impl Store {
    /// Appends `entry` to the audit trail, numbering it; returns its seq.
    pub fn append_audit(&self, mut entry: AuditEntry) -> Result<u64, StoreError> {
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
    pub fn audit(
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

    /// Marks the join token `nonce` used; false when it was used before.
    pub fn use_join_token(&self, nonce: &str, now_ms: i64) -> Result<bool, StoreError> {
        let previous = self.used_tokens.compare_and_swap(
            nonce.as_bytes(),
            None as Option<&[u8]>,
            Some(&now_ms.to_be_bytes()[..]),
        )?;
        self.used_tokens.flush()?;
        Ok(previous.is_ok())
    }

    /// Records a certificate issued.
    pub fn put_cert(&self, cert: &IssuedCert) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(cert).expect("certificate records serialize");
        self.certs.insert(cert.serial.as_bytes(), bytes)?;
        self.certs.flush()?;
        Ok(())
    }

    /// The certificate with `serial`, if this coordinator issued it.
    pub fn cert(&self, serial: &str) -> Result<Option<IssuedCert>, StoreError> {
        self.certs
            .get(serial.as_bytes())?
            .map(|v| decode_json(&format!("cert {serial}"), &v))
            .transpose()
    }

    /// Every certificate issued to `name`.
    pub fn certs_of(&self, name: &AgentName) -> Result<Vec<IssuedCert>, StoreError> {
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

    /// Revokes every unrevoked certificate of `name`; returns them.
    pub fn revoke_certs(
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
        self.certs.flush()?;
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_trail_reads_in_pages_newest_first_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for n in 0..1_201 {
            let entry = AuditEntry::new("who", "peer", "deploy", "target", true, n.to_string());
            store.append_audit(entry).unwrap();
        }
        let mut seen = Vec::new();
        let mut before = None;
        let mut pages = Vec::new();
        loop {
            let (page, more) = store.audit(before, 500).unwrap();
            pages.push(page.len());
            seen.extend(page.iter().map(|e| e.seq));
            if !more {
                break;
            }
            before = page.last().map(|e| e.seq);
        }
        assert_eq!(pages, [500, 500, 201]);
        assert_eq!(seen, (1..=1_201).rev().collect::<Vec<u64>>());
        // A page that ends exactly at the first entry says there is no more.
        let (last, more) = store.audit(Some(501), 500).unwrap();
        assert_eq!((last.len(), more), (500, false));
    }
}
