//! Remote credentials, end to end, against a real git smart-HTTP server
//! that demands HTTP Basic authentication (`git http-backend` behind
//! `tests/python/git_http_server.py`): the coordinator lists and creates
//! branches and the agent fetches with the token from the coordinator's
//! config, and the token never shows in answers, errors or job logs.

use std::io::BufRead;

use gantry_shared::{proto, JobState};
use gantry_tests::*;
use tonic::Code;

const TOKEN: &str = "s3cret-token-4711";
const WRONG: &str = "wrong-pass-0815";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Serves `root`'s bare repositories on `port`, for user "bot" with TOKEN.
fn git_server(root: &std::path::Path, port: u16) -> anyhow::Result<KillOnDrop> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/git_http_server.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(root)
        .args([&port.to_string(), "bot", TOKEN])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let server = KillOnDrop(child);
    let mut first = String::new();
    std::io::BufReader::new(stdout).read_line(&mut first)?;
    anyhow::ensure!(
        first.trim() == "ready",
        "the git server did not start: {first:?}"
    );
    Ok(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_an_authenticated_remote_and_never_show() -> anyhow::Result<()> {
    let (app, wrong) = ("e2e-creds", "e2e-creds-wrong");
    let port = free_port()?;
    let mut with = TestApp::new(app);
    with.remote = Some(format!("http://127.0.0.1:{port}/{app}.git"));
    with.git_credentials = Some(("bot".into(), TOKEN.into()));
    let mut bad = TestApp::new(wrong);
    bad.remote = Some(format!("http://bot:{WRONG}@127.0.0.1:{port}/{app}.git"));
    let mut h = Harness::start(&[with, bad], &[("dev", &[])]).await?;
    let _server = git_server(&h.dir.path().join("repos"), port)?;
    let mut client = h.client().await?;

    let branches = |name: &str| proto::ListBranchesRequest { app: name.into() };
    let list = client
        .list_branches(branches(app))
        .await?
        .into_inner()
        .branches;
    assert_eq!(
        list.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        ["main"]
    );

    let refused = client.list_branches(branches(wrong)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(!refused.message().contains(WRONG), "{}", refused.message());
    assert!(
        refused.message().contains("***@127.0.0.1"),
        "{}",
        refused.message()
    );

    let create = proto::CreateBranchRequest {
        app: app.into(),
        name: "feature/creds".into(),
        from: String::new(),
    };
    let created = client.create_branch(create).await?.into_inner();
    let remote = git2::Repository::open(h.remote(app))?;
    let pushed = remote.find_branch("feature/creds", git2::BranchType::Local)?;
    assert_eq!(
        pushed.get().target().map(|o| o.to_string()),
        Some(created.commit)
    );

    h.start_agent("dev", "dev-1")?;
    let (lines, done) = deploy(&mut client, app, "dev", "feature/creds").await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert!(get(&done.url, "/").await?.1.starts_with("Hello v1"));
    for text in texts(&lines) {
        assert!(
            !text.contains(TOKEN),
            "the token leaked into the log: {text}"
        );
    }

    let apps = client
        .list_apps(proto::ListAppsRequest {})
        .await?
        .into_inner();
    let shown = format!("{apps:?}");
    assert!(!shown.contains(TOKEN) && !shown.contains(WRONG), "{shown}");
    h.shutdown().await
}
