//! Remote credentials, end to end, against a real git smart-HTTP server
//! that demands HTTP Basic authentication (`git http-backend` behind
//! `tests/python/git_http_server.py`): the coordinator lists and creates
//! branches with its own (push) token, which never leaves it; the agent
//! fetches with the app's read-only fetch credential, a secret of the
//! environment; the build runs as an unprivileged user that sees neither
//! token nor the agent's own files; no token shows in answers, errors or
//! job logs.

use std::io::BufRead;

use gantry_shared::{proto, JobState};
use gantry_tests::*;
use tonic::Code;

const TOKEN: &str = "s3cret-token-4711";
const WRONG: &str = "wrong-pass-0815";
/// The read-only token, fetch only.
const READ_TOKEN: &str = "read-only-token-2342";
/// The secret of dev that holds it.
const READ_SECRET: &str = "GIT_READ_TOKEN";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Serves `root`'s bare repositories on `port`, for user "bot" with TOKEN
/// (fetch and push) and "reader" with READ_TOKEN (fetch only).
fn git_server(root: &std::path::Path, port: u16) -> anyhow::Result<KillOnDrop> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/git_http_server.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(root)
        .args([&port.to_string(), "bot", TOKEN, "reader", READ_TOKEN])
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
    let (app, wrong, push_only) = ("tr-creds", "tr-creds-wrong", "tr-creds-push-only");
    let port = free_port()?;
    let mut with = TestApp::new(app);
    with.remote = Some(format!("http://127.0.0.1:{port}/{app}.git"));
    with.git_credentials = Some(("bot".into(), TOKEN.into()));
    with.fetch_credentials = Some(("reader".into(), READ_SECRET.into()));
    // What a build can see and reach: its user, its environment, git's
    // configuration, and the agent's mirror of the app beside its workspace.
    with.build_command = format!(
        "echo \"build uid $(id -u)\" && env | sort && (git config --list --show-origin || true) \
         && (cat ../../../mirrors/{app}.git/config 2>&1 || true) && {}",
        gantry_cli::sample::BUILD_COMMAND
    );
    let mut bad = TestApp::new(wrong);
    bad.remote = Some(format!("http://bot:{WRONG}@127.0.0.1:{port}/{app}.git"));
    // The coordinator's credential only: agents get none.
    let mut only_push = TestApp::new(push_only);
    only_push.remote = with.remote.clone();
    only_push.git_credentials = with.git_credentials.clone();
    let mut h = Harness::start_with_secrets(
        &[with, bad, only_push],
        &[("dev", &[])],
        &[("dev", READ_SECRET, READ_TOKEN)],
    )
    .await?;
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

    // The workspace's parents are the test's; an installed agent's work
    // dir is under /var/lib, which others may enter.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let nobody = gantry_agent::build_user::BuildUser::lookup("nobody")?;
    h.start_agent_as("dev", "dev-1", "nobody")?;
    let (lines, done) = deploy(&mut client, app, "dev", "feature/creds").await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert!(get(&done.url, "/").await?.1.starts_with("Hello v1"));
    let shown_lines = texts(&lines);
    for text in &shown_lines {
        assert!(
            !text.contains(TOKEN) && !text.contains(READ_TOKEN),
            "a token leaked into the log: {text}"
        );
    }
    let build_uid = format!("build uid {}", nobody.uid);
    assert!(
        shown_lines.contains(&build_uid.as_str()),
        "{shown_lines:#?}"
    );
    assert!(
        shown_lines.contains(&"HOME=/nonexistent"),
        "{shown_lines:#?}"
    );
    // The fetch token is a secret of dev: the build has it, the log shows stars.
    assert!(
        shown_lines.contains(&format!("{READ_SECRET}=***").as_str()),
        "{shown_lines:#?}"
    );
    assert!(
        shown_lines
            .iter()
            .any(|t| t.contains("Permission denied")
                && t.contains(&format!("mirrors/{app}.git/config"))),
        "the build read the agent's mirror: {shown_lines:#?}"
    );

    // An app with the coordinator's credential only: the agent has none, so
    // the authenticated remote refuses its fetch.
    let (lines, done) = deploy(&mut client, push_only, "dev", "main").await?;
    assert_eq!(state(&done), JobState::Failed, "{}", done.reason);
    assert!(
        done.reason.contains("asks for credentials"),
        "{}",
        done.reason
    );
    let shown = format!("{:?} {done:?}", texts(&lines));
    assert!(!shown.contains(TOKEN), "{shown}");

    let apps = client
        .list_apps(proto::ListAppsRequest {})
        .await?
        .into_inner();
    let shown = format!("{apps:?}");
    assert!(!shown.contains(TOKEN) && !shown.contains(WRONG), "{shown}");
    h.shutdown().await
}
