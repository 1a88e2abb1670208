//! The `gantry` binary at the edges an operator meets: a closed pipe, a
//! build that prints terminal escapes, and a coordinator address that hides
//! another host behind an `@`.

use std::process::{Command, Stdio};

use anyhow::Context;
use gantry_shared::JobState;
use gantry_tests::*;

/// Runs the built `gantry` with `stdout` as its standard output; returns
/// (exit code, stdout if captured, stderr).
fn gantry(url: &str, args: &[&str], stdout: Stdio) -> anyhow::Result<(i32, String, String)> {
    let bin = node_image::bin_dir()?.join("gantry");
    let out = Command::new(bin)
        .env("GANTRY_COORDINATOR", url)
        .env_remove("GANTRY_TOKEN")
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()?;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Ok((
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    ))
}

/// A pipe whose reading end is already closed: every write to it fails
/// with EPIPE, as when `| head` has read what it wanted and exited.
fn closed_pipe() -> anyhow::Result<Stdio> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    Ok(writer.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_survives_closed_pipes_hostile_output_and_tricky_addresses() -> anyhow::Result<()> {
    let app = "e2e-cli-edges";
    let mut test_app = TestApp::new(app);
    // A build that tries to retitle the terminal, clear it and ring its bell.
    test_app.build_command = format!(
        "printf '\\033]0;owned\\007\\033[2Jcleared\\n' && {}",
        test_app.build_command
    );
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    let (_, job) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&job), JobState::Succeeded, "{}", job.reason);
    let url = h.url.clone();

    // Shown, not obeyed: the escape characters are printed as text.
    let (code, out, err) = gantry(&url, &["logs", "1"], Stdio::piped())?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l == "\\x1b]0;owned\\x07\\x1b[2Jcleared"),
        "{out}"
    );
    assert!(!out.contains('\u{1b}'), "a raw ESC reached the terminal");
    // JSON keeps the text as it was, escaped by JSON itself.
    let (_, json, _) = gantry(&url, &["logs", "1", "--output", "json"], Stdio::piped())?;
    assert!(
        json.contains(r#""text":"\u001b]0;owned\u0007\u001b[2Jcleared""#),
        "{json}"
    );

    // `gantry ... | head`: a closed stdout ends every command quietly, with 0.
    for args in [
        &["logs", "1"][..],
        &["logs", "1", "-f"],
        &["jobs"],
        &["job", "1"],
        &["apps"],
        &["agents"],
        &["releases", "--app", app, "--env", "dev"],
        &["logs", "1", "--output", "json"],
    ] {
        let (code, _, err) = gantry(&url, args, closed_pipe()?)?;
        assert_eq!((code, err.as_str()), (0, ""), "gantry {args:?}");
    }

    // An address with user information names the host after the `@`: it is
    // refused before a token could go anywhere.
    let tricky = "http://127.0.0.1:7700@127.0.0.2";
    let out = Command::new(node_image::bin_dir()?.join("gantry"))
        .env("GANTRY_TOKEN", "secret-token")
        .args(["--coordinator", tricky, "jobs"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("carries user information before an @"),
        "{err}"
    );
    h.shutdown().await
}

/// Lines of `child`'s stdout, as they come, on a channel.
fn stdout_lines(child: &mut std::process::Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_carries_on_across_a_coordinator_restart() -> anyhow::Result<()> {
    let app = "e2e-cli-follow";
    let gate = tempfile::tempdir()?;
    let open = gate.path().join("open");
    let mut test_app = TestApp::new(app);
    // Half the lines, a wait for the test, the other half, then the build.
    test_app.build_command = format!(
        "seq 1 50 && while [ ! -e {} ]; do sleep 0.1; done && seq 51 100 && {}",
        open.display(),
        test_app.build_command
    );
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    let job = client
        .deploy(gantry_shared::proto::DeployRequest {
            app: app.into(),
            env: "dev".into(),
            ..Default::default()
        })
        .await?
        .into_inner();

    let mut follower = KillOnDrop(
        Command::new(node_image::bin_dir()?.join("gantry"))
            .env("GANTRY_COORDINATOR", &h.url)
            .args(["logs", &job.id.to_string(), "-f"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let mut lines = stdout_lines(&mut follower.0);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEPLOY_DEADLINE;
    while seen.last().map(String::as_str) != Some("50") {
        let line = tokio::time::timeout_at(deadline, lines.recv()).await?;
        seen.push(line.context("the follower ended before line 50")?);
    }

    let printed_before = seen.len();
    // The coordinator goes away; the rest of the build runs while it is down
    // (the agent spools its lines), then it comes back on the same address.
    h.stop_coordinator().await?;
    std::fs::write(&open, "")?;
    h.start_coordinator().await?;

    let exit = tokio::task::spawn_blocking(move || {
        let status = follower.0.wait();
        let mut err = String::new();
        if let Some(mut stderr) = follower.0.stderr.take() {
            std::io::Read::read_to_string(&mut stderr, &mut err).ok();
        }
        (status, err)
    });
    let (status, err) = tokio::time::timeout_at(deadline, exit).await??;
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    assert!(status?.success(), "the follower failed: {err}");
    // It resumes right after the last line it printed, and says so.
    let resume = format!("resuming at line {}", printed_before + 1);
    assert!(
        err.contains("lost the coordinator")
            && err.contains(&format!("reconnecting, then {resume}"))
            && err.contains(&format!("reconnected; {resume}")),
        "{err}"
    );
    let numbers: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|l| l.parse::<u32>().is_ok())
        .collect();
    let expected: Vec<String> = (1..=100).map(|n| n.to_string()).collect();
    assert_eq!(numbers, expected, "every line once, in order");
    assert!(
        seen.last().is_some_and(|l| l.starts_with("==> succeeded")),
        "{seen:?}"
    );
    h.shutdown().await
}
