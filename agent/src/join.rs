//! `gantry-agent join`: enrol this host with the coordinator. A key pair is
//! made here and never leaves the host; the coordinator signs a certificate
//! for the name and environment its one-time token names.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gantry_shared::{
    leader::{is_standby_refusal, leader_of},
    proto,
    tls::{self, files, JoinToken},
    url::{CoordinatorList, ListError, Round},
    AgentName, EnvName,
};
use tonic::transport::Endpoint;

/// Where `join` keeps the certificate by default.
pub const DEFAULT_TLS_DIR: &str = "/etc/gantry/tls";

/// What `join` obtained.
#[derive(Debug)]
pub struct Joined {
    /// The agent's name, from the token.
    pub name: AgentName,
    /// Its environment, from the token.
    pub env: EnvName,
    /// Where the key and certificates were written.
    pub dir: PathBuf,
}

/// Redeems `token` at `coordinator` (an https:// URL, or several separated
/// by commas: each is tried until one enrols the agent, a standby's refusal
/// leading to the leader it names) and writes the key, the certificate and
/// the CA into `dir` (key readable by its owner only).
pub async fn join(coordinator: &str, token: &str, dir: &Path) -> anyhow::Result<Joined> {
    tls::install_crypto_provider();
    let parsed = JoinToken::parse(token)?;
    let mut coordinators = CoordinatorList::parse(coordinator).map_err(|e| match e {
        ListError::Url(_) => {
            anyhow::anyhow!("--coordinator must be an https:// URL, not {coordinator:?}")
        }
        list => anyhow::Error::new(list).context("--coordinator"),
    })?;
    for url in coordinators.urls() {
        tls::host_port(url)
            .with_context(|| format!("--coordinator must be an https:// URL, not {url:?}"))?;
    }
    let key = rcgen::KeyPair::generate().context("cannot make a key pair")?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .context("cannot make a certificate request")?;
    let request = proto::JoinRequest {
        token: token.trim().to_owned(),
        csr_pem: csr,
    };
    let mut round = Round::new(coordinators.len(), 0);
    let mut leader = None;
    let mut failures = Vec::new();
    let answer = loop {
        let Some(index) = round.next(leader.take()) else {
            anyhow::bail!(
                "no coordinator of {coordinators} enrolled this agent: {}",
                failures.join("; ")
            );
        };
        let url = coordinators.url(index).to_owned();
        match join_at(&url, &parsed, request.clone()).await {
            Ok(answer) => break answer,
            Err(Attempt::Refused(status)) if is_standby_refusal(&status) => {
                leader = leader_of(&status).and_then(|named| coordinators.learn(&named));
                failures.push(format!("{url}: {}", status.message()));
            }
            Err(Attempt::Refused(status)) => anyhow::bail!(
                "the coordinator refused to enrol this agent: {}",
                status.message()
            ),
            // One URL: its own error, as it always read.
            Err(Attempt::Unreachable(e)) if coordinators.len() == 1 => return Err(e),
            Err(Attempt::Unreachable(e)) => failures.push(format!("{url}: {e:#}")),
        }
    };

    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, contents: &str, private: bool| {
        let path = dir.join(name);
        let done = match private {
            true => tls::write_private(&path, contents.as_bytes()),
            false => std::fs::write(&path, contents),
        };
        done.with_context(|| format!("cannot write {}", path.display()))
    };
    write(files::AGENT_KEY, &key.serialize_pem(), true)?;
    write(files::AGENT_CERT, &answer.certificate_pem, false)?;
    write(files::CA_CERT, &answer.ca_pem, false)?;
    Ok(Joined {
        name: AgentName::new(answer.name)?,
        env: EnvName::new(answer.env)?,
        dir: dir.to_owned(),
    })
}

/// Why enrolling at one coordinator failed.
enum Attempt {
    /// It answered no (a standby's refusal, or a bad token).
    Refused(tonic::Status),
    /// It could not be asked: not reachable, or its CA is not the token's.
    Unreachable(anyhow::Error),
}

/// Asks the coordinator at `url` to sign the request.
async fn join_at(
    url: &str,
    token: &JoinToken,
    request: proto::JoinRequest,
) -> Result<proto::JoinResponse, Attempt> {
    let (host, port) = tls::host_port(url).expect("checked by join");
    // The token pins the CA: learn it from the server, keep it only if
    // its fingerprint matches, then speak verified TLS with it.
    let ca = tls::fetch_ca(&host, port, &token.ca_fingerprint)
        .await
        .map_err(|e| Attempt::Unreachable(e.into()))?;
    let ca_pem = pem("CERTIFICATE", &ca);
    let channel = endpoint(url, &ca_pem, None)
        .map_err(Attempt::Unreachable)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}"))
        .map_err(Attempt::Unreachable)?;
    let answer = proto::agent_service_client::AgentServiceClient::new(channel)
        .join(request)
        .await
        .map_err(Attempt::Refused)?;
    Ok(answer.into_inner())
}

/// An endpoint for `url`: over TLS trusting `ca_pem`, presenting
/// `identity` (certificate and key PEM) when given.
pub fn endpoint(
    url: &str,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid coordinator URL {url:?}"))?;
    Ok(tls::with_tls(endpoint, ca_pem, identity)?)
}

/// The endpoint an enrolled agent dials `url` with: plain for http://,
/// and for https:// TLS with the certificate `join` wrote into `dir`.
pub fn agent_endpoint(url: &str, dir: Option<&Path>) -> anyhow::Result<Endpoint> {
    if !url.starts_with("https://") {
        return Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("invalid coordinator URL {url:?}"));
    }
    let dir = dir.unwrap_or(Path::new(DEFAULT_TLS_DIR));
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; enrol this agent first with `gantry-agent join`",
                path.display()
            )
        })
    };
    let identity = (read(files::AGENT_CERT)?, read(files::AGENT_KEY)?);
    endpoint(url, &read(files::CA_CERT)?, Some(identity))
}

/// DER as PEM.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
