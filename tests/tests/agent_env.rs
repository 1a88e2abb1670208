//! An agent configured through its documented variables deploys an app
//! behind its stable port: first one started from variables alone (no
//! settings on its command line), then one started with flags in a shell
//! where `GANTRY_COORDINATOR` is exported for the CLI (as the demo
//! suggests), whose proxy inherited that variable and failed to parse.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use gantry_shared::JobState;
use gantry_tests::*;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The agent binary, publishing on loopback (the one setting with no
/// variable), with `vars` added to this test's environment.
fn agent(bin: &Path, vars: &[(&str, String)], flags: &[&str]) -> anyhow::Result<KillOnDrop> {
    let child = Command::new(bin)
        .args(["--publish-ip", "127.0.0.1"])
        .args(flags)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(KillOnDrop(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_configured_by_variables_deploy_behind_the_stable_port() -> anyhow::Result<()> {
    let app = "ae-env-proxy";
    let port = free_port()?;
    let mut test_app = TestApp::new(app);
    test_app.public_port = Some(port);
    test_app.health_timeout_secs = 30;
    let h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    let mut client = h.client().await?;
    let stable = format!("http://127.0.0.1:{port}");
    let bin = node_image::bin_dir()?.join("gantry-agent");

    // Everything from variables.
    let mut first = agent(
        &bin,
        &[
            ("GANTRY_COORDINATOR", h.url.clone()),
            ("GANTRY_ENV", "dev".into()),
            ("GANTRY_AGENT_NAME", "ae-env-1".into()),
            (
                "GANTRY_WORK_DIR",
                h.work_dir("ae-env-1").display().to_string(),
            ),
        ],
        &[],
    )?;
    let (_, done) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert_eq!(done.url, stable);
    let answer = get(&stable, "/").await?;
    assert!(answer.1.starts_with("Hello v1"), "{answer:?}");
    first.kill();
    h.stop_proxies();
    eventually("the first proxy to stop", Duration::from_secs(10), || {
        let url = stable.clone();
        async move { Ok(get(&url, "/").await.is_err().then_some(())) }
    })
    .await?;

    // Flags, with GANTRY_COORDINATOR exported as for the CLI.
    let work = h.work_dir("ae-env-2");
    let _second = agent(
        &bin,
        &[("GANTRY_COORDINATOR", h.url.clone())],
        &[
            "--coordinator",
            &h.url,
            "--env",
            "dev",
            "--name",
            "ae-env-2",
            "--work-dir",
            work.to_str().expect("UTF-8 temp path"),
        ],
    )?;
    h.commit_version(app, "main", "Hello v2")?;
    let (_, done) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    let answer = get(&stable, "/").await?;
    assert!(answer.1.starts_with("Hello v2"), "{answer:?}");
    h.shutdown().await
}
