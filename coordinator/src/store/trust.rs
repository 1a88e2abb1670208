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

/// Why an enrolment was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The name holds an unrevoked certificate of this other environment.
    EnrolledElsewhere(EnvName),
    /// The join token was redeemed before.
    TokenUsed,
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

    /// Records `cert`, issued for a join token with `nonce`, as one step
    /// with the checks that allow it: the name holds no unrevoked
    /// certificate of another environment, and the token was not redeemed
    /// before. Then the token is marked used, the name's earlier
    /// certificates (of the same environment: a reinstalled host) are
    /// revoked and returned, and `cert` is stored. Concurrent enrolments of
    /// one name in two environments cannot both pass: the check and the
    /// insert run under one lock, which every change to the certificates
    /// takes.
    pub fn enrol(
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
        self.used_tokens.flush()?;
        let replaced = self.revoke_unlocked(&cert.name, cert.issued_ms)?;
        let bytes = serde_json::to_vec(cert).expect("certificate records serialize");
        self.certs.insert(cert.serial.as_bytes(), bytes)?;
        self.certs.flush()?;
        Ok(Ok(replaced))
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
        let _one_step = self.cert_lock.lock().expect("certificate lock");
        self.revoke_unlocked(name, now_ms)
    }

    /// As [`Store::revoke_certs`], for a caller holding the certificate lock.
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
