//! Helpers of the trust tests: an agent's registration by hand, client
//! certificates of any CA and validity, and the audit trail.

use std::time::Duration;

use gantry_shared::proto;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};

use crate::{eventually, Client};

/// Registers as `name` of `env` over `endpoint`; the coordinator's answer.
pub async fn register(
    endpoint: tonic::transport::Endpoint,
    env: &str,
    name: &str,
) -> Result<proto::CoordinatorMessage, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = proto::agent_service_client::AgentServiceClient::new(channel);
    let register = proto::AgentMessage {
        body: Some(proto::agent_message::Body::Register(proto::Register {
            name: name.into(),
            env: env.into(),
            capacity: 1,
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(register).await.map_err(|e| e.to_string())?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut inbound = client
        .attach(stream)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err("closed".into()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// A client certificate for `uri`, valid from `from` to `until`, signed by
/// `issuer`: (certificate PEM, key PEM).
pub fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    uri: &str,
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = from;
    params.not_after = until;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The newest 1,000 entries of the audit trail as seen by `client`, read
/// a page at a time.
pub async fn audit(client: &mut Client) -> anyhow::Result<Vec<proto::AuditEntry>> {
    let mut entries = Vec::new();
    let mut before_seq = 0;
    while entries.len() < 1000 {
        let request = proto::ListAuditRequest {
            limit: 1000 - entries.len() as u32,
            before_seq,
        };
        let page = client.list_audit(request).await?.into_inner();
        entries.extend(page.entries);
        before_seq = page.next_before_seq;
        if before_seq == 0 {
            break;
        }
    }
    Ok(entries)
}

/// Waits for an audit entry matching `found`.
pub async fn audited(
    client: &Client,
    what: &str,
    found: impl Fn(&proto::AuditEntry) -> bool,
) -> anyhow::Result<proto::AuditEntry> {
    eventually(what, Duration::from_secs(30), || {
        let mut client = client.clone();
        let found = &found;
        async move { Ok(audit(&mut client).await?.into_iter().find(|e| found(e))) }
    })
    .await
}
