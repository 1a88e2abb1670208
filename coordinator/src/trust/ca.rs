//! The coordinator's certificate authority: made once by `ca init`, it
//! signs the server certificate and every agent's client certificate, and
//! its join key signs the one-time tokens agents enrol with.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gantry_shared::{
    tls::{files, fingerprint, hex, write_private, JoinToken},
    AgentName, EnvName,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::{hmac, rand::SecureRandom};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::identity::identity_uri;

/// How long the CA is valid: long enough that nobody rotates it by surprise.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// The server certificate, re-made by `ca renew-server` when hosts change.
const SERVER_VALIDITY: time::Duration = time::Duration::days(825);
/// An agent's certificate: a year; the agent joins again to renew it.
const AGENT_VALIDITY: time::Duration = time::Duration::days(365);
/// Clock skew tolerated between the coordinator and a new agent's host.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// What went wrong with the CA or a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// There is no CA yet.
    #[error("no CA in {0}: run `gantry-coordinator ca init --config FILE` first (or set plaintext = true to serve on loopback without TLS)")]
    Missing(PathBuf),
    /// `ca init` would overwrite a CA.
    #[error("a CA exists in {0} already; agents trust it, so it is kept (remove the directory to start over, and enrol every agent again)")]
    Exists(PathBuf),
    /// Certificate or key material is unusable.
    #[error("{0}")]
    Crypto(String),
}

fn crypto(what: &str) -> impl Fn(rcgen::Error) -> TrustError + '_ {
    move |e| TrustError::Crypto(format!("{what}: {e}"))
}

fn read(dir: &Path, name: &str) -> Result<String, TrustError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| TrustError::Io { path, source })
}

fn write(dir: &Path, name: &str, contents: &str, private: bool) -> Result<(), TrustError> {
    let path = dir.join(name);
    let written = match private {
        true => write_private(&path, contents.as_bytes()),
        false => std::fs::write(&path, contents),
    };
    written.map_err(|source| TrustError::Io { path, source })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes
}

