//! The `gantry` binary at the edges an operator meets: a closed pipe, a
//! build that prints terminal escapes, and a coordinator address that hides
//! another host behind an `@`.

use std::process::{Command, Stdio};

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
