//! A TCP relay a test puts between an agent and the coordinator, and can
//! freeze: while frozen no byte passes either way but every connection stays
//! open, as when a network partition drops packets. (The partition test does
//! the same with `docker network disconnect` across containers; this one
//! runs in-process.)

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};

/// The relay; stops when dropped.
pub struct Relay {
    /// URL for the agent to dial instead of the coordinator's.
    pub url: String,
    frozen: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relays connections made to a new local port to `target` (an
    /// `http://host:port` URL).
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let target: SocketAddr = target.trim_start_matches("http://").parse()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let frozen = watch::Sender::new(false);
        let gate = frozen.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task, which aborts every connection's copies.
            let mut copies = JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (from_agent, to_agent) = inbound.into_split();
                let (from_coordinator, to_coordinator) = outbound.into_split();
                copies.spawn(copy(from_agent, to_coordinator, gate.subscribe()));
                copies.spawn(copy(from_coordinator, to_agent, gate.subscribe()));
            }
        });
        Ok(Self { url, frozen, task })
    }

    /// Stops every byte, both ways, until [`Relay::thaw`].
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Lets bytes pass again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding whatever it has read while frozen.
async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
