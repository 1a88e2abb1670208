//! Agents' enrolment and revocation, and the check of an agent's
//! certificate against what it claims when it registers.

use gantry_shared::{now_ms, proto, tls::JoinToken, AgentName};
use tracing::info;

use super::Core;
use crate::{
    error::Error,
    job::AgentRecord,
    scheduler::Command,
    store::{IssuedCert, Refusal},
    trust::AgentIdentity,
};

/// Largest certificate request accepted: a P-256 or RSA-4096 request is
/// well under 4 KiB.
const MAX_CSR_BYTES: usize = 16 * 1024;

impl Core {
    /// Redeems a join token: signs the agent's certificate request for the
    /// name and environment the token was made for.
    pub async fn join(&self, token: &str, csr_pem: &str) -> Result<proto::JoinResponse, Error> {
        let authority = self.authority.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this coordinator serves plaintext on loopback; agents connect without joining"
                    .into(),
            )
        })?;
        let token = JoinToken::parse(token).map_err(|e| Error::Unauthenticated(e.to_string()))?;
        let now_secs = (now_ms() / 1000).max(0) as u64;
        authority
            .check_token(&token, now_secs)
            .map_err(Error::Unauthenticated)?;
        self.environment_config(&token.env)?;
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the certificate request is over {MAX_CSR_BYTES} bytes"
            )));
        }
        let (certificate_pem, serial) = authority
            .sign_agent(csr_pem, &token.env, &token.name)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // A name belongs to one environment; enrolling it again in the same
        // one replaces its earlier certificates (a reinstalled host). The
        // store checks and records in one step, so two environments racing
        // for one name never both win.
        let cert = IssuedCert {
            serial: serial.clone(),
            name: token.name.clone(),
            env: token.env.clone(),
            issued_ms: now_ms(),
            revoked_ms: None,
        };
        // The certificate is handed out only once its record is durable.
        let (outcome, durable) = self.store.enrol(&cert, &token.nonce).await?;
        durable.await?;
        match outcome {
            Ok(replaced) if !replaced.is_empty() => {
                self.scheduler
                    .tell(Command::CutOff(token.name.clone()))
                    .await?
            }
            Ok(_) => {}
            Err(Refusal::EnrolledElsewhere(other)) => {
                return Err(Error::FailedPrecondition(format!(
                    "agent {} is enrolled in {other} already; revoke it there first (gantry agent revoke {})",
                    token.name, token.name
                )))
            }
            Err(Refusal::TokenUsed) => {
                return Err(Error::Unauthenticated(format!(
                    "the join token for {} was used already; make a new one with `gantry-coordinator agent enroll`",
                    token.name
                )))
            }
        }
        info!(agent = %token.name, env = %token.env, serial = %serial, "agent enrolled");
        Ok(proto::JoinResponse {
            certificate_pem,
            ca_pem: authority.ca_pem().to_owned(),
            name: token.name.to_string(),
            env: token.env.to_string(),
        })
    }

    /// Checks that a registering agent is who its certificate says: the
    /// certificate was issued here, is not revoked, and names the same
    /// agent and environment as the registration.
    pub async fn check_agent(
        &self,
        identity: &AgentIdentity,
        record: &AgentRecord,
    ) -> Result<(), Error> {
        let issued = self.store.cert(&identity.serial).await?.ok_or_else(|| {
            Error::PermissionDenied(format!(
                "certificate {} was not issued by this coordinator; join again",
                identity.serial
            ))
        })?;
        if let Some(at) = issued.revoked_ms {
            return Err(Error::PermissionDenied(format!(
                "the certificate of agent {} was revoked (at {at} ms); enrol it again to reconnect",
                identity.name
            )));
        }
        if record.env != identity.env || record.name != identity.name {
            return Err(Error::PermissionDenied(format!(
                "agent certificate is for {}/{}, but the agent registered as {}/{}; \
                 an agent serves only the environment it was enrolled in",
                identity.env, identity.name, record.env, record.name
            )));
        }
        Ok(())
    }

    /// Revokes every certificate of agent `name` and closes its stream.
    pub async fn revoke(&self, name: &AgentName) -> Result<Vec<IssuedCert>, Error> {
        self.scheduler
            .ask(|reply| Command::Revoke(name.clone(), reply))
            .await
    }
}
