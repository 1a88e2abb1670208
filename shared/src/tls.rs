//! TLS pieces shared by the coordinator, the agent and the CLI: the one
//! crypto provider (ring), certificate fingerprints, the join token's
//! format, and how an agent learns the coordinator's CA before it has any
//! certificate.

use std::{fmt, sync::Arc};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{AgentName, EnvName};

/// File names inside a TLS directory.
pub mod files {
    /// The CA certificate (coordinator and agent).
    pub const CA_CERT: &str = "ca.pem";
    /// The CA's private key (coordinator only).
    pub const CA_KEY: &str = "ca.key";
    /// The coordinator's server certificate.
    pub const SERVER_CERT: &str = "server.pem";
    /// The coordinator's server key.
    pub const SERVER_KEY: &str = "server.key";
    /// The key that signs join tokens (coordinator only).
    pub const JOIN_KEY: &str = "join.key";
    /// The agent's client certificate.
    pub const AGENT_CERT: &str = "agent.pem";
    /// The agent's private key.
    pub const AGENT_KEY: &str = "agent.key";
}

/// Installs ring as the process's TLS crypto provider; harmless when one
/// is installed already (tests call it from every entry point).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// SHA-256 of `der`, lowercase hex: how a token pins the CA.
pub fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to `path` readable by its owner only (0600), replacing
/// what was there: keys and tokens must not be readable by other users.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A join token could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed join token: {0}; copy it whole from `gantry-coordinator agent enroll`")]
pub struct TokenError(&'static str);

/// A one-time join token: which agent may enrol where, until when, signed
/// by the coordinator's join key, with the CA's fingerprint so the agent
/// can trust the coordinator before it holds any certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The environment the certificate will be bound to.
    pub env: EnvName,
    /// The agent's name.
    pub name: AgentName,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
    /// Random, hex; a token is used once.
    pub nonce: String,
    /// SHA-256 of the CA certificate (DER), hex.
    pub ca_fingerprint: String,
    /// HMAC-SHA256 of [`JoinToken::signed_part`] with the join key, hex.
    pub mac: String,
}

const TOKEN_PREFIX: &str = "gantry-join-1";

impl JoinToken {
    /// What the MAC covers: every field but the MAC.
    pub fn signed_part(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}.{}.{}",
            self.env, self.name, self.expires_at, self.nonce, self.ca_fingerprint
        )
    }

    /// Reads a token as printed.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, env, name, expires, nonce, ca, mac] = parts[..] else {
            return Err(TokenError("it must have 7 parts separated by '.'"));
        };
        if prefix != TOKEN_PREFIX {
            return Err(TokenError("it does not start with gantry-join-1"));
        }
        let hex_of =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_of(nonce, 32) || !hex_of(ca, 64) || !hex_of(mac, 64) {
            return Err(TokenError("its nonce, fingerprint or signature is not hex"));
        }
        Ok(Self {
            env: EnvName::new(env).map_err(|_| TokenError("its environment is not a name"))?,
            name: AgentName::new(name).map_err(|_| TokenError("its agent name is not a name"))?,
            expires_at: expires
                .parse()
                .map_err(|_| TokenError("its expiry is not a number"))?,
            nonce: nonce.to_owned(),
            ca_fingerprint: ca.to_ascii_lowercase(),
            mac: mac.to_ascii_lowercase(),
        })
    }
}

/// Never the nonce or the signature: together they are the credential.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("env", &self.env)
            .field("name", &self.name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.signed_part(), self.mac)
    }
}

/// Accepts any server certificate, checking only that the server holds
/// its key: the session is encrypted, but who the server is stays
/// unproven. Used to read the chain a coordinator presents (which the
/// caller then checks against a pinned fingerprint before it trusts
/// anything), and for a database reached with `sslmode=prefer` or
/// `require` without a CA, as libpq does.
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why the coordinator's CA could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchCaError {
    /// The coordinator could not be reached or spoke no TLS.
    #[error("cannot reach {addr} over TLS: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server presented no certificate matching the token's fingerprint.
    #[error("the server at {0} does not present the CA the join token names; is this the right coordinator?")]
    WrongCa(String),
}

/// Connects to `host:port`, reads the certificate chain the server
/// presents, and returns the certificate whose SHA-256 is `fingerprint`:
/// the coordinator's CA, now trusted because the token vouches for it.
pub async fn fetch_ca(
    host: &str,
    port: u16,
    fingerprint_hex: &str,
) -> Result<CertificateDer<'static>, FetchCaError> {
    let addr = format!("{host}:{port}");
    let connect_err = |source| FetchCaError::Connect {
        addr: addr.clone(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| connect_err(std::io::Error::other(e)))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name =
        ServerName::try_from(host.to_owned()).map_err(|e| connect_err(std::io::Error::other(e)))?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
    .map_err(connect_err)?;
    let tls = connector.connect(name, tcp).await.map_err(connect_err)?;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .find(|cert| fingerprint(cert) == fingerprint_hex)
        .map(|cert| cert.clone().into_owned())
        .ok_or(FetchCaError::WrongCa(addr.clone()))
}

/// `endpoint` over TLS, trusting only the CA `ca_pem`, and presenting
/// `identity` (certificate and key, PEM) when given: how agents, the CLI
/// and tests all dial a coordinator.
pub fn with_tls(
    endpoint: tonic::transport::Endpoint,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    endpoint.tls_config(tls)
}

/// Splits an `https://host:port` URL into host and port (default 7700);
/// `None` for anything [`crate::url::CoordinatorUrl`] refuses or plain http.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let url = crate::url::CoordinatorUrl::parse(url).ok()?;
    url.tls.then_some((url.host, url.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            env: EnvName::new("prod").unwrap(),
            name: AgentName::new("prod-1").unwrap(),
            expires_at: 1_900_000_000,
            nonce: "0".repeat(32),
            ca_fingerprint: "a".repeat(64),
            mac: "b".repeat(64),
        }
    }

    #[test]
    fn a_token_reads_back_as_printed() {
        let t = token();
        assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn damaged_tokens_are_refused_with_a_reason() {
        let text = token().to_string();
        let short = &text[..text.len() - 1];
        assert!(JoinToken::parse(short)
            .unwrap_err()
            .to_string()
            .contains("hex"));
        assert!(JoinToken::parse("x.y").is_err());
        let other_env = text.replace(".prod.", ".Prod.");
        assert!(JoinToken::parse(&other_env).is_err());
    }

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            host_port("https://c.example:9000"),
            Some(("c.example".into(), 9000))
        );
        assert_eq!(
            host_port("https://c.example"),
            Some(("c.example".into(), 7700))
        );
        assert_eq!(host_port("https://[::1]:7700/"), Some(("::1".into(), 7700)));
        assert_eq!(host_port("http://c.example"), None);
        assert_eq!(host_port("https://"), None);
        assert_eq!(host_port("https://:7700"), None);
        assert_eq!(host_port("https://[::1]x"), None);
        assert_eq!(host_port("https://c.example:7700@evil.example"), None);
    }
}
