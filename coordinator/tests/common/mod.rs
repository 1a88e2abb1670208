//! Helpers shared by the coordinator's integration tests.

use std::path::Path;

/// Creates a git repository at `dir` with one commit on `main`.
pub fn repo_with_one_commit(dir: &Path) {
    let repo =
        git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main"))
            .unwrap();
    std::fs::write(dir.join("README"), "test\n").unwrap();
    let mut index = repo.index().unwrap();
    index.add_path(Path::new("README")).unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@example.com").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "one", &tree, &[])
        .unwrap();
}

/// A plaintext coordinator serving in this process, with one environment
/// `dev` and one app `app` whose remote is a fresh repository under `dir`.
#[allow(dead_code)] // Each test file uses what it needs.
pub struct Coordinator {
    /// Where it answers.
    pub url: String,
    /// Cancel to stop it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// `serve`, running.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts a [`Coordinator`] with its data in `dir/data`.
#[allow(dead_code)] // Each test file uses what it needs.
pub async fn start_coordinator(dir: &Path, app: &str) -> Coordinator {
    let repo_dir = dir.join("repo");
    repo_with_one_commit(&repo_dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.join("coordinator.toml");
    std::fs::write(
        &path,
        format!(
            "plaintext = true\ndata_dir = \"data\"\nlisten = \"{addr}\"\n[[environments]]\nname = \"dev\"\n\
             [[apps]]\nname = \"{app}\"\nremote = \"{}\"\nbuild_command = \"true\"\nartifact = \"a.jar\"\n\
             base_image = \"none\"\ncontainer_port = 80\n",
            repo_dir.display()
        ),
    )
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = gantry_shared::config::CoordinatorConfig::load(&path).unwrap();
    let server = tokio::spawn(gantry_coordinator::serve(
        config,
        listener,
        shutdown.clone(),
    ));
    Coordinator {
        url: format!("http://{addr}"),
        shutdown,
        server,
    }
}

/// One message from an agent.
#[allow(dead_code)]
pub fn up(body: gantry_shared::proto::agent_message::Body) -> gantry_shared::proto::AgentMessage {
    gantry_shared::proto::AgentMessage { body: Some(body) }
}

/// A raw agent `dev-1` of `dev` speaking the protocol by hand, attached and
/// registered: where to send its messages (room for `room`), and what the
/// coordinator says to it.
#[allow(dead_code)]
pub async fn attach_raw_agent(
    url: &str,
    room: usize,
) -> (
    tokio::sync::mpsc::Sender<gantry_shared::proto::AgentMessage>,
    tonic::Streaming<gantry_shared::proto::CoordinatorMessage>,
) {
    use gantry_shared::proto;
    let mut agent = proto::agent_service_client::AgentServiceClient::connect(url.to_owned())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(room);
    let register = proto::Register {
        name: "dev-1".into(),
        env: "dev".into(),
        capacity: 1,
        protocol: gantry_shared::messages::PROTOCOL,
        ..Default::default()
    };
    tx.send(up(proto::agent_message::Body::Register(register)))
        .await
        .unwrap();
    let mut inbound = agent
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap().expect("registered");
    (tx, inbound)
}
