//! An agent's identity as its certificate states it: the name and the
//! environment are in a URI subject alternative name the coordinator wrote
//! when it signed the certificate, so an agent cannot choose them.

use gantry_shared::{tls::hex, AgentName, EnvName};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

const URI_PREFIX: &str = "spiffe://gantry/env/";

/// The URI naming `name` of `env`.
pub fn identity_uri(env: &EnvName, name: &AgentName) -> String {
    format!("{URI_PREFIX}{env}/agent/{name}")
}

/// Who a verified client certificate says the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The agent's name.
    pub name: AgentName,
    /// The environment it is bound to.
    pub env: EnvName,
    /// The certificate's serial number, hex.
    pub serial: String,
}

/// Reads the identity from a certificate (already verified by TLS).
pub fn identity(der: &[u8]) -> Result<AgentIdentity, String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
    let serial = hex(cert.raw_serial());
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| format!("the client certificate's names cannot be read: {e}"))?
        .ok_or("the client certificate names no agent")?;
    let uri = sans
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(URI_PREFIX),
            _ => None,
        })
        .ok_or("the client certificate is not a Gantry agent certificate")?;
    let (env, name) = uri
        .split_once("/agent/")
        .ok_or("the client certificate's agent name is malformed")?;
    Ok(AgentIdentity {
        name: AgentName::new(name).map_err(|e| e.to_string())?,
        env: EnvName::new(env).map_err(|e| e.to_string())?,
        serial,
    })
}
