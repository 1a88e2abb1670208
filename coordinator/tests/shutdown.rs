//! A coordinator told to stop drains in order: its followers and agents are
//! told to go, then the store is flushed and let go, and `serve` returns.
//! One whose vital task dies stops, and `serve` returns why.

mod common;

use std::time::Duration;

use gantry_shared::{config::CoordinatorConfig, proto};
use tokio_util::sync::CancellationToken;
use tonic::Code;

#[tokio::test]
async fn a_stop_ends_followers_and_agents_then_lets_go_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let common::Coordinator {
        url,
        shutdown,
        server,
    } = common::start_coordinator(dir.path(), "app").await;
    let (tx, mut inbound) = common::attach_raw_agent(&url, 16).await;
    let mut client = proto::operator_service_client::OperatorServiceClient::connect(url)
        .await
        .unwrap();
    let request = proto::DeployRequest {
        app: "app".into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let job = client.deploy(request).await.unwrap().into_inner().id;
    inbound.message().await.unwrap().expect("assignment");
    // A follower of the running job, waiting for lines that never come.
    let follow = proto::StreamJobLogsRequest {
        job_id: job,
        from_seq: 1,
        follow: true,
    };
    let mut follower = client.follow_job_logs(follow).await.unwrap().into_inner();

    shutdown.cancel();
    let within = Duration::from_secs(10);
    let told = tokio::time::timeout(within, follower.message())
        .await
        .expect("the follower is told at once")
        .unwrap_err();
    assert_eq!(told.code(), Code::Unavailable, "{told:?}");
    assert!(told.message().contains("shutting down"), "{told:?}");
    let agent_end = tokio::time::timeout(within, async {
        while let Ok(Some(_)) = inbound.message().await {}
    });
    agent_end.await.expect("the agent's stream ends");
    tokio::time::timeout(within, server)
        .await
        .expect("serve returns once drained")
        .unwrap()
        .unwrap();
    // Flushed, and let go once the last connection's task has dropped its
    // handle (a coordinator starting next waits as long): another
    // coordinator opens it and finds the job.
    use gantry_coordinator::store::Store;
    let store = reopen(&dir.path().join("data")).await;
    assert!(store.next_job_id().await.unwrap().get() > job);
    drop(tx);
}

/// The store in `dir`, once the stopped coordinator has let go of it.
async fn reopen(dir: &std::path::Path) -> gantry_coordinator::store::sled::SledStore {
    use gantry_coordinator::store::{sled::SledStore, StoreError};

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Ok(store) => return store,
            Err(StoreError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("the stopped coordinator still holds the store: {e}"),
        }
    }
}

#[tokio::test]
async fn a_listener_that_breaks_stops_the_coordinator_with_the_reason() {
    use std::os::fd::AsRawFd;
    gantry_shared::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    common::repo_with_one_commit(&repo_dir);
    gantry_coordinator::trust::ca::init(&dir.path().join("data").join("tls"), &[]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let path = dir.path().join("coordinator.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\nlisten = \"{}\"\n[[environments]]\nname = \"dev\"\n[[apps]]\nname = \"app\"\nremote = \"{}\"\n\
             build_command = \"true\"\nartifact = \"a.jar\"\nbase_image = \"none\"\ncontainer_port = 80\n",
            listener.local_addr().unwrap(),
            repo_dir.display()
        ),
    )
    .unwrap();
    // Shut down under the coordinator's feet, the socket accepts nothing
    // ever again (accept fails with EINVAL).
    let socket = listener.as_raw_fd();
    let server = tokio::spawn(gantry_coordinator::serve(
        CoordinatorConfig::load(&path).unwrap(),
        listener,
        CancellationToken::new(),
    ));
    // SAFETY: shutdown only reads its integer arguments; the socket stays
    // open (the coordinator owns it) until serve returns.
    assert_eq!(unsafe { libc::shutdown(socket, libc::SHUT_RDWR) }, 0);
    let err = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the coordinator stops by itself")
        .unwrap()
        .unwrap_err();
    let reason = format!("{err:#}");
    assert!(
        reason.starts_with("the TLS accept loop failed: the listening socket")
            && reason.contains("no longer accepts connections")
            && reason.contains("Invalid argument"),
        "{reason}"
    );
    // It stopped in order all the same: the store is flushed and let go.
    reopen(&dir.path().join("data")).await;
}
