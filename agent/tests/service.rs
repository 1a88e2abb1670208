//! The agent as a system service: `install` writes a config and a systemd
//! unit (systemd itself cannot run here, so `--no-systemctl`), `run` starts
//! from that config and connects, SIGTERM stops it cleanly, and `uninstall`
//! removes what `install` wrote.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gantry_shared::{config::CoordinatorConfig, proto};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_gantry-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_run_sigterm_uninstall() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config_path = dir.path().join("coordinator.toml");
    std::fs::write(
        &config_path,
        format!("plaintext = true\nlisten = \"{addr}\"\n[[environments]]\nname = \"prod\"\n"),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let coordinator = tokio::spawn(gantry_coordinator::serve(
        CoordinatorConfig::load(&config_path).unwrap(),
        listener,
        shutdown.clone(),
    ));
    let url = format!("http://{addr}");

    let etc = dir.path().join("etc/gantry/agent.toml");
    let units = dir.path().join("units");
    let work = dir.path().join("work");
    let out = Command::new(BIN)
        .args([
            "install",
            "--no-systemctl",
            "--coordinator",
            &url,
            "--env",
            "prod",
            "--name",
            "prod-7",
        ])
        .args(["--label", "zone=a", "--drain-grace-secs", "30"])
        // The default, gantry-build, is created by install only where it
        // runs systemctl; this host has nobody.
        .args(["--build-user", "nobody"])
        .arg("--work-dir")
        .arg(&work)
        .arg("--config")
        .arg(&etc)
        .arg("--unit-dir")
        .arg(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let unit = std::fs::read_to_string(units.join("gantry-agent.service")).unwrap();
    for line in [
        format!("ExecStart={BIN} run --config {}", etc.display()),
        "Restart=on-failure".into(),
        "After=network-online.target docker.service".into(),
        "Requires=docker.service".into(),
        "KillSignal=SIGTERM".into(),
        "TimeoutStopSec=60".into(),
        "WantedBy=multi-user.target".into(),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line:?} missing from\n{unit}"
        );
    }
    let config = std::fs::read_to_string(&etc).unwrap();
    assert!(
        config.contains(&format!("coordinator = \"{url}\""))
            && config.contains("name = \"prod-7\""),
        "{config}"
    );
    assert!(config.contains("zone = \"a\""), "{config}");
    assert!(config.contains("build_user = \"nobody\""), "{config}");
    assert_eq!(
        std::fs::metadata(&etc).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // `run` uses exactly that file, connects, and stops on SIGTERM.
    let mut agent = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&etc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = proto::operator_service_client::OperatorServiceClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = client
            .list_agents(proto::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        if let Some(a) = agents.iter().find(|a| a.name == "prod-7" && a.connected) {
            assert_eq!((a.env.as_str(), a.labels["zone"].as_str()), ("prod", "a"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not connect: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        work.join("spool").is_dir(),
        "the agent used the configured work dir"
    );

    let out = Command::new(BIN)
        .args(["uninstall", "--no-systemctl", "--config"])
        .arg(&etc)
        .arg("--unit-dir")
        .arg(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!etc.exists() && !units.join("gantry-agent.service").exists());

    shutdown.cancel();
    coordinator.await.unwrap().unwrap();
}

#[test]
fn a_bad_config_file_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "coordinator = \"http://c:1\"\nenv = \"prod\"\nname = \"Prod 1\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("invalid agent name"),
        "{err}"
    );
}
