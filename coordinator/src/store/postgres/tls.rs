//! TLS to the database, with rustls (ring): the connector the Postgres
//! driver calls once the server agreed to TLS, checking the server's
//! certificate as the URL's `sslmode` asks, and errors that say what to
//! fix when the check fails.

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use gantry_shared::config::{
    pgurl::{split_sslmode, SslMode},
    store::read_ca,
};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::{
    config::Host,
    tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream},
    Config,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::store::StoreError;

/// Why a TLS connection to the database failed, in words that say what
/// to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct TlsFailure(pub(super) String);

impl From<TlsFailure> for StoreError {
    fn from(e: TlsFailure) -> Self {
        StoreError::Engine(Box::new(e))
    }
}

/// The driver's settings and the TLS connector for `url` (a
/// `postgres://` URL or `key=value` string, its `sslmode` as libpq reads
/// it), as the user with `password` if given, trusting the CA in `ca` if
/// given. Without an `sslmode`, a store with a CA is `verify-full`, one
/// without is `prefer`; a Unix-socket host never uses TLS.
pub(super) fn configure(
    url: &str,
    password: Option<&str>,
    ca: Option<&Path>,
) -> Result<(Config, Tls), StoreError> {
    let (url, mode) = split_sslmode(url).map_err(|m| TlsFailure(format!("store: {m}")))?;
    let mut config: Config = url.parse()?;
    if let Some(password) = password {
        config.password(password);
    }
    let mode = mode.unwrap_or(if ca.is_some() {
        SslMode::VerifyFull
    } else {
        SslMode::Prefer
    });
    let tls = Tls::new(mode, ca)?;
    tls.apply(&mut config);
    Ok((config, tls))
}

/// Makes the TLS session of each connection to the database.
#[derive(Clone)]
pub(super) struct Tls {
    config: Arc<ClientConfig>,
    mode: SslMode,
    /// The CA file, for messages.
    ca: Option<PathBuf>,
}

impl Tls {
    /// A connector that checks what `mode` asks: the certificate signed by
    /// the CA in `ca` whenever `ca` is given (verify-full: and naming the
    /// host), else only that the session is encrypted.
    pub(super) fn new(mode: SslMode, ca: Option<&Path>) -> Result<Tls, TlsFailure> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match ca {
            None if mode.verifies() => {
                return Err(TlsFailure(format!(
                    "sslmode={mode} checks the database's certificate against a CA: \
                     set store_ca to the PEM file of the CA that signed it"
                )))
            }
            None => Arc::new(gantry_shared::tls::AnyCertificate(provider.clone())),
            Some(ca) => {
                let roots = read_ca(ca).map_err(|m| TlsFailure(format!("store_ca: {m}")))?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsFailure(format!("store_ca: {}: {e}", ca.display())))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFailure(format!("cannot set up TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Tls {
            config: Arc::new(config),
            mode,
            ca: ca.map(Path::to_owned),
        })
    }

    /// The connector for `config` as the driver was told (its own three
    /// modes; no CA).
    pub(super) fn of(config: &mut Config) -> Result<Tls, TlsFailure> {
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        let tls = Tls::new(mode, None)?;
        tls.apply(config);
        Ok(tls)
    }

    /// Tells the driver whether to ask for TLS: never over Unix sockets
    /// (Postgres refuses it there; libpq ignores sslmode for them), else
    /// as the mode says, the driver's `require` standing for the verifying
    /// modes too, whose checks are this connector's.
    fn apply(&self, config: &mut Config) {
        let unix_only = config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, Host::Tcp(_)));
        config.ssl_mode(match self.mode {
            _ if unix_only => tokio_postgres::config::SslMode::Disable,
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
    }

    /// The store's error for a connection to `config` that failed with
    /// `e`: a TLS failure in words that say what to fix.
    pub(super) fn explain(&self, e: tokio_postgres::Error, config: &Config) -> StoreError {
        use std::error::Error as _;
        if let Some(failure) = e.source().and_then(|s| s.downcast_ref::<TlsFailure>()) {
            return TlsFailure(failure.0.clone()).into();
        }
        let refused = e
            .source()
            .is_some_and(|s| s.to_string() == "server does not support TLS");
        if !refused {
            return e.into();
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .filter_map(|h| match h {
                Host::Tcp(h) => Some(h.clone()),
                _ => None,
            })
            .collect();
        TlsFailure(format!(
            "the database server at {} does not accept TLS, and sslmode={} requires it: \
             turn ssl on in the server's postgresql.conf, or (on a trusted network only) \
             set sslmode=prefer or disable in store",
            hosts.join(","),
            self.mode
        ))
        .into()
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = TlsFailure;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, TlsFailure> {
        Ok(Connect {
            tls: self.clone(),
            host: host.to_owned(),
        })
    }
}

/// The TLS handshake of one connection, to `host`.
pub(super) struct Connect {
    tls: Tls,
    host: String,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = TlsFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Stream<S>, TlsFailure>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                TlsFailure(format!(
                    "{:?} is not a host name or address TLS can check: \
                     name the database's host in store",
                    self.host
                ))
            })?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.config.clone());
            match connector.connect(name, stream).await {
                Ok(stream) => Ok(Stream(Box::new(stream))),
                Err(e) => Err(self.explain(e)),
            }
        })
    }
}

impl Connect {
    /// What a failed handshake means for the one who configured it.
    fn explain(&self, e: io::Error) -> TlsFailure {
        let host = &self.host;
        let ca = self
            .tls
            .ca
            .as_ref()
            .map_or("(none)".to_owned(), |c| c.display().to_string());
        let cause = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        let Some(rustls::Error::InvalidCertificate(why)) = cause else {
            return TlsFailure(format!(
                "the TLS handshake with the database at {host} failed: {e}"
            ));
        };
        TlsFailure(match why {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the database's certificate is not valid for the host name {host} \
                     (sslmode={}): connect by a name the certificate holds, or have it \
                     issued for {host}; sslmode=verify-ca checks the CA alone ({why})",
                    self.tls.mode
                )
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => format!(
                "the database's certificate at {host} is outside its validity period ({why}): \
                 renew the server's certificate, or check this machine's clock"
            ),
            _ => format!(
                "the database's certificate at {host} is not signed by the CA in {ca} \
                 (store_ca) ({why}): set store_ca to the CA that signed the database \
                 server's certificate"
            ),
        })
    }
}

/// A TLS session to the database.
pub(super) struct Stream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    /// `tls-server-end-point` (RFC 5929): the hash of the server's
    /// certificate, so SCRAM authentication binds to this very session
    /// and a man in the middle cannot relay it.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        let Some(cert) = session.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        let Ok((_, parsed)) = X509Certificate::from_der(cert) else {
            return ChannelBinding::none();
        };
        // RFC 5929: the certificate's own signature hash, SHA-256 for
        // MD5 and SHA-1.
        let oid = parsed.signature_algorithm.algorithm.to_id_string();
        let algorithm = match oid.as_str() {
            // sha384WithRSAEncryption, ecdsa-with-SHA384
            "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => &ring::digest::SHA384,
            // sha512WithRSAEncryption, ecdsa-with-SHA512
            "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => &ring::digest::SHA512,
            // Ed25519 names no hash: the server then offers no binding.
            "1.3.101.112" => return ChannelBinding::none(),
            _ => &ring::digest::SHA256,
        };
        let digest = ring::digest::digest(algorithm, cert);
        ChannelBinding::tls_server_end_point(digest.as_ref().to_vec())
    }
}

/// Checks a server's certificate chain against the CA, not its name
/// (`verify-ca`): the chain is checked before the name, so a name error
/// means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