/// A positive random 128-bit serial number.
fn serial() -> SerialNumber {
    let mut bytes = random_bytes::<16>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A new random API token for an operator: 32 bytes, hex.
pub fn new_api_token() -> String {
    format!("gat_{}", hex(&random_bytes::<32>()))
}

/// What `ca init` made.
#[derive(Debug)]
pub struct Initialised {
    /// SHA-256 of the CA certificate.
    pub ca_fingerprint: String,
    /// The names the server certificate is valid for.
    pub hosts: Vec<String>,
}

/// Creates the CA, the server certificate for `hosts` and the join key in
/// `dir`. Refuses to replace an existing CA.
pub fn init(dir: &Path, hosts: &[String]) -> Result<Initialised, TrustError> {
    if dir.join(files::CA_CERT).exists() {
        return Err(TrustError::Exists(dir.to_owned()));
    }
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|source| TrustError::Io {
            path: dir.to_owned(),
            source,
        })?;
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().map_err(crypto("CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "Gantry CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - BACKDATE;
    ca.not_after = now + CA_VALIDITY;
    ca.serial_number = Some(serial());
    let ca_cert = ca.self_signed(&ca_key).map_err(crypto("CA certificate"))?;
    let issuer = Issuer::new(ca, ca_key);

    write(dir, files::CA_KEY, &issuer.key().serialize_pem(), true)?;
    write(dir, files::JOIN_KEY, &hex(&random_bytes::<32>()), true)?;
    let hosts = issue_server(dir, &issuer, hosts)?;
    write(dir, files::CA_CERT, &ca_cert.pem(), false)?;
    Ok(Initialised {
        ca_fingerprint: fingerprint(ca_cert.der()),
        hosts,
    })
}

/// Makes a new server certificate for `hosts` (plus localhost and
/// loopback) signed by the existing CA in `dir`: when it nears its expiry,
/// or the coordinator gets a new name. Agents keep their certificates.
pub fn renew_server(dir: &Path, hosts: &[String]) -> Result<Initialised, TrustError> {
    let authority = Authority::load(dir)?;
    let hosts = issue_server(dir, &authority.issuer, hosts)?;
    Ok(Initialised {
        ca_fingerprint: authority.ca_fingerprint(),
        hosts,
    })
}

/// Writes a server certificate and key for `hosts` into `dir`; returns
/// the names it is valid for.
fn issue_server(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    hosts: &[String],
) -> Result<Vec<String>, TrustError> {
    let now = time::OffsetDateTime::now_utc();
    let mut hosts: Vec<String> = hosts.to_vec();
    for local in ["localhost", "127.0.0.1", "::1"] {
        if !hosts.iter().any(|h| h == local) {
            hosts.push(local.into());
        }
    }
    let server_key = KeyPair::generate().map_err(crypto("server key"))?;
    let mut server = CertificateParams::new(hosts.clone()).map_err(crypto("server names"))?;
    server.distinguished_name = rcgen::DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, "gantry-coordinator");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.not_before = now - BACKDATE;
    server.not_after = now + SERVER_VALIDITY;
    server.serial_number = Some(serial());
    server.use_authority_key_identifier_extension = true;
    let server_cert = server
        .signed_by(&server_key, issuer)
        .map_err(crypto("server certificate"))?;
    write(dir, files::SERVER_KEY, &server_key.serialize_pem(), true)?;
    write(dir, files::SERVER_CERT, &server_cert.pem(), false)?;
    Ok(hosts)
}
/// The loaded CA: signs agent certificates and join tokens.
pub struct Authority {
    dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    join_key: hmac::Key,
}

impl Authority {
    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TrustError> {
        if !dir.join(files::CA_CERT).exists() {
            return Err(TrustError::Missing(dir.to_owned()));
        }
        let ca_pem = read(dir, files::CA_CERT)?;
        let ca_key = KeyPair::from_pem(&read(dir, files::CA_KEY)?).map_err(crypto("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(crypto("CA certificate"))?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| TrustError::Crypto(format!("CA certificate: {e}")))?;
        let join_key = read(dir, files::JOIN_KEY)?;
        Ok(Self {
            dir: dir.to_owned(),
            ca_pem,
            ca_der,
            issuer,
            join_key: hmac::Key::new(hmac::HMAC_SHA256, join_key.trim().as_bytes()),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the CA certificate.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// The TLS server configuration: the server certificate (with the CA
    /// behind it, so joining agents can pin it), and client certificates
    /// checked against the CA when presented. They are optional at this
    /// layer because operators and joining agents have none; the agent
    /// stream requires one.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TrustError> {
        let tls = |e: &dyn std::fmt::Display| TrustError::Crypto(format!("TLS setup: {e}"));
        let server_pem = read(&self.dir, files::SERVER_CERT)?;
        let server = CertificateDer::from_pem_slice(server_pem.as_bytes()).map_err(|e| tls(&e))?;
        let key = PrivateKeyDer::from_pem_slice(read(&self.dir, files::SERVER_KEY)?.as_bytes())
            .map_err(|e| tls(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).map_err(|e| tls(&e))?;
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(clients)
            .with_single_cert(vec![server, self.ca_der.clone()], key)
            .map_err(|e| tls(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A one-time token for agent `name` of `env`, valid for `ttl`.
    pub fn enroll(&self, env: EnvName, name: AgentName, ttl: Duration) -> JoinToken {
        let expires_at = (gantry_shared::now_ms() / 1000).max(0) as u64 + ttl.as_secs();
        let mut token = JoinToken {
            env,
            name,
            expires_at,
            nonce: hex(&random_bytes::<16>()),
            ca_fingerprint: self.ca_fingerprint(),
            mac: String::new(),
        };
        token.mac = hex(hmac::sign(&self.join_key, token.signed_part().as_bytes()).as_ref());
        token
    }

    /// Checks the signature and expiry of `token` (not whether it was used).
    pub fn check_token(&self, token: &JoinToken, now_secs: u64) -> Result<(), String> {
        let mac = token
            .mac
            .as_bytes()
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .filter(|p| p.len() == 2)
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| "the join token's signature is not hex".to_owned())?;
        hmac::verify(&self.join_key, token.signed_part().as_bytes(), &mac)
            .map_err(|_| "the join token was not made by this coordinator".to_owned())?;
        if now_secs > token.expires_at {
            return Err(format!(
                "the join token for {} expired {}s ago; make a new one with `gantry-coordinator agent enroll`",
                token.name,
                now_secs - token.expires_at
            ));
        }
        Ok(())
    }

    /// Signs the public key of `csr_pem` into a client certificate for
    /// `name` bound to `env`, ignoring the subject the request asks for.
    /// Returns the certificate (PEM) and its serial (hex).
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        env: &EnvName,
        name: &AgentName,
    ) -> Result<(String, String), TrustError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(crypto("the certificate request"))?;
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, env.as_str());
        let uri = identity_uri(env, name);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(crypto("identity"))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - BACKDATE;
        params.not_after = now + AGENT_VALIDITY;
        let serial = serial();
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(crypto("agent certificate"))?;
        Ok((cert.pem(), serial_hex))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["coordinator.example".into()]).unwrap();
        let authority = Authority::load(dir.path()).unwrap();
        (dir, authority)
    }

    #[test]
    fn a_token_is_good_until_it_expires_and_only_as_made() {
        let (_dir, ca) = authority();
        let env = EnvName::new("prod").unwrap();
        let token = ca.enroll(
            env,
            AgentName::new("prod-1").unwrap(),
            Duration::from_secs(60),
        );
        ca.check_token(&token, token.expires_at).unwrap();
        let late = ca.check_token(&token, token.expires_at + 5).unwrap_err();
        assert!(late.contains("expired 5s ago"), "{late}");
        let mut moved = token.clone();
        moved.env = EnvName::new("dev").unwrap();
        let forged = ca.check_token(&moved, token.expires_at).unwrap_err();
        assert!(forged.contains("not made by this coordinator"), "{forged}");
    }

    #[test]
    fn the_certificate_names_what_the_token_names_not_what_the_request_asks() {
        let (dir, ca) = authority();
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["prod-9".to_owned()]).unwrap();
        asked.distinguished_name.push(DnType::CommonName, "prod-9");
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let env = EnvName::new("dev").unwrap();
        let name = AgentName::new("dev-1").unwrap();
        let (pem, serial) = ca.sign_agent(&csr, &env, &name).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let who = crate::trust::identity(&der).unwrap();
        assert_eq!((who.env, who.name, who.serial), (env, name, serial));
        assert!(matches!(init(dir.path(), &[]), Err(TrustError::Exists(_))));
        let renewed = renew_server(dir.path(), &["new.example".into()]).unwrap();
        assert_eq!(renewed.ca_fingerprint, ca.ca_fingerprint(), "the CA stays");
        assert_eq!(renewed.hosts[0], "new.example");
        Authority::load(dir.path())
            .unwrap()
            .server_config()
            .unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(files::CA_KEY))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
