//! A branch deployed to an environment, end to end: real git, a real Java
//! build, the real Docker engine, asserted on what an operator sees.

use gantry_agent::docker::{self, label};
use gantry_shared::{proto, JobState};
use gantry_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_deploys_to_dev_and_a_second_deploy_replaces_it() -> anyhow::Result<()> {
    let app = "e2e-replace";
    let mut h = Harness::start(
        &[TestApp::new(app)],
        &[(
            "dev",
            &[
                ("DATABASE_URL", "jdbc:postgresql://db.dev:5432/shop"),
                ("REGISTRY_ADDR", "nacos.dev:8848"),
            ],
        )],
    )
    .await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;

    let (lines, job) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&job), JobState::Succeeded, "{}", job.reason);
    assert_eq!(job.agent, "dev-1");
    assert_eq!(job.image, format!("{app}:dev-{}-dev-1", job.id));
    assert_contiguous(&lines);
    assert_eq!(job.last_seq, lines.len() as u64);

    // Every stage reported, in order, with the build's own output in the log.
    let stages: Vec<&str> = texts(&lines)
        .into_iter()
        .filter(|t| t.starts_with("==> "))
        .collect();
    assert_eq!(
        &stages[..6],
        [
            "==> fetch",
            "==> checkout",
            "==> build",
            "==> image",
            "==> deploy",
            "==> health"
        ]
    );
    assert!(stages[6].starts_with("==> succeeded"), "{stages:?}");
    let all = texts(&lines).join("\n");
    assert!(all.contains("artifact target/app.jar"), "{all}");
    assert!(all.contains("Successfully tagged"), "{all}");
    assert!(
        all.contains("listening on port 8080"),
        "the container's own output is in the log:\n{all}"
    );

    // The container answers with the environment's variables and its identity.
    let (status, body) = get(&job.url, "/").await?;
    assert_eq!(
        (status, body.trim()),
        (
            200,
            format!("Hello v1 from {app} in dev at {}", job.commit).as_str()
        )
    );
    assert_eq!(
        get(&job.url, "/env/DATABASE_URL").await?,
        (200, "jdbc:postgresql://db.dev:5432/shop\n".into())
    );
    assert_eq!(
        get(&job.url, "/env/GANTRY_JOB").await?.1.trim(),
        job.id.to_string()
    );

    // A new commit deploys again: built afresh, and the new container replaces the old.
    let commit = h.commit_version(app, "main", "Hello v2")?;
    let (lines2, job2) = deploy(&mut client, app, "dev", "").await?;
    assert_eq!(state(&job2), JobState::Succeeded, "{}", job2.reason);
    assert_eq!(job2.commit, commit);
    assert_eq!(
        job2.branch, "main",
        "an empty branch means the default branch"
    );
    assert!(texts(&lines2)
        .iter()
        .any(|t| t.starts_with("$ mkdir -p out target && javac")));
    assert!(get(&job2.url, "/").await?.1.starts_with("Hello v2"));
    let engine = docker::connect().await?;
    let containers = docker::containers(&engine, &[(label::APP, app)]).await?;
    assert_eq!(containers.len(), 1, "the old container is removed");
    assert_eq!(containers[0].1[label::JOB], job2.id.to_string());
    assert!(
        get(&job.url, "/").await.is_err() || job.url == job2.url,
        "the old release no longer answers"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_leaves_the_serving_release_alone() -> anyhow::Result<()> {
    let app = "e2e-badbuild";
    let mut h = Harness::start(&[TestApp::new(app)], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    let (_, good) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&good), JobState::Succeeded, "{}", good.reason);

    h.commit_file(
        app,
        "feature/broken",
        "src/Main.java",
        "public class Main { this does not compile }\n",
    )?;
    let (lines, bad) = deploy(&mut client, app, "dev", "feature/broken").await?;
    assert_eq!(state(&bad), JobState::Failed);
    assert_eq!(bad.stage, proto::Stage::Build as i32);
    assert!(
        bad.reason
            .starts_with("build failed with exit code 1; last lines:"),
        "{}",
        bad.reason
    );
    assert!(
        bad.reason.contains("Main.java"),
        "the compiler's error is in the summary: {}",
        bad.reason
    );
    assert!(
        texts(&lines).iter().any(|t| t.contains("error:")),
        "javac's output was streamed"
    );

    let (status, body) = get(&good.url, "/").await?;
    assert_eq!(status, 200);
    assert!(body.starts_with("Hello v1"), "{body}");
    let engine = docker::connect().await?;
    assert!(docker::containers(
        &engine,
        &[(label::APP, app), (label::JOB, &bad.id.to_string())]
    )
    .await?
    .is_empty());
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_gets_healthy_is_removed_and_the_old_one_serves() -> anyhow::Result<()>
{
    let app = "e2e-unhealthy";
    let mut test_app = TestApp::new(app);
    test_app.health_timeout_secs = 6;
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;
    let (_, good) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&good), JobState::Succeeded, "{}", good.reason);

    // This version answers 503 on its health path.
    h.commit_unhealthy(app, "feature/sick")?;
    let (_, bad) = deploy(&mut client, app, "dev", "feature/sick").await?;
    assert_eq!(state(&bad), JobState::Failed);
    assert_eq!(bad.stage, proto::Stage::Health as i32);
    assert!(
        bad.reason
            .contains("did not answer 200 on /health within 6s (last answer was HTTP 503)"),
        "{}",
        bad.reason
    );
    assert!(
        bad.reason.contains("listening on port 8080"),
        "the container's last lines are in the summary: {}",
        bad.reason
    );

    // This one exits at once.
    let crash = gantry_cli::sample::main_java("Crash").replace(
        "server.start();",
        "System.err.println(\"no config\"); System.exit(3);",
    );
    h.commit_file(app, "feature/crash", "src/Main.java", &crash)?;
    let (_, crashed) = deploy(&mut client, app, "dev", "feature/crash").await?;
    assert_eq!(state(&crashed), JobState::Failed);
    assert!(
        crashed.reason.contains("exited with code 3"),
        "{}",
        crashed.reason
    );

    assert!(get(&good.url, "/").await?.1.starts_with("Hello v1"));
    let engine = docker::connect().await?;
    let left = docker::containers(&engine, &[(label::APP, app)]).await?;
    assert_eq!(left.len(), 1, "only the serving container is left");
    assert_eq!(left[0].1[label::JOB], good.id.to_string());
    assert!(docker::images(
        &engine,
        &[(label::APP, app), (label::JOB, &bad.id.to_string())]
    )
    .await?
    .is_empty());
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_environments_deploy_the_same_app_in_isolation() -> anyhow::Result<()> {
    let app = "e2e-isolation";
    let mut h = Harness::start(
        &[TestApp::new(app)],
        &[
            ("dev", &[("DATABASE_URL", "db-dev")]),
            ("test", &[("DATABASE_URL", "db-test")]),
        ],
    )
    .await?;
    // One server hosts both agents here, as a small team's might.
    h.start_agent("dev", "dev-1")?;
    h.start_agent("test", "test-1")?;
    let mut client = h.client().await?;
    let (_, dev) = deploy(&mut client, app, "dev", "main").await?;
    h.commit_version(app, "feature/x", "Hello feature")?;
    let (_, test) = deploy(&mut client, app, "test", "feature/x").await?;
    assert_eq!(
        (state(&dev), state(&test)),
        (JobState::Succeeded, JobState::Succeeded)
    );
    assert_eq!(
        (dev.agent.as_str(), test.agent.as_str()),
        ("dev-1", "test-1")
    );

    assert_eq!(get(&dev.url, "/env/DATABASE_URL").await?.1.trim(), "db-dev");
    assert_eq!(
        get(&test.url, "/env/DATABASE_URL").await?.1.trim(),
        "db-test"
    );
    assert!(get(&dev.url, "/").await?.1.starts_with("Hello v1"));
    assert!(get(&test.url, "/").await?.1.starts_with("Hello feature"));

    // Separate workspaces and jars.
    let dev_jar = h
        .work_dir("dev-1")
        .join("workspaces/dev")
        .join(app)
        .join("target/app.jar");
    let test_jar = h
        .work_dir("test-1")
        .join("workspaces/test")
        .join(app)
        .join("target/app.jar");
    assert!(dev_jar.exists() && test_jar.exists());
    assert_ne!(std::fs::read(&dev_jar)?, std::fs::read(&test_jar)?);

    // Separate images and containers, each labelled with its environment.
    let engine = docker::connect().await?;
    for (env, job) in [("dev", &dev), ("test", &test)] {
        let containers =
            docker::containers(&engine, &[(label::APP, app), (label::ENV, env)]).await?;
        assert_eq!(containers.len(), 1, "{env}");
        assert_eq!(containers[0].1[label::JOB], job.id.to_string());
        assert_eq!(containers[0].1[label::COMMIT], job.commit);
        assert_eq!(
            docker::images(&engine, &[(label::APP, app), (label::ENV, env)])
                .await?
                .len(),
            1
        );
    }

    // Redeploying dev leaves test serving untouched.
    let (_, dev2) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&dev2), JobState::Succeeded);
    assert!(get(&test.url, "/").await?.1.starts_with("Hello feature"));
    h.shutdown().await
}
