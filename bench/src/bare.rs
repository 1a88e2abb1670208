//! The baseline for log throughput: a bare tonic server of the same agent
//! protocol that stores nothing and only counts the lines it receives.

use std::time::Instant;

use gantry_shared::proto::{self, agent_message::Body as Up};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

struct Inner {
    target: u64,
    done: std::sync::Mutex<Option<oneshot::Sender<Instant>>>,
}

#[derive(Clone)]
struct Counter(std::sync::Arc<Inner>);

#[tonic::async_trait]
impl proto::agent_service_server::AgentService for Counter {
    type AttachStream = ReceiverStream<Result<proto::CoordinatorMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let (_tx, rx) = mpsc::channel(1);
        let me = self.clone();
        tokio::spawn(async move {
            let mut count = 0;
            while let Some(Ok(msg)) = inbound.next().await {
                if let Some(Up::JobEvent(proto::JobEvent {
                    lines: Some(batch), ..
                })) = msg.body
                {
                    count += batch.lines.len() as u64;
                    if count >= me.0.target {
                        if let Some(done) = me.0.done.lock().expect("lock").take() {
                            let _ = done.send(Instant::now());
                        }
                    }
                }
            }
            drop(_tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn join(
        &self,
        _: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinResponse>, Status> {
        Err(Status::failed_precondition(
            "the baseline server enrols no agent",
        ))
    }
}

/// Lines per second one client pushes through a bare bidirectional stream.
pub async fn throughput(lines: u64) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (done_tx, done_rx) = oneshot::channel();
    let counter = Counter(std::sync::Arc::new(Inner {
        target: lines,
        done: std::sync::Mutex::new(Some(done_tx)),
    }));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::agent_service_server::AgentServiceServer::new(
                counter,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = proto::agent_service_client::AgentServiceClient::connect(url).await?;
    let (tx, rx) = mpsc::channel(1024);
    let _inbound = client.attach(ReceiverStream::new(rx)).await?;
    let start = Instant::now();
    for n in 1..=lines {
        let line = proto::LogLine {
            seq: n,
            text: "x".repeat(100),
            ..Default::default()
        };
        let event = proto::JobEvent {
            job_id: 1,
            lines: Some(vec![line].into()),
            finished: None,
        };
        tx.send(proto::AgentMessage {
            body: Some(Up::JobEvent(event)),
        })
        .await?;
    }
    let end = done_rx.await?;
    server.abort();
    Ok(lines as f64 / (end - start).as_secs_f64())
}
