//! Container-log tails (`gantry logs --app --env -f`) are bounded: one user
//! may hold [`MAX_TAILS_PER_USER`] open and one server may be asked to answer
//! [`MAX_TAILS_PER_AGENT`]; past either, the follow is refused with
//! ResourceExhausted and a message naming the cap, and a freed one can be
//! taken again.

use std::time::Duration;

use gantry_coordinator::tail::{MAX_TAILS_PER_AGENT, MAX_TAILS_PER_USER};
use gantry_shared::{config::CoordinatorConfig, proto, tls::fingerprint};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{transport::Channel, Code, Request};

/// Users in the config: enough of them to fill one server's tails.
const USERS: usize = MAX_TAILS_PER_AGENT / MAX_TAILS_PER_USER + 1;

fn token(user: usize) -> String {
    format!("ce-tails-token-{user}")
}

/// A follow of the app's container output, as `user`.
async fn follow(
    channel: &Channel,
    user: usize,
) -> Result<tonic::Streaming<proto::AppLogLine>, tonic::Status> {
    let mut client = proto::operator_service_client::OperatorServiceClient::new(channel.clone());
    let mut request = Request::new(proto::StreamAppLogsRequest {
        app: "ce-tails".into(),
        env: "prod".into(),
        follow: true,
        tail: 0,
    });
    let bearer = format!("Bearer {}", token(user)).parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    client
        .stream_app_logs(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_past_the_user_and_server_caps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = format!(
        "plaintext = true\nlisten = \"{addr}\"\nrate_limit_per_minute = 10000\n\
         [[environments]]\nname = \"prod\"\n[[apps]]\nname = \"ce-tails\"\nremote = \"/nonexistent\"\n\
         build_command = \"true\"\nartifact = \"a.jar\"\nbase_image = \"none\"\ncontainer_port = 80\n"
    );
    for user in 0..USERS {
        config.push_str(&format!(
            "[[users]]\nname = \"ce-user-{user}\"\nroles = []\ntoken_sha256 = \"{}\"\n",
            fingerprint(token(user).as_bytes())
        ));
    }
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, config).unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(gantry_coordinator::serve(
        CoordinatorConfig::load(&path).unwrap(),
        listener,
        shutdown.clone(),
    ));
    let url = format!("http://{addr}");
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // A raw prod agent that takes every tail request and never ends one,
    // as a server tailing a quiet container does.
    let mut agent = proto::agent_service_client::AgentServiceClient::new(channel.clone());
    let (tx, rx) = mpsc::channel(16);
    let register = proto::Register {
        name: "ce-prod-1".into(),
        env: "prod".into(),
        capacity: 1,
        protocol: gantry_shared::messages::PROTOCOL,
        ..Default::default()
    };
    tx.send(proto::AgentMessage {
        body: Some(proto::agent_message::Body::Register(register)),
    })
    .await
    .unwrap();
    let mut inbound = agent
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap().expect("registered");
    let asked = tokio::spawn(async move {
        let mut tails = 0;
        while let Ok(Some(message)) = inbound.message().await {
            if let Some(proto::coordinator_message::Body::Tail(_)) = message.body {
                tails += 1;
            }
        }
        tails
    });

    // One user: up to their cap, then refused by name.
    let mut open = Vec::new();
    for _ in 0..MAX_TAILS_PER_USER {
        open.push(follow(&channel, 0).await.expect("a follow under the cap"));
    }
    let refused = follow(&channel, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("MAX_TAILS_PER_USER = 8"),
        "{}",
        refused.message()
    );
    // Ending one frees its place.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let again = loop {
        match follow(&channel, 0).await {
            Ok(stream) => break stream,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the freed tail was not given back: {e:?}"),
        }
    };
    open.push(again);

    // Other users fill the server up to its cap; the next is refused by
    // the server's cap although that user holds none.
    let mut user = 1;
    while open.len() < MAX_TAILS_PER_AGENT {
        for _ in 0..MAX_TAILS_PER_USER.min(MAX_TAILS_PER_AGENT - open.len()) {
            open.push(
                follow(&channel, user)
                    .await
                    .expect("under the server's cap"),
            );
        }
        user += 1;
    }
    let refused = follow(&channel, USERS - 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("server ce-prod-1 already answers 32 container-log tails")
            && refused.message().contains("MAX_TAILS_PER_AGENT = 32"),
        "{}",
        refused.message()
    );

    drop(open);
    shutdown.cancel();
    drop(tx);
    let tails = tokio::time::timeout(Duration::from_secs(10), asked)
        .await
        .expect("the agent's stream ends")
        .unwrap();
    // The agent was asked for every follow that was accepted, and for none
    // that was refused.
    assert_eq!(tails, MAX_TAILS_PER_AGENT + 1);
    server.await.unwrap().unwrap();
}
