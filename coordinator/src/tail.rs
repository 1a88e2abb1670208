//! `gantry logs --app --env`: the running containers' own output, asked of
//! every connected server of the environment over the agents' streams and
//! merged into one operator stream, each line marked with its server.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use gantry_shared::{messages::ContainerOutput, proto, AgentName};
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::Error;

/// Lines buffered per operator stream. Container output is not stored, so
/// when a reader falls this far behind, lines are dropped and the reader is
/// told how many: a slow terminal never stalls an agent's stream.
pub const TAIL_BUFFER: usize = 1024;

/// Tails one user may have open at once: a person watches a handful of
/// services side by side; a script opening hundreds (each a `docker logs
/// -f` on every server of the environment) is refused.
pub const MAX_TAILS_PER_USER: usize = 8;

/// Tails one server may be asked to answer at once, whoever asks: each is
/// a `docker logs -f` process on it and a share of its stream to us, so
/// readers together cannot load a production host without bound.
pub const MAX_TAILS_PER_AGENT: usize = 32;

/// Sender half of one operator's stream.
pub type TailSender = mpsc::Sender<Result<proto::AppLogLine, Status>>;

struct Tail {
    tx: TailSender,
    /// The environment's secrets, replaced in every line.
    redactor: gantry_shared::Redactor,
    /// Servers that have not ended their part.
    waiting: BTreeSet<AgentName>,
    dropped: u64,
    /// Who asked for it, counted against [`MAX_TAILS_PER_USER`].
    user: String,
}

/// The open tails, by request id.
#[derive(Default)]
pub struct Tails {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Tail>>,
}

impl Tails {
    /// Registers `user`'s tail answered by `servers`; returns its request
    /// id, or TooMany when the user or one of the servers has as many open
    /// as it may.
    pub fn open(
        &self,
        user: &str,
        tx: TailSender,
        servers: BTreeSet<AgentName>,
        redactor: gantry_shared::Redactor,
    ) -> Result<u64, Error> {
        let mut open = self.open.lock().expect("tails lock");
        let users = open.values().filter(|t| t.user == user).count();
        if users >= MAX_TAILS_PER_USER {
            return Err(Error::TooMany(format!(
                "{user} already has {users} container-log tails open, the most one user may (MAX_TAILS_PER_USER = {MAX_TAILS_PER_USER}); end one (Ctrl-C a `gantry logs --app`) and try again"
            )));
        }
        for server in &servers {
            let busy = open.values().filter(|t| t.waiting.contains(server)).count();
            if busy >= MAX_TAILS_PER_AGENT {
                return Err(Error::TooMany(format!(
                    "server {server} already answers {busy} container-log tails, the most one server may (MAX_TAILS_PER_AGENT = {MAX_TAILS_PER_AGENT}); try again when some have ended"
                )));
            }
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let tail = Tail {
            tx,
            redactor,
            waiting: servers,
            dropped: 0,
            user: user.to_owned(),
        };
        open.insert(id, tail);
        Ok(id)
    }

    /// Forgets a tail (its reader went away); returns the servers still
    /// sending, to be told to stop.
    pub fn close(&self, id: u64) -> BTreeSet<AgentName> {
        let tail = self.open.lock().expect("tails lock").remove(&id);
        tail.map(|t| t.waiting).unwrap_or_default()
    }

    /// Delivers what `server` sent for a tail.
    pub fn deliver(&self, server: &AgentName, output: ContainerOutput) {
        let mut open = self.open.lock().expect("tails lock");
        // Only a server asked for this tail may write to it: request ids are
        // sequential, and an agent of another environment must not reach
        // this one's readers.
        let Some(tail) = open
            .get_mut(&output.request_id)
            .filter(|t| t.waiting.contains(server))
        else {
            return;
        };
        let mut lines: Vec<proto::AppLogLine> = output
            .lines
            .into_iter()
            .map(|l| proto::AppLogLine {
                server: server.to_string(),
                stream: l
                    .stream
                    .map_or(proto::LogStream::Unspecified, proto::LogStream::from)
                    .into(),
                text: gantry_shared::limits::cap_log_line(tail.redactor.redact(l.text)),
            })
            .collect();
        if let Some(error) = output.error {
            let error = gantry_shared::limits::cap_log_line(tail.redactor.redact(error));
            lines.push(note(server, error));
        }
        for line in lines {
            if tail.dropped > 0 {
                let text = format!(
                    "... {} lines dropped: the reader was too slow",
                    tail.dropped
                );
                if tail.tx.try_send(Ok(note(server, text))).is_ok() {
                    tail.dropped = 0;
                }
            }
            if tail.tx.try_send(Ok(line)).is_err() {
                tail.dropped += 1;
            }
        }
        if output.end {
            tail.waiting.remove(server);
            if tail.waiting.is_empty() {
                open.remove(&output.request_id);
            }
        }
    }

    /// `server` disconnected: its parts end.
    pub fn server_gone(&self, server: &AgentName) {
        let mut open = self.open.lock().expect("tails lock");
        open.retain(|_, tail| {
            if tail.waiting.remove(server) {
                let text = "the server disconnected".to_owned();
                let _ = tail.tx.try_send(Ok(note(server, text)));
            }
            !tail.waiting.is_empty()
        });
    }
}

fn note(server: &AgentName, text: String) -> proto::AppLogLine {
    proto::AppLogLine {
        server: server.to_string(),
        stream: proto::LogStream::System as i32,
        text,
    }
}

/// One operator's merged stream; when it is dropped (the reader went away,
/// or every server ended), the servers still sending are told to stop.
pub struct TailStream {
    inner: tokio_stream::wrappers::ReceiverStream<Result<proto::AppLogLine, Status>>,
    id: u64,
    tails: std::sync::Arc<Tails>,
    /// The servers asked, and where to tell them to stop.
    servers: Vec<(AgentName, crate::fleet::Outbox)>,
}

impl TailStream {
    /// Wraps the receiving half of tail `id`, asked of `servers`.
    pub fn new(
        rx: mpsc::Receiver<Result<proto::AppLogLine, Status>>,
        id: u64,
        tails: std::sync::Arc<Tails>,
        servers: Vec<(AgentName, crate::fleet::Outbox)>,
    ) -> Self {
        Self {
            inner: tokio_stream::wrappers::ReceiverStream::new(rx),
            id,
            tails,
            servers,
        }
    }
}

impl futures::Stream for TailStream {
    type Item = Result<proto::AppLogLine, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Drop for TailStream {
    fn drop(&mut self) {
        let still = self.tails.close(self.id);
        for (server, outbox) in &self.servers {
            if still.contains(server) {
                let _ = outbox.try_send(gantry_shared::messages::ToAgent::StopTail(self.id));
            }
        }
    }
}
