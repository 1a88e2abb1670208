//! The agent side of `gantry logs --app --env`: asking every connected
//! server of an environment for its container's output, and telling them
//! to stop when the reader goes away.

use std::collections::BTreeSet;

use gantry_shared::{
    messages::{ContainerOutput, TailRequest, ToAgent},
    AppName, EnvName,
};
use tokio::sync::mpsc;

use super::Core;
use crate::{
    error::Error,
    scheduler::Command,
    tail::{TailStream, TAIL_BUFFER},
};

/// Recent lines per server when the request names none.
pub const DEFAULT_TAIL: u32 = 100;

/// Most recent lines per server a request may ask for.
pub const MAX_TAIL: u32 = 10_000;

impl Core {
    /// Streams the output of (app, env)'s running containers from every
    /// connected server of the environment, for `user`.
    pub async fn tail_app(
        &self,
        user: &str,
        app: AppName,
        env: EnvName,
        follow: bool,
        tail: u32,
    ) -> Result<TailStream, Error> {
        self.check_target(&app, &env)?;
        if tail > MAX_TAIL {
            return Err(Error::InvalidArgument(format!(
                "tail is {tail}; at most {MAX_TAIL} recent lines per server can be asked for"
            )));
        }
        let tail = if tail == 0 { DEFAULT_TAIL } else { tail };
        let (tx, rx) = mpsc::channel(TAIL_BUFFER);
        let servers = self
            .scheduler
            .get(|reply| Command::Servers(env.clone(), reply))
            .await?;
        if servers.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "no agent of environment {env} is connected, so no server can send the output of {app}"
            )));
        }
        let names: BTreeSet<_> = servers.iter().map(|(name, _)| name.clone()).collect();
        let id = self.tails.open(user, tx, names, self.redactor_of(&env))?;
        for (server, outbox) in &servers {
            let ask = ToAgent::Tail(TailRequest {
                request_id: id,
                app: app.clone(),
                tail,
                follow,
            });
            if outbox.try_send(ask).is_err() {
                let busy = ContainerOutput {
                    request_id: id,
                    lines: Vec::new(),
                    end: true,
                    error: Some("the server is too busy to answer now; try again".into()),
                };
                self.tails.deliver(server, busy);
            }
        }
        Ok(TailStream::new(rx, id, self.tails.clone(), servers))
    }
}
