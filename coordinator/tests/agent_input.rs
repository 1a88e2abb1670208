//! What crosses the agent's stream: a job sent to an agent carries the
//! app's read-only fetch credential, never the coordinator's push
//! credential; what an agent sends is input like any other: every text of
//! a finished job passes the environment's redactor before it is stored or
//! shown, and bytes that are not a message are the sender's error
//! (`InvalidArgument`), on the agent's stream as on the operator API; a
//! message with values the protocol does not allow is refused at the edge
//! and changes nothing, and the coordinator goes on serving the agent.

mod common;

use bytes::{Buf, BufMut};
use gantry_shared::{config::CoordinatorConfig, proto};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    Code, Status,
};

const SECRET: &str = "pw-4c3b2a1f0e";

/// The coordinator's own token, which can push.
const PUSH_TOKEN: &str = "push-token-7a6b5c";

/// Apps whose remote needs the push token: one with it alone, one with a
/// distinct fetch credential, dev's secret `DB_PASSWORD` (the test's
/// secret doubles as the read-only token).
const CREDENTIAL_APPS: &str = "\
[[apps]]\nname = \"push-only\"\nremote = \"REMOTE\"\nbuild_command = \"true\"\n\
artifact = \"a.jar\"\nbase_image = \"none\"\ncontainer_port = 80\n\
git_username = \"bot\"\ngit_token = \"PUSH\"\n\
[[apps]]\nname = \"fetch-too\"\nremote = \"REMOTE\"\nbuild_command = \"true\"\n\
artifact = \"a.jar\"\nbase_image = \"none\"\ncontainer_port = 80\n\
git_username = \"bot\"\ngit_token = \"PUSH\"\n\
[apps.fetch_credentials]\nusername = \"reader\"\ntoken_secret = \"DB_PASSWORD\"\n";

