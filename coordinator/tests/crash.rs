//! Logs are exactly-once and in order even when the coordinator dies: a job
//! prints 200,000 lines while the coordinator binary is killed with SIGKILL
//! and restarted three times. The agent spools every event and resends what
//! was not acknowledged; the coordinator stores each (job, seq) once.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use gantry_agent::AgentOptions;
use gantry_shared::{proto, AgentName, EnvName, JobState};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_gantry-coordinator");
const LINES: u64 = 200_000;

type Client = proto::operator_service_client::OperatorServiceClient<tonic::transport::Channel>;

/// The coordinator process, killed if the test fails.
struct Coordinator(Child);

impl Coordinator {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start(config: &Path) -> Coordinator {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Coordinator(child)
}

/// A client, once the coordinator answers.
async fn client(url: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
        {
            return Client::new(channel);
        }
        assert!(Instant::now() < deadline, "the coordinator did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_job(url: &str, id: u64) -> proto::Job {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(job) = client(url).await.get_job(proto::GetJobRequest { id }).await {
            return job.into_inner();
        }
        assert!(Instant::now() < deadline, "GetJob kept failing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_lines_survive_three_sigkills_of_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    common::repo_with_one_commit(&repo_dir);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "plaintext = true\nlisten = \"127.0.0.1:{port}\"\nagent_lease_secs = 60\n[[environments]]\nname = \"dev\"\n\
             [[apps]]\nname = \"printer\"\nremote = \"{}\"\nbuild_command = \"seq 1 {LINES} | sed 's/^/line /'; exit 3\"\n\
             artifact = \"none.jar\"\nbase_image = \"unused\"\ncontainer_port = 8080\n",
            repo_dir.display()
        ),
    )
    .unwrap();
    let mut coordinator = start(&config);
    let mut client_ = client(&url).await;

    let shutdown = CancellationToken::new();
    let agent = AgentOptions {
        coordinator: url.clone(),
        name: AgentName::new("dev-1").unwrap(),
        env: EnvName::new("dev").unwrap(),
        work_dir: dir.path().join("agent"),
        capacity: 1,
        labels: Default::default(),
        publish_ip: "127.0.0.1".into(),
        health_host: "127.0.0.1".into(),
        public_host: "127.0.0.1".into(),
        drain_grace: Duration::from_secs(5),
        proxy_program: None,
        tls_dir: None,
        build_user: None,
    };
    let agent = tokio::spawn(gantry_agent::run(agent, shutdown.clone()));

    let request = proto::DeployRequest {
        app: "printer".into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let id = client_.deploy(request).await.unwrap().into_inner().id;

    // Kill the coordinator each time another tenth of the lines is stored.
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let job = get_job(&url, id).await;
        if JobState::from_proto(job.state).unwrap().is_terminal() {
            break job;
        }
        if kills < 3 && job.last_seq > (kills + 1) * LINES / 10 {
            coordinator.kill();
            kills += 1;
            coordinator = start(&config);
        }
        assert!(
            Instant::now() < deadline,
            "the job did not end; {} lines stored",
            job.last_seq
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        kills, 3,
        "the job ended before three kills ({} lines)",
        done.last_seq
    );
    assert_eq!(JobState::from_proto(done.state), Some(JobState::Failed));
    assert!(
        done.reason.starts_with("build failed with exit code 3"),
        "{}",
        done.reason
    );

    let request = proto::StreamJobLogsRequest {
        job_id: id,
        from_seq: 1,
        follow: false,
    };
    let mut stream = client(&url)
        .await
        .stream_job_logs(request)
        .await
        .unwrap()
        .into_inner();
    let mut expected_seq = 1;
    let mut next_line = 1;
    while let Some(line) = stream.message().await.unwrap() {
        assert_eq!(line.seq, expected_seq, "no gap and no repeat");
        expected_seq += 1;
        if let Some(n) = line.text.strip_prefix("line ") {
            assert_eq!(
                n.parse::<u64>().unwrap(),
                next_line,
                "build output in order"
            );
            next_line += 1;
        }
    }
    assert_eq!(next_line - 1, LINES, "every line stored once");

    shutdown.cancel();
    agent.await.unwrap().unwrap();
    coordinator.kill();
}
