//! An app whose repository brings its own Dockerfile, and the build's
//! environment: exactly what Gantry gives it, nothing of the agent's own.

use gantry_agent::docker;
use gantry_shared::JobState;
use gantry_tests::*;

/// Variables a build may see: Gantry's own, the few the agent passes on,
/// and what `sh` sets for itself.
fn allowed(name: &str) -> bool {
    name.starts_with("GANTRY_")
        || [
            "PATH",
            "HOME",
            "LANG",
            "JAVA_HOME",
            "PWD",
            "OLDPWD",
            "SHLVL",
            "_",
        ]
        .contains(&name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_with_its_own_dockerfile_builds_in_a_clean_environment() -> anyhow::Result<()> {
    let app = "e2e-dockerfile";
    // The agent runs in this process, whose environment is full of cargo's
    // variables: none may reach the build.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let mut test_app = TestApp::new(app);
    test_app.dockerfile = Some("deploy/Dockerfile".into());
    test_app.build_command = format!(
        "env | cut -d= -f1 | sed 's/^/build env: /'; {}",
        gantry_cli::sample::BUILD_COMMAND
    );
    let mut h = Harness::start(&[test_app], &[("dev", &[])]).await?;
    let dockerfile = format!(
        "FROM {}\nWORKDIR /srv\nCOPY target/app.jar /srv/app.jar\n\
         LABEL org.example.built-from=repository\nEXPOSE 8080\n\
         ENTRYPOINT [\"java\", \"-jar\", \"/srv/app.jar\"]\n",
        gantry_cli::jre_image::JRE_IMAGE
    );
    h.commit_file(app, "main", "deploy/Dockerfile", &dockerfile)?;
    // What the repo's .dockerignore names stays out of the build context.
    h.commit_file(app, "main", "secret.txt", "not for the image\n")?;
    h.commit_file(
        app,
        "main",
        ".dockerignore",
        "# local only\nsecret.txt\n*.md\n",
    )?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;

    let (lines, job) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&job), JobState::Succeeded, "{}", job.reason);
    let names: Vec<&str> = texts(&lines)
        .into_iter()
        .filter_map(|t| t.strip_prefix("build env: "))
        .collect();
    assert!(names.contains(&"GANTRY_COMMIT"), "{names:?}");
    let leaked: Vec<&&str> = names.iter().filter(|n| !allowed(n)).collect();
    assert!(leaked.is_empty(), "the build saw {leaked:?}");

    // The image is the repository's: its Dockerfile's label, its layout.
    let engine = docker::connect().await?;
    let labels = docker::image_labels(&engine, &job.image)
        .await?
        .unwrap_or_default();
    assert_eq!(
        labels.get("org.example.built-from").map(String::as_str),
        Some("repository")
    );
    assert_eq!(labels.get(docker::label::JOB), Some(&job.id.to_string()));
    let all = texts(&lines).join("\n");
    assert!(all.contains("COPY target/app.jar /srv/app.jar"), "{all}");
    assert!(get(&job.url, "/").await?.1.starts_with("Hello v1"));

    // A Dockerfile that asks for an ignored file fails to build, saying so,
    // and the release that was serving goes on serving.
    let leaky = dockerfile.replace(
        "EXPOSE 8080\n",
        "COPY secret.txt /srv/secret.txt\nEXPOSE 8080\n",
    );
    h.commit_file(app, "main", "deploy/Dockerfile", &leaky)?;
    let (_, failed) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&failed), JobState::Failed, "{}", failed.reason);
    assert!(failed.reason.contains("secret.txt"), "{}", failed.reason);
    assert!(get(&job.url, "/").await?.1.starts_with("Hello v1"));
    h.shutdown().await
}
