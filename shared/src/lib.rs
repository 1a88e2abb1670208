//! Gantry's shared crate: the wire contract generated from `proto/`, the
//! domain types that validate on construction, and the coordinator's
//! configuration.

pub mod codec;
pub mod config;
pub mod domain;
pub mod git;
pub mod job;
pub mod leader;
pub mod limits;
pub mod log_batch;
pub mod messages;
pub mod secret;
pub mod tls;
pub mod url;

/// Code generated from `proto/gantry/v1/*.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("gantry.v1");

    pub use crate::log_batch::LogBatch;

    /// The encoded descriptor set of every Gantry proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/gantry_descriptor.bin"));
}

pub use domain::{AgentName, AppName, BranchName, EnvName, JobId, NameError};
pub use job::{JobState, Stage};
pub use secret::{Redactor, Secret};

/// The version every Gantry binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, the timestamp unit on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
