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
            protocol: gantry_shared::messages::PROTOCOL,
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

/// An agent speaking the protocol by hand over a held stream: what a
/// modified agent could send, message by message.
pub struct RawAgent {
    tx: tokio::sync::mpsc::Sender<proto::AgentMessage>,
    inbound: tonic::Streaming<proto::CoordinatorMessage>,
}

impl RawAgent {
    /// Attaches over `endpoint` and registers as `name` of `env`, holding
    /// nothing; returns once the coordinator answered `Registered`.
    pub async fn attach(
        endpoint: tonic::transport::Endpoint,
        env: &str,
        name: &str,
    ) -> anyhow::Result<Self> {
        let channel = endpoint.connect().await?;
        let mut client = proto::agent_service_client::AgentServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // The coordinator answers the call only once Register has come.
        let register = proto::Register {
            name: name.into(),
            env: env.into(),
            capacity: 1,
            protocol: gantry_shared::messages::PROTOCOL,
            ..Default::default()
        };
        let body = proto::agent_message::Body::Register(register);
        tx.send(proto::AgentMessage { body: Some(body) }).await?;
        let mut agent = Self {
            tx,
            inbound: client
                .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner(),
        };
        let first = agent.next().await?;
        anyhow::ensure!(
            matches!(first, proto::coordinator_message::Body::Registered(_)),
            "the coordinator answered {first:?} to Register"
        );
        Ok(agent)
    }

    /// Sends one message.
    pub async fn send(&mut self, body: proto::agent_message::Body) -> anyhow::Result<()> {
        let msg = proto::AgentMessage { body: Some(body) };
        self.tx
            .send(msg)
            .await
            .map_err(|_| anyhow::anyhow!("the stream is closed"))
    }

    /// Sends a run of `job`'s log, ending the agent's part if `finished`.
    pub async fn lines(
        &mut self,
        job: u64,
        lines: Vec<proto::LogLine>,
        finished: Option<proto::JobFinished>,
    ) -> anyhow::Result<()> {
        let event = proto::JobEvent {
            job_id: job,
            lines: Some(lines.into()),
            finished,
        };
        self.send(proto::agent_message::Body::JobEvent(event)).await
    }

    /// The next message the coordinator sends, within 30 s.
    pub async fn next(&mut self) -> anyhow::Result<proto::coordinator_message::Body> {
        let msg = tokio::time::timeout(Duration::from_secs(30), self.inbound.message())
            .await
            .map_err(|_| anyhow::anyhow!("nothing from the coordinator within 30 s"))??
            .ok_or_else(|| anyhow::anyhow!("the coordinator closed the stream"))?;
        msg.body
            .ok_or_else(|| anyhow::anyhow!("an empty message from the coordinator"))
    }

    /// Reads until the coordinator acknowledges `job`'s lines up to `seq`.
    pub async fn acked(&mut self, job: u64, seq: u64) -> anyhow::Result<()> {
        loop {
            if let proto::coordinator_message::Body::Ack(ack) = self.next().await? {
                if ack.job_id == job && ack.seq >= seq {
                    return Ok(());
                }
            }
        }
    }
}
