//! Setting up a secure Gantry the way the README tells an operator to,
//! through the three binaries: `ca init`, `token new`, `agent enroll`,
//! serving over TLS, `gantry-agent join` and `run`, `gantry login`, and
//! the CLI with its saved credentials.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use gantry_shared::tls::JoinToken;
use gantry_tests::{eventually, node_image::bin_dir, KillOnDrop};

fn run(program: &str, args: &[&str], config_dir: &Path) -> anyhow::Result<Output> {
    Ok(Command::new(bin_dir()?.join(program))
        .args(args)
        .env("GANTRY_CONFIG_DIR", config_dir)
        .env_remove("GANTRY_COORDINATOR")
        .env_remove("GANTRY_TOKEN")
        .output()?)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_up_tls_tokens_and_an_agent_with_the_binaries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.path().join("coordinator.toml");
    let base = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n\
         [[environments]]\nname = \"dev\"\ndeploy = [\"developer\"]\n"
    );
    std::fs::write(&config, &base)?;
    let cfg = config.to_str().expect("a UTF-8 temp path");
    let coordinator = |args: &[&str]| {
        let mut all = vec!["--config", cfg];
        all.extend_from_slice(args);
        run("gantry-coordinator", &all, &home)
    };

    // Without a CA and without plaintext, it refuses to serve, saying why.
    let out = coordinator(&[])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gantry-coordinator ca init"),
        "{}",
        stderr(&out)
    );

    // ca init: keys private, certificates readable; never twice.
    let out = coordinator(&["ca", "init", "--host", "gantry.example.com"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("gantry.example.com, localhost, 127.0.0.1"),
        "{}",
        stdout(&out)
    );
    let tls = dir.path().join("data").join("tls");
    for key in ["ca.key", "server.key", "join.key"] {
        assert_eq!(mode(&tls.join(key))?, 0o600, "{key}");
    }
    assert_eq!(mode(&tls)?, 0o700);
    let again = coordinator(&["ca", "init"])?;
    assert!(!again.status.success());
    assert!(stderr(&again).contains("a CA exists"), "{}", stderr(&again));

    // token new prints the token once and the entry to add.
    let out = coordinator(&["token", "new", "--name", "alice", "--role", "developer"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("the token is printed")
        .to_owned();
    let entry = &text[text.find("[[users]]").expect("the entry is printed")..];
    std::fs::write(&config, format!("{base}\n{entry}"))?;
    assert!(
        !std::fs::read_to_string(&config)?.contains(&token),
        "only the hash is kept"
    );

    // agent enroll: a token for a configured environment only.
    let out = coordinator(&["agent", "enroll", "--env", "prod", "--name", "prod-1"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown environment prod"),
        "{}",
        stderr(&out)
    );
    let out = coordinator(&["agent", "enroll", "--env", "dev", "--name", "dev-1"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let join_token = stdout(&out).trim().to_owned();
    let parsed = JoinToken::parse(&join_token)?;
    assert_eq!(
        (parsed.env.as_str(), parsed.name.as_str()),
        ("dev", "dev-1")
    );

    // Serve over TLS.
    let _server = KillOnDrop(
        Command::new(bin_dir()?.join("gantry-coordinator"))
            .args(["--config", cfg])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let url = format!("https://127.0.0.1:{port}");
    let ca = tls.join("ca.pem");
    let ca_arg = ca.to_str().expect("a UTF-8 temp path");
    // gantry login checks the token, then saves it privately.
    let login = eventually(
        "the coordinator to accept a login",
        Duration::from_secs(30),
        || {
            let args = [
                "--coordinator",
                &url,
                "login",
                "--token",
                &token,
                "--ca",
                ca_arg,
            ];
            let out = run("gantry", &args, &home);
            async move {
                let out = out?;
                Ok(out.status.success().then_some(out))
            }
        },
    )
    .await?;
    assert!(
        stdout(&login).contains("as alice (roles developer)"),
        "{}",
        stdout(&login)
    );
    assert_eq!(mode(&home.join("credentials.toml"))?, 0o600);
    let bad = run(
        "gantry",
        &[
            "--coordinator",
            &url,
            "login",
            "--token",
            "gat_wrong",
            "--ca",
            ca_arg,
        ],
        &dir.path().join("elsewhere"),
    )?;
    assert!(stderr(&bad).contains("Unauthenticated"), "{}", stderr(&bad));
    // Later commands need no flags.
    let whoami = run("gantry", &["whoami"], &home)?;
    assert!(
        stdout(&whoami).contains("deploys to: dev"),
        "{}",
        stdout(&whoami)
    );

    // gantry-agent join, then run with the certificate; the CLI sees it.
    let agent_tls = dir.path().join("agent-tls");
    let tls_arg = agent_tls.to_str().expect("a UTF-8 temp path");
    let out = run(
        "gantry-agent",
        &[
            "join",
            "--coordinator",
            &url,
            "--token",
            &join_token,
            "--tls-dir",
            tls_arg,
        ],
        &home,
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("enrolled as agent dev-1 of dev"),
        "{}",
        stdout(&out)
    );
    assert_eq!(mode(&agent_tls.join("agent.key"))?, 0o600);
    assert_eq!(mode(&agent_tls)?, 0o700);
    assert_eq!(mode(&home)?, 0o700, "the CLI's config directory");
    let work = dir.path().join("agent-work");
    let _agent = KillOnDrop(
        Command::new(bin_dir()?.join("gantry-agent"))
            .args(["--coordinator", &url, "--env", "dev", "--name", "dev-1"])
            .args(["--tls-dir", tls_arg, "--work-dir"])
            .arg(&work)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    eventually(
        "dev-1 to show as connected",
        Duration::from_secs(30),
        || {
            let out = run("gantry", &["agents", "--output", "json"], &home);
            async move {
                let agents: serde_json::Value = serde_json::from_slice(&out?.stdout)?;
                let connected =
                    agents.as_array().into_iter().flatten().any(|a| {
                        a["name"] == "dev-1" && a["env"] == "dev" && a["connected"] == true
                    });
                Ok(connected.then_some(()))
            }
        },
    )
    .await?;
    // The developer may not read the audit trail.
    let out = run("gantry", &["audit"], &home)?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("PermissionDenied"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
