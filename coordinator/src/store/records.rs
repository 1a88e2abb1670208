//! The store's own records and questions: certificates issued, why an
//! enrolment is refused, which jobs to list.

use gantry_shared::{AgentName, AppName, EnvName};
use serde::{Deserialize, Serialize};

use crate::job::JobRecord;

/// An agent certificate the coordinator signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Its serial number, hex.
    pub serial: String,
    /// The agent it names.
    pub name: AgentName,
    /// The environment it binds the agent to.
    pub env: EnvName,
    /// When it was issued, ms since the epoch.
    pub issued_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// Why an enrolment was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The name holds an unrevoked certificate of this other environment.
    EnrolledElsewhere(EnvName),
    /// The join token was redeemed before.
    TokenUsed,
}

/// Which jobs to list (every one by default), newest first.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only this app's.
    pub app: Option<AppName>,
    /// Only this environment's.
    pub env: Option<EnvName>,
    /// Only those that have not ended.
    pub unended: bool,
    /// At most this many.
    pub limit: Option<usize>,
}

impl JobQuery {
    /// The jobs of (app, env) that have not ended.
    pub fn pending(app: &AppName, env: &EnvName) -> Self {
        Self {
            app: Some(app.clone()),
            env: Some(env.clone()),
            unended: true,
            limit: None,
        }
    }

    /// Whether `job` is one asked for (the limit aside).
    pub fn wants(&self, job: &JobRecord) -> bool {
        self.app.as_ref().is_none_or(|a| a == &job.app)
            && self.env.as_ref().is_none_or(|e| e == &job.env)
            && !(self.unended && job.state.is_terminal())
    }
}
