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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_deploys_checks_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().join("demo");
    let (code, out, err) = gantry(
        "http://unused",
        &[
            "demo",
            "--exit",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            dir_arg.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("==> build"), "the live log is shown:\n{out}");
    assert!(
        out.contains("answered 200: Hello from hello in dev at "),
        "{out}"
    );
    assert!(
        out.contains("hello is deployed to dev and healthy"),
        "{out}"
    );
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
    let (code, out, _) = gantry(&url, &["deploy", "--app", app, "--env", "prod", "--detach"]).await;
    assert_eq!(code, 0);
    let id = out.trim().to_owned();
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
