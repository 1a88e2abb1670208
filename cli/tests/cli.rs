//! The `gantry` binary as an operator uses it: the demo, deploys that exit
//! by their outcome, tables and JSON, and errors that say what to fix.

use std::{collections::BTreeMap, process::Command};

use gantry_agent::{docker, AgentOptions};
use gantry_cli::{jre_image, sample};
use gantry_shared::{config::CoordinatorConfig, AgentName, EnvName};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_gantry");

/// Runs `gantry ARGS` off the runtime's threads; returns (exit code, stdout, stderr).
async fn gantry(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.env("GANTRY_COORDINATOR", url).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("gantry runs"))
        .await
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

async fn remove_app(app: &str) {
    let engine = docker::connect().await.unwrap();
    docker::remove_app_objects(&engine, app).await.unwrap();
}

/// Stops the test's services and removes its app's Docker objects when
/// dropped, so a failing test leaves nothing behind.
struct CleanUp(&'static str, CancellationToken);

impl Drop for CleanUp {
    fn drop(&mut self) {
        self.1.cancel();
        let app = self.0;
        // Drop cannot await: a thread with its own runtime does the work.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(remove_app(app))
        })
        .join();
    }
}

/// Runs the demo as a new user does, until it says how to stop it; then
/// the printed URL is tried, and Ctrl-C (SIGINT) stops the demo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_deploys_checks_serves_and_cleans_up_on_ctrl_c() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gantry runs");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut out = String::new();
    let until_prompt = async {
        while let Some(line) = lines.recv().await {
            out += &line;
            out += "\n";
            if line.starts_with("Press Ctrl-C to stop") {
                return true;
            }
        }
        false
    };
    let prompted = tokio::time::timeout(std::time::Duration::from_secs(300), until_prompt).await;
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("==> open "))
        .and_then(|l| l.strip_suffix("/ to see it"))
        .map(str::to_owned);
    let answer = match &url {
        Some(url) => {
            let (host, port) = gantry_agent::health::host_port(url).unwrap();
            gantry_agent::health::http_get(&host, port, "/").await.ok()
        }
        None => None,
    };
    // Ctrl-C, whatever was seen, so a failed check leaves nothing running.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    while let Ok(line) = lines.try_recv() {
        out += &line;
        out += "\n";
    }

    assert_eq!(prompted, Ok(true), "no prompt to stop:\n{out}");
    assert!(out.contains("==> build"), "the live log is shown:\n{out}");
    assert!(
        out.contains("answered 200: Hello from hello in dev at "),
        "{out}"
    );
    assert!(
        out.contains("hello is deployed to dev and healthy"),
        "{out}"
    );
    let (code, body) =
        answer.unwrap_or_else(|| panic!("the printed URL {url:?} does not answer:\n{out}"));
    assert_eq!(code, 200);
    assert!(body.starts_with("Hello from hello in dev"), "{body}");
    assert!(
        status.success(),
        "the demo ended with {status} after Ctrl-C:\n{out}"
    );
    assert!(out.contains("==> stopping the demo"), "{out}");
    let engine = docker::connect().await.unwrap();
    assert!(
        docker::containers(&engine, &[(docker::label::APP, "hello")])
            .await
            .unwrap()
            .is_empty(),
        "the demo removed its container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_follows_the_log_and_exits_by_the_outcome() {
    let app = "cli-deploy";
    remove_app(app).await;
    let engine = docker::connect().await.unwrap();
    jre_image::ensure(&engine).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    sample::create_repo(&work, "Hi").unwrap();
    // The remote is bare, as on a git server, so branches can be pushed to it.
    let repo = dir.path().join("repo.git");
    let clone = git2::Repository::open(&work).unwrap();
    sample::push_to_bare(&clone, &repo, "main").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = format!(
        "plaintext = true\nlisten = \"{addr}\"\n[[environments]]\nname = \"dev\"\n[[environments]]\nname = \"prod\"\n\
         [[apps]]\nname = \"{app}\"\nremote = \"{}\"\nbuild_command = \"{}\"\nartifact = \"{}\"\n\
         base_image = \"{}\"\ncontainer_port = {}\nhealth_path = \"/health\"\n",
        repo.display(),
        sample::BUILD_COMMAND,
        sample::ARTIFACT,
        jre_image::JRE_IMAGE,
        sample::PORT
    );
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, config).unwrap();
    let shutdown = CancellationToken::new();
    let _clean_up = CleanUp(app, shutdown.clone());
    let coordinator = tokio::spawn(gantry_coordinator::serve(
        CoordinatorConfig::load(&path).unwrap(),
        listener,
        shutdown.clone(),
    ));
    let url = format!("http://{addr}");
    let agent = AgentOptions {
        coordinator: url.clone(),
        name: AgentName::new("dev-1").unwrap(),
        env: EnvName::new("dev").unwrap(),
        work_dir: dir.path().join("agent"),
        capacity: 1,
        labels: BTreeMap::new(),
        publish_ip: "127.0.0.1".into(),
        health_host: "127.0.0.1".into(),
        public_host: "127.0.0.1".into(),
        drain_grace: gantry_agent::DEFAULT_DRAIN_GRACE,
        proxy_program: None,
        tls_dir: None,
        build_user: None,
    };
    let agent = tokio::spawn(gantry_agent::run(agent, shutdown.clone()));

    let (code, out, err) = gantry(
        &url,
        &["deploy", "--app", app, "--env", "dev", "--branch", "main"],
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("==> health") && out.contains("listening on port 8080"),
        "{out}"
    );
    assert!(err.contains("job 1 succeeded"), "{err}");

    let (code, out, _) = gantry(&url, &["jobs", "--output", "json"]).await;
    assert_eq!(code, 0);
    let jobs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(jobs[0]["state"], "succeeded");
    assert_eq!(jobs[0]["agent"], "dev-1");
    let url_of_job = jobs[0]["url"].as_str().unwrap().to_owned();
    assert!(url_of_job.starts_with("http://127.0.0.1:"), "{url_of_job}");

    let (code, out, _) = gantry(&url, &["logs", "1"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("==> fetch\n"), "{out}");
    // Following an ended job prints the same whole log and returns.
    let (code, followed, _) = gantry(&url, &["logs", "1", "-f"]).await;
    assert_eq!((code, followed), (0, out));
    let (_, table, _) = gantry(&url, &["job", "1"]).await;
    assert!(
        table.contains("state: succeeded") && table.contains(&url_of_job),
        "{table}"
    );
    let (_, agents, _) = gantry(&url, &["agents"]).await;
    assert!(
        agents
            .lines()
            .any(|l| l.starts_with("dev-1") && l.contains("connected")),
        "{agents}"
    );
    let (_, apps, _) = gantry(&url, &["apps"]).await;
    assert!(
        apps.contains(app) && apps.contains(jre_image::JRE_IMAGE),
        "{apps}"
    );
    let (_, envs, _) = gantry(&url, &["envs"]).await;
    assert_eq!(
        envs.lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        [vec!["dev", "1"], vec!["prod", "0"]]
    );

    // Releases, what an environment runs, how two differ, branches, and
    // the running app's output.
    let (code, out, _) = gantry(&url, &["releases", "--app", app, "--env", "dev"]).await;
    assert_eq!(code, 0);
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["1", "1", "main"], "{out}");
    let (_, out, _) = gantry(&url, &["env", "show", "--app", app, "--env", "dev"]).await;
    assert!(
        out.starts_with(&format!("{app} in dev: release 1 (job 1")),
        "{out}"
    );
    let (_, out, _) = gantry(&url, &["diff", "--app", app, "dev", "prod"]).await;
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!((row[0], row[2]), ("main", "-"), "{out}");
    let (code, out, err) = gantry(
        &url,
        &["branch", "create", "--app", app, "--name", "feature/cli"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("created feature/cli at "), "{out}");
    let (_, out, _) = gantry(&url, &["branches", "--app", app]).await;
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["feature/cli", "main"]);
    let (code, out, _) = gantry(&url, &["logs", "--app", app, "--env", "dev"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("[dev-1] listening on port 8080"), "{out}");
    let (code, _, err) = gantry(&url, &["rollback", "--app", app, "--env", "dev"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("release 1 is the only release"), "{err}");

    // Refused input: exit code 2 and a message that says what to fix.
    let (code, _, err) = gantry(
        &url,
        &["deploy", "--app", app, "--env", "dev", "--branch=-x"],
    )
    .await;
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        "error: invalid branch name \"-x\": it must not start with '-' (InvalidArgument)"
    );
    let (code, _, err) = gantry(&url, &["job", "abc"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("invalid job id"), "{err}");
    let (code, _, err) = gantry("http://127.0.0.1:1", &["jobs"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot reach the coordinator at http://127.0.0.1:1"),
        "{err}"
    );

    // A queued deploy can be detached from and cancelled.
    let (code, out, err) =
        gantry(&url, &["deploy", "--app", app, "--env", "prod", "--detach"]).await;
    assert_eq!(code, 0);
    assert!(
        err.contains("waiting: no agent connected for env prod"),
        "{err}"
    );
    let id = out.trim().to_owned();
    let (code, out, _) = gantry(&url, &["job", &id]).await;
    assert_eq!(code, 0);
    assert!(out.contains("state: queued"), "{out}");
    assert!(
        out.contains("reason: no agent connected for env prod"),
        "{out}"
    );
    let (_, out, _) = gantry(&url, &["cancel", &id]).await;
    assert!(out.contains("cancelled"), "{out}");

    // A failing build: exit code 1.
    std::fs::write(work.join("src/Main.java"), "class Main { broken }").unwrap();
    sample::commit_all(&clone, "break it").unwrap();
    sample::push_to_bare(&clone, &repo, "main").unwrap();
    let (code, _, err) = gantry(&url, &["deploy", "--app", app, "--env", "dev"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("failed: build failed with exit code 1"),
        "{err}"
    );

    shutdown.cancel();
    coordinator.await.unwrap().unwrap();
    agent.await.unwrap().unwrap();
    remove_app(app).await;
}

/// Entries in the trail of the paging test: with 512-character details they
/// encode to more than the 4 MiB a single gRPC answer may hold.
const AUDIT_ENTRIES: usize = 10_000;

/// `gantry audit --limit 10000` on a trail larger than one message may
/// carry reads it a page at a time and prints every entry, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_a_trail_larger_than_a_message_in_pages() {
    use gantry_coordinator::{
        audit::AuditEntry,
        store::{sled::SledStore, Store},
    };

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = SledStore::open(&data).unwrap();
        for n in 0..AUDIT_ENTRIES {
            let detail = format!("{n:05} {}", "d".repeat(505));
            let entry = AuditEntry::new(
                "ce-audit",
                "127.0.0.1:1",
                "deploy",
                "app ce-audit env dev",
                true,
                detail,
            );
            drop(store.append_audit(entry).await.unwrap());
        }
        store.close().await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.path().join("coordinator.toml");
    std::fs::write(
        &path,
        format!(
            "plaintext = true\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n[[environments]]\nname = \"dev\"\n",
            data.display()
        ),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let coordinator = tokio::spawn(gantry_coordinator::serve(
        CoordinatorConfig::load(&path).unwrap(),
        listener,
        shutdown.clone(),
    ));
    let url = format!("http://{addr}");
    let limit = AUDIT_ENTRIES.to_string();
    let (code, out, err) = gantry(&url, &["--output", "json", "audit", "--limit", &limit]).await;
    assert_eq!(code, 0, "stderr:\n{err}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    // Each ListAudit answer is one message, so a trail this size proves the
    // paging; the newest entry comes first and none is missing or repeated.
    assert_eq!(seqs.len(), AUDIT_ENTRIES);
    let newest = seqs[0];
    assert!(newest >= AUDIT_ENTRIES as u64, "{newest}");
    assert!(
        seqs.windows(2).all(|w| w[0] == w[1] + 1),
        "not newest first, one by one"
    );
    // A smaller limit stops where asked, across a page boundary.
    let (code, out, _) = gantry(&url, &["--output", "json", "audit", "--limit", "750"]).await;
    assert_eq!(code, 0);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(entries.len(), 750);
    // (Reading the trail is audited too, a page at a time: the first
    // read's 20 pages are newer than what it printed.)
    assert_eq!(entries[0]["seq"].as_u64(), Some(newest + 20));
    shutdown.cancel();
    coordinator.await.unwrap().unwrap();
}
