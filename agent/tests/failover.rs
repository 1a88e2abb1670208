//! An agent given several coordinators registers with the one that leads:
//! a standby's refusal naming the leader sends it there at once.
//!
//! The leader is a real coordinator in this process. The standbys are
//! real tonic servers of the agent service that refuse as the contract in
//! `gantry_shared::leader` says a standby does (the coordinator's own
//! standby mode is not written yet), and count what they were asked.

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use gantry_agent::AgentOptions;
use gantry_shared::{leader::standby_refusal, proto, AgentName, EnvName};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// How long the agent may take to find the leader and register.
const REGISTER_WITHIN: Duration = Duration::from_secs(20);

/// A standby: refuses every call, naming `leader` when it has one.
struct Standby {
    leader: Option<String>,
    asked: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl proto::agent_service_server::AgentService for Standby {
    type AttachStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::CoordinatorMessage, Status>> + Send>>;

    async fn attach(
        &self,
        _: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Err(standby_refusal(self.leader.as_deref()))
    }

    async fn join(
        &self,
        _: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinResponse>, Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Err(standby_refusal(self.leader.as_deref()))
    }
}

/// Serves a [`Standby`] on a fresh loopback port until `stop`; returns its
/// URL and how many calls it has refused.
async fn standby(leader: Option<String>, stop: CancellationToken) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let service = proto::agent_service_server::AgentServiceServer::new(Standby {
        leader,
        asked: asked.clone(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            ),
    );
    (url, asked)
}

/// A real plaintext coordinator with one environment, `dev`, serving on
/// `listener` until `stop`; returns its URL.
fn leader(
    listener: tokio::net::TcpListener,
    dir: &std::path::Path,
    stop: CancellationToken,
) -> String {
    let addr = listener.local_addr().unwrap();
    let path = dir.join("coordinator.toml");
    std::fs::write(
        &path,
        format!("plaintext = true\ndata_dir = \"data\"\nlisten = \"{addr}\"\n[[environments]]\nname = \"dev\"\n"),
    )
    .unwrap();
    let config = gantry_shared::config::CoordinatorConfig::load(&path).unwrap();
    tokio::spawn(gantry_coordinator::serve(config, listener, stop));
    format!("http://{addr}")
}

/// An agent `name` of `dev` given `coordinators`, working under `dir`.
fn agent(coordinators: &str, name: &str, dir: &std::path::Path) -> AgentOptions {
    AgentOptions {
        coordinator: coordinators.to_owned(),
        name: AgentName::new(name).unwrap(),
        env: EnvName::new("dev").unwrap(),
        work_dir: dir.join("agent"),
        capacity: 1,
        labels: BTreeMap::new(),
        publish_ip: "127.0.0.1".into(),
        health_host: "127.0.0.1".into(),
        public_host: "127.0.0.1".into(),
        drain_grace: Duration::from_secs(1),
        proxy_program: None,
        tls_dir: None,
        build_user: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_given_standby_and_leader_registers_with_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader = leader(listener, dir.path(), stop.clone());
    let (pointing, pointed_asked) = standby(Some(leader.clone()), stop.clone()).await;
    let (leaderless, leaderless_asked) = standby(None, stop.clone()).await;

    // The leader comes last: the agent reaches it by the first standby's
    // word, before it would walk on to the second.
    let options = agent(
        &format!("{pointing},{leaderless},{leader}"),
        "fo-1",
        dir.path(),
    );
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(gantry_agent::run(options, agent_stop.clone()));

    let mut operator = proto::operator_service_client::OperatorServiceClient::connect(leader)
        .await
        .unwrap();
    let deadline = Instant::now() + REGISTER_WITHIN;
    let registered = loop {
        let agents = operator
            .list_agents(proto::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        if let Some(agent) = agents.into_iter().find(|a| a.name == "fo-1" && a.connected) {
            break Some(agent);
        }
        if Instant::now() > deadline || agent.is_finished() {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    agent_stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), agent).await;

    let registered = registered.expect("the agent registered with the leader in time");
    assert_eq!(registered.env, "dev");
    assert!(
        pointed_asked.load(Ordering::SeqCst) >= 1,
        "the agent asked the first standby"
    );
    assert_eq!(
        leaderless_asked.load(Ordering::SeqCst),
        0,
        "the named leader went before the rest of the list"
    );
    ended
        .expect("the agent stopped")
        .unwrap()
        .expect("the agent ran without an error");
}

/// A list with a coordinator that is not running, and one that is a
/// standby without a leader: the agent keeps going round the list (never
/// stopping) and registers once the leader it lists is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_goes_round_the_list_until_the_leader_answers() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    // A port that was free a moment ago: nothing answers there.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (leaderless, leaderless_asked) = standby(None, stop.clone()).await;
    // The leader's port is taken now and served later.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    let options = agent(
        &format!("{dead},{leaderless},{leader_url}"),
        "fo-2",
        dir.path(),
    );
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(gantry_agent::run(options, agent_stop.clone()));
    // Two whole rounds fail before the leader is up.
    let deadline = Instant::now() + REGISTER_WITHIN;
    while leaderless_asked.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        leaderless_asked.load(Ordering::SeqCst) >= 2,
        "the agent went round the list"
    );
    assert!(!agent.is_finished(), "the agent keeps trying");

    let addr = leader_url.strip_prefix("http://").unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    leader(listener, dir.path(), stop.clone());

    let mut operator = proto::operator_service_client::OperatorServiceClient::connect(leader_url)
        .await
        .unwrap();
    let deadline = Instant::now() + REGISTER_WITHIN;
    let registered = loop {
        let agents = operator
            .list_agents(proto::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        if agents.iter().any(|a| a.name == "fo-2" && a.connected) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    agent_stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), agent).await;
    assert!(registered, "the agent registered once the leader was up");
    ended
        .expect("the agent stopped")
        .unwrap()
        .expect("the agent ran without an error");
}
