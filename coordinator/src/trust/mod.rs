//! Transport trust: the CA, TLS on the listener, and agents' identities
//! from their client certificates.

pub mod accept;
pub mod ca;
pub mod conn;
pub mod identity;

pub use ca::{Authority, TrustError};
pub use identity::{identity, AgentIdentity};
