//! An agent stream that never sends `Register` is ended after
//! [`REGISTER_TIMEOUT`] with DeadlineExceeded, instead of holding its task
//! and its stream slot for ever.

use std::time::{Duration, Instant};

use gantry_coordinator::agent_service::REGISTER_TIMEOUT;
use gantry_shared::{config::CoordinatorConfig, proto};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_without_register_is_closed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.path().join("coordinator.toml");
    std::fs::write(
        &path,
        format!("plaintext = true\nlisten = \"{addr}\"\n[[environments]]\nname = \"dev\"\n"),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(gantry_coordinator::serve(
        CoordinatorConfig::load(&path).unwrap(),
        listener,
        shutdown.clone(),
    ));
    let mut agent =
        proto::agent_service_client::AgentServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    // The stream is opened and kept open, but nothing is ever sent on it.
    let (tx, rx) = mpsc::channel::<proto::AgentMessage>(1);
    let started = Instant::now();
    let answer = tokio::time::timeout(
        REGISTER_TIMEOUT + Duration::from_secs(5),
        agent.attach(ReceiverStream::new(rx)),
    )
    .await
    .expect("the coordinator ends a stream that never registers");
    let waited = started.elapsed();
    let status = answer.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no Register within 10s"),
        "{}",
        status.message()
    );
    assert!(waited >= REGISTER_TIMEOUT, "closed after {waited:?}");
    drop(tx);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
