//! Sending a running container's own output to the coordinator for
//! `gantry logs --app --env`: the app's released container on this server,
//! its recent lines, then (when following) new ones until told to stop.

use std::{collections::HashMap, sync::Mutex};

use futures::StreamExt;
use gantry_shared::{
    limits::cap_log_line,
    messages::{ContainerOutput, FromAgent, LogLine, LogStream, TailRequest},
    now_ms,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{batch, docker, docker::label, runtime::Runtime};

/// Open tails of this agent, by request id, with what stops them.
#[derive(Default)]
pub struct Tails(Mutex<HashMap<u64, CancellationToken>>);

impl Tails {
    /// Registers tail `id`; the token stops it.
    pub fn start(&self, id: u64) -> CancellationToken {
        let token = CancellationToken::new();
        self.0.lock().expect("tails lock").insert(id, token.clone());
        token
    }

    /// Stops tail `id`.
    pub fn stop(&self, id: u64) {
        if let Some(token) = self.0.lock().expect("tails lock").remove(&id) {
            token.cancel();
        }
    }

    /// Stops every tail (the stream they answer on closed).
    pub fn stop_all(&self) {
        for (_, token) in self.0.lock().expect("tails lock").drain() {
            token.cancel();
        }
    }

    fn done(&self, id: u64) {
        self.0.lock().expect("tails lock").remove(&id);
    }
}

fn output(request_id: u64, lines: Vec<LogLine>, end: bool, error: Option<String>) -> FromAgent {
    FromAgent::Output(ContainerOutput {
        request_id,
        lines,
        end,
        error,
    })
}

/// Sends the output asked for by `ask` on `tx` until it ends, the reader
/// stops it (`stop`), or the stream to the coordinator closes.
pub async fn run(
    rt: &Runtime,
    tails: &Tails,
    ask: TailRequest,
    tx: mpsc::Sender<FromAgent>,
    stop: CancellationToken,
) {
    let id = ask.request_id;
    let env = rt.env.to_string();
    let scope = [
        (label::APP, ask.app.as_str()),
        (label::ENV, env.as_str()),
        (label::AGENT_ID, rt.agent_id.as_str()),
    ];
    let running = match docker::containers(&rt.docker, &scope).await {
        Ok(list) => list,
        Err(e) => {
            let _ = tx
                .send(output(id, Vec::new(), true, Some(e.to_string())))
                .await;
            return tails.done(id);
        }
    };
    let Some((container, _)) = running.into_iter().next() else {
        let why = format!("no container of {} runs on this server", ask.app);
        let _ = tx.send(output(id, Vec::new(), true, Some(why))).await;
        return tails.done(id);
    };
    let mut chunks = Box::pin(docker::container_logs(
        &rt.docker,
        &container,
        ask.follow,
        Some(ask.tail),
    ));
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => break,
            chunk = chunks.next() => chunk,
        };
        let Some((stderr, text)) = chunk else { break };
        let stream = if stderr {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        };
        let lines: Vec<LogLine> = text
            .lines()
            .map(|line| LogLine {
                seq: 0,
                timestamp_ms: now_ms(),
                stage: None,
                stream: Some(stream),
                text: cap_log_line(line.to_owned()),
                opens_stage: false,
            })
            .collect();
        for group in batch::output_groups(lines) {
            if tx.send(output(id, group, false, None)).await.is_err() {
                return tails.done(id);
            }
        }
    }
    let _ = tx.send(output(id, Vec::new(), true, None)).await;
    tails.done(id);
}
