//! The agent side of [`Core`]: an agent's stream registering, its signs of
//! life, draining and closing, each handed to the scheduler.

use std::collections::BTreeSet;

use gantry_shared::{AgentName, JobId};

use super::{names, Core};
use crate::{
    error::Error,
    fleet::Outbox,
    job::AgentRecord,
    scheduler::{Attach, Command},
};

impl Core {
    /// Registers an agent's stream; the scheduler reconciles the jobs it
    /// says it holds with the jobs it was given. Returns the session's id.
    pub async fn attach_agent(
        &self,
        record: AgentRecord,
        running: BTreeSet<JobId>,
        outbox: Outbox,
        closed: tokio_util::sync::CancellationToken,
        certificate: Option<&str>,
    ) -> Result<u64, Error> {
        if self.config.environment(&record.env).is_none() {
            return Err(Error::UnknownEnv {
                known: names(self.config.environments.iter().map(|e| e.name().as_str())),
                env: record.env,
            });
        }
        let attach = Box::new(Attach {
            record,
            running,
            outbox,
            closed,
            certificate: certificate.map(str::to_owned),
        });
        self.scheduler
            .ask(|reply| Command::Attach(attach, reply))
            .await
    }

    /// Notes that the agent is alive.
    pub async fn touch(&self, agent: &AgentName, session: u64) -> Result<(), Error> {
        self.scheduler
            .tell(Command::Touch(agent.clone(), session))
            .await
    }

    /// The agent is shutting down: it finishes what it holds but gets nothing new.
    pub async fn drain_agent(&self, agent: &AgentName, session: u64) -> Result<(), Error> {
        self.scheduler
            .tell(Command::Drain(agent.clone(), session))
            .await
    }

    /// The agent's stream closed; its jobs get a lease to come back.
    pub async fn detach_agent(&self, agent: &AgentName, session: u64) -> Result<(), Error> {
        self.scheduler
            .tell(Command::Detach(agent.clone(), session))
            .await
    }
}