/// A coordinator on loopback (plaintext) with app `shop` and env `dev`,
/// whose secret is [`SECRET`]; its URL, shutdown and task.
async fn coordinator(
    dir: &std::path::Path,
    more_apps: &str,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let repo = dir.join("repo");
    common::repo_with_one_commit(&repo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.join("coordinator.toml");
    let config = format!(
        "plaintext = true\nlisten = \"{addr}\"\n\
         [[environments]]\nname = \"dev\"\n[environments.secrets]\nDB_PASSWORD = \"{SECRET}\"\n\
         [[apps]]\nname = \"shop\"\nremote = \"{}\"\nbuild_command = \"true\"\n\
         artifact = \"a.jar\"\nbase_image = \"none\"\ncontainer_port = 80\n{}",
        repo.display(),
        more_apps
            .replace("REMOTE", &repo.display().to_string())
            .replace("PUSH", PUSH_TOKEN)
    );
    std::fs::write(&path, config).unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(gantry_coordinator::serve(
        CoordinatorConfig::load(&path).unwrap(),
        listener,
        shutdown.clone(),
    ));
    (format!("http://{addr}"), shutdown, server)
}

fn up(body: proto::agent_message::Body) -> proto::AgentMessage {
    proto::AgentMessage { body: Some(body) }
}

/// A raw agent `dev-1` of dev with `capacity`, attached and registered:
/// what it sends, and what the coordinator sends it.
async fn dev_agent(
    url: &str,
    capacity: u32,
) -> (
    mpsc::Sender<proto::AgentMessage>,
    tonic::Streaming<proto::CoordinatorMessage>,
) {
    let mut agent = proto::agent_service_client::AgentServiceClient::connect(url.to_owned())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let register = proto::Register {
        name: "dev-1".into(),
        env: "dev".into(),
        capacity,
        protocol: gantry_shared::messages::PROTOCOL,
        ..Default::default()
    };
    tx.send(up(proto::agent_message::Body::Register(register)))
        .await
        .unwrap();
    let mut inbound = agent
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap().expect("registered");
    (tx, inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_of_a_finished_job_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown, server) = coordinator(dir.path(), "").await;
    let (tx, mut inbound) = dev_agent(&url, 1).await;
    let mut client = proto::operator_service_client::OperatorServiceClient::connect(url)
        .await
        .unwrap();
    let deploy = proto::DeployRequest {
        app: "shop".into(),
        env: "dev".into(),
        ..Default::default()
    };
    let job = client.deploy(deploy).await.unwrap().into_inner().id;
    inbound.message().await.unwrap().expect("assignment");

    // An agent that missed the secret in every field it sends.
    let done = proto::JobFinished {
        state: proto::JobState::Succeeded as i32,
        summary: format!("serving with {SECRET}"),
        url: format!("http://127.0.0.1:8080/?key={SECRET}"),
        image: format!("shop:{SECRET}"),
        container: format!("gantry-shop-{SECRET}"),
    };
    // The stage opens with its line; the end rides the summary line.
    let stage = proto::LogLine {
        seq: 1,
        stage: proto::Stage::Deploy as i32,
        text: "==> deploy".into(),
        opens_stage: true,
        ..Default::default()
    };
    let summary = proto::LogLine {
        seq: 2,
        stage: proto::Stage::Deploy as i32,
        text: format!("==> succeeded: serving with {SECRET}"),
        ..Default::default()
    };
    let events: Vec<proto::JobEvent> = [(stage, None), (summary, Some(done))]
        .into_iter()
        .map(|(line, finished)| proto::JobEvent {
            job_id: job,
            lines: Some(vec![line].into()),
            finished,
        })
        .collect();
    for event in events.clone() {
        tx.send(up(proto::agent_message::Body::JobEvent(event)))
            .await
            .unwrap();
    }
    let acked = loop {
        let msg = inbound.message().await.unwrap().expect("an ack");
        match msg.body {
            Some(proto::coordinator_message::Body::Ack(ack)) if ack.seq == 2 => break ack,
            _ => {}
        }
    };
    assert_eq!((acked.job_id, acked.seq), (job, 2));
    // Sent again, as an agent does when an ack was lost: acknowledged
    // again, stored once, and what it reports changes nothing more.
    for event in events {
        tx.send(up(proto::agent_message::Body::JobEvent(event)))
            .await
            .unwrap();
    }
    loop {
        if let Some(proto::coordinator_message::Body::Ack(ack)) = next(&mut inbound).await {
            if ack.seq == 2 {
                break;
            }
        }
    }
    let request = proto::StreamJobLogsRequest {
        job_id: job,
        from_seq: 1,
        follow: false,
    };
    let mut logs = client.stream_job_logs(request).await.unwrap().into_inner();
    let mut stored = Vec::new();
    while let Some(line) = logs.message().await.unwrap() {
        stored.push((line.seq, line.text, line.opens_stage));
    }
    assert_eq!(
        stored,
        [
            (1, "==> deploy".to_owned(), false),
            (2, "==> succeeded: serving with ***".to_owned(), false)
        ],
        "each line once, redacted, stored without the flag"
    );

    let shown = client
        .get_job(proto::GetJobRequest { id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.url, "http://127.0.0.1:8080/?key=***");
    assert_eq!(shown.image, "shop:***");
    assert_eq!(shown.reason, "serving with ***");
    let releases = client
        .list_releases(proto::ListReleasesRequest {
            app: "shop".into(),
            env: "dev".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(releases.releases.len(), 1);
    let everything = format!("{shown:?} {releases:?}");
    assert!(!everything.contains(SECRET), "{everything}");
    assert!(everything.contains("gantry-shop-***"), "{everything}");

    shutdown.cancel();
    drop(tx);
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_carries_the_fetch_credential_never_the_push_one() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown, server) = coordinator(dir.path(), CREDENTIAL_APPS).await;
    let (tx, mut inbound) = dev_agent(&url, 2).await;
    let mut client = proto::operator_service_client::OperatorServiceClient::connect(url)
        .await
        .unwrap();
    let mut specs = std::collections::BTreeMap::new();
    for app in ["push-only", "fetch-too"] {
        let deploy = proto::DeployRequest {
            app: app.into(),
            env: "dev".into(),
            ..Default::default()
        };
        client.deploy(deploy).await.unwrap();
        let spec = loop {
            let msg = inbound.message().await.unwrap().expect("an assignment");
            if let Some(proto::coordinator_message::Body::Assign(spec)) = msg.body {
                break spec;
            }
        };
        specs.insert(app, spec);
    }
    for (app, spec) in &specs {
        let everything = format!("{spec:?}");
        assert!(
            !everything.contains(PUSH_TOKEN),
            "{app}: the push token went to the agent: {everything}"
        );
    }
    let push_only = specs["push-only"].app.clone().unwrap();
    assert_eq!(
        (
            push_only.fetch_username.as_str(),
            push_only.fetch_token.as_str()
        ),
        ("", "")
    );
    let fetch_too = specs["fetch-too"].app.clone().unwrap();
    assert_eq!(
        (
            fetch_too.fetch_username.as_str(),
            fetch_too.fetch_token.as_str()
        ),
        ("reader", SECRET)
    );
    shutdown.cancel();
    drop(tx);
    server.await.unwrap().unwrap();
}

/// Sends its bytes as they are; reads nothing back.
#[derive(Default)]
struct Garbage;

impl Codec for Garbage {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = Garbage;
    type Decoder = Garbage;

    fn encoder(&mut self) -> Self::Encoder {
        Garbage
    }

    fn decoder(&mut self) -> Self::Decoder {
        Garbage
    }
}

impl Encoder for Garbage {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Garbage {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// Not a protobuf message: a varint that never ends.
const NOT_A_MESSAGE: [u8; 3] = [0xff, 0xff, 0xff];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_a_message_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown, server) = coordinator(dir.path(), "").await;
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());

    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/gantry.v1.OperatorService/Deploy");
    let request = tonic::Request::new(NOT_A_MESSAGE.to_vec());
    let err = grpc.unary(request, path, Garbage).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("not a valid DeployRequest"),
        "{}",
        err.message()
    );

    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/gantry.v1.AgentService/Attach");
    let stream = futures::stream::iter([NOT_A_MESSAGE.to_vec()]);
    let err = grpc
        .streaming(tonic::Request::new(stream), path, Garbage)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("not a valid AgentMessage"),
        "{}",
        err.message()
    );

    // Nothing was created, and the coordinator still serves.
    let mut client = proto::operator_service_client::OperatorServiceClient::new(channel);
    let jobs = client
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.jobs.is_empty(), "{jobs:?}");
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// The body of the coordinator's next message, within 30 s.
async fn next(
    inbound: &mut tonic::Streaming<proto::CoordinatorMessage>,
) -> Option<proto::coordinator_message::Body> {
    tokio::time::timeout(std::time::Duration::from_secs(30), inbound.message())
        .await
        .expect("the coordinator answers within 30 s")
        .unwrap()
        .expect("the stream stays open")
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_refused_acknowledged_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown, server) = coordinator(dir.path(), "").await;

    // A registration with a malformed name is refused before anything is held.
    let mut raw = proto::agent_service_client::AgentServiceClient::connect(url.clone())
        .await
        .unwrap();
    let register = proto::Register {
        name: "Dev 1".into(),
        env: "dev".into(),
        capacity: 1,
        protocol: gantry_shared::messages::PROTOCOL,
        ..Default::default()
    };
    let first = up(proto::agent_message::Body::Register(register));
    let err = raw
        .attach(futures::stream::iter([first]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("invalid agent name"),
        "{}",
        err.message()
    );

    let (tx, mut inbound) = dev_agent(&url, 1).await;
    let mut client = proto::operator_service_client::OperatorServiceClient::connect(url)
        .await
        .unwrap();
    let deploy = proto::DeployRequest {
        app: "shop".into(),
        env: "dev".into(),
        ..Default::default()
    };
    let job = client.deploy(deploy).await.unwrap().into_inner().id;
    inbound.message().await.unwrap().expect("assignment");

    let line = |seq: u64, stream: i32, text: &str| proto::LogLine {
        seq,
        stream,
        text: text.into(),
        ..Default::default()
    };
    let bad_end = proto::JobFinished {
        state: proto::JobState::Running as i32,
        ..Default::default()
    };
    let stdout = proto::LogStream::Stdout as i32;
    let events = [
        (vec![line(1, stdout, "a good line")], None),
        (
            vec![proto::LogLine {
                stage: 99,
                opens_stage: true,
                ..line(2, stdout, "==> ?")
            }],
            None,
        ),
        (vec![line(3, 77, "a line from no stream")], None),
        (vec![], None),
        (vec![line(4, stdout, "==> ?")], Some(bad_end)),
        (
            vec![proto::LogLine {
                opens_stage: true,
                ..line(5, stdout, "opens no stage")
            }],
            None,
        ),
    ];
    for (lines, finished) in events {
        let event = proto::JobEvent {
            job_id: job,
            lines: Some(lines.into()),
            finished,
        };
        tx.send(up(proto::agent_message::Body::JobEvent(event)))
            .await
            .unwrap();
    }
    // The refused are acknowledged too (sending them again cannot make
    // them valid), the last of them in whatever batch it came.
    loop {
        if let Some(proto::coordinator_message::Body::Ack(ack)) = next(&mut inbound).await {
            assert_eq!(ack.job_id, job);
            if ack.seq == 5 {
                break;
            }
        }
    }
    // The session still serves: a heartbeat that asks is answered.
    let beat = proto::Heartbeat { answer: true };
    tx.send(up(proto::agent_message::Body::Heartbeat(beat)))
        .await
        .unwrap();
    while !matches!(
        next(&mut inbound).await,
        Some(proto::coordinator_message::Body::Heartbeat(_))
    ) {}

    let shown = client
        .get_job(proto::GetJobRequest { id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.state, proto::JobState::Assigned as i32, "{shown:?}");
    assert_eq!(shown.stage, proto::Stage::Unspecified as i32, "{shown:?}");
    let request = proto::StreamJobLogsRequest {
        job_id: job,
        from_seq: 1,
        follow: false,
    };
    let mut logs = client.stream_job_logs(request).await.unwrap().into_inner();
    let mut texts = Vec::new();
    while let Some(line) = logs.message().await.unwrap() {
        texts.push((line.seq, line.text));
    }
    assert_eq!(texts, [(1, "a good line".to_owned())]);

    shutdown.cancel();
    drop(tx);
    server.await.unwrap().unwrap();
}

/// An agent of another protocol (one from before every event was a line,
/// which sends none) is refused at `Register`, naming what to upgrade,
/// before any of its events could be misread; the coordinator serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_another_protocol_is_refused_naming_what_to_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown, server) = coordinator(dir.path(), "").await;
    let mut agent = proto::agent_service_client::AgentServiceClient::connect(url.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let old = proto::Register {
        name: "dev-1".into(),
        env: "dev".into(),
        capacity: 1,
        version: "0.0.9".into(),
        ..Default::default()
    };
    tx.send(up(proto::agent_message::Body::Register(old)))
        .await
        .unwrap();
    let refused = agent.attach(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        format!(
            "agent dev-1 (gantry-agent 0.0.9) speaks protocol 0 of the agent stream; this \
             coordinator (version {}) speaks protocol {}: install the coordinator's version of \
             gantry-agent on that server",
            env!("CARGO_PKG_VERSION"),
            gantry_shared::messages::PROTOCOL
        )
    );
    // One of this protocol registers at once.
    let (_tx, _inbound) = dev_agent(&url, 1).await;
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
