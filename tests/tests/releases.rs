//! Releases, rollback and retention, end to end: every successful deploy is
//! a numbered release of (app, env); a rollback starts a kept image again
//! without building; pruning in one environment never touches another's.

use gantry_agent::docker::{self, label};
use gantry_shared::{proto, JobState, Stage};
use gantry_tests::*;
use tonic::Code;

async fn releases(
    client: &mut Client,
    app: &str,
    env: &str,
) -> anyhow::Result<Vec<proto::Release>> {
    let request = proto::ListReleasesRequest {
        app: app.into(),
        env: env.into(),
        limit: 0,
    };
    Ok(client.list_releases(request).await?.into_inner().releases)
}

async fn rollback(
    client: &mut Client,
    app: &str,
    env: &str,
    to: u64,
) -> Result<proto::Job, tonic::Status> {
    let request = proto::RollbackRequest {
        app: app.into(),
        env: env.into(),
        to_release: to,
    };
    client.rollback(request).await.map(|r| r.into_inner())
}

async fn job_count(client: &mut Client) -> anyhow::Result<usize> {
    let request = proto::ListJobsRequest {
        limit: 1000,
        ..Default::default()
    };
    Ok(client.list_jobs(request).await?.into_inner().jobs.len())
}

/// The image id a tag points to, and the image a container runs.
async fn image_id(tag: &str) -> anyhow::Result<String> {
    let engine = docker::connect().await?;
    Ok(engine.inspect_image(tag).await?.id.unwrap_or_default())
}

async fn container_image(name: &str) -> anyhow::Result<String> {
    let engine = docker::connect().await?;
    Ok(engine
        .inspect_container(name, None)
        .await?
        .image
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_restores_the_exact_earlier_image_without_building() -> anyhow::Result<()> {
    let app = "e2e-rollback";
    let mut h = Harness::start(&[TestApp::new(app)], &[("dev", &[])]).await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;

    let (_, first) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&first), JobState::Succeeded, "{}", first.reason);
    h.commit_version(app, "main", "Hello v2")?;
    let (_, second) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&second), JobState::Succeeded, "{}", second.reason);
    assert_eq!((first.release, second.release), (1, 2));
    assert!(get(&second.url, "/").await?.1.starts_with("Hello v2"));
    assert_eq!(get(&second.url, "/env/GANTRY_RELEASE").await?.1.trim(), "2");

    let list = releases(&mut client, app, "dev").await?;
    let numbers: Vec<u64> = list.iter().map(|r| r.number).collect();
    assert_eq!(numbers, [2, 1]);
    assert!(list.iter().all(|r| r.image_retained));
    assert_eq!(list[1].job, first.id);
    assert_eq!(list[1].branches[0].branch, "main");
    assert_eq!(list[1].branches[0].commit, first.commit);
    assert_eq!(list[1].servers[0].agent, "dev-1");
    assert!(!list[1].requested_by.is_empty());
    let v1_image = image_id(&list[1].image).await?;

    // Bad targets are refused and create nothing.
    let before = job_count(&mut client).await?;
    let missing = rollback(&mut client, app, "dev", 9).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("has no release 9 in dev"),
        "{}",
        missing.message()
    );
    let serving = rollback(&mut client, app, "dev", 2).await.unwrap_err();
    assert_eq!(
        serving.code(),
        Code::FailedPrecondition,
        "{}",
        serving.message()
    );
    let other_env = rollback(&mut client, app, "prod", 1).await.unwrap_err();
    assert_eq!(other_env.code(), Code::NotFound, "{}", other_env.message());
    assert_eq!(job_count(&mut client).await?, before);

    // The default target is the release before the one serving.
    let job = rollback(&mut client, app, "dev", 0).await?;
    assert_eq!(job.kind, proto::JobKind::Rollback as i32);
    assert_eq!(job.rollback_to, 1);
    let (lines, done) = follow_to_end(&mut client, job.id).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert!(
        lines
            .iter()
            .all(|l| l.stage >= Stage::Deploy.to_proto() as i32),
        "a rollback builds nothing: {:?}",
        texts(&lines)
    );
    assert!(texts(&lines)
        .iter()
        .any(|l| l.starts_with("rolling back to image")));
    assert!(get(&done.url, "/").await?.1.starts_with("Hello v1"));
    assert_eq!(get(&done.url, "/env/GANTRY_RELEASE").await?.1.trim(), "3");
    assert_eq!(container_image(&done.container).await?, v1_image);
    // v2's container is gone; v2's image is kept for a roll forward.
    let engine = docker::connect().await?;
    let running = docker::containers(&engine, &[(label::APP, app)]).await?;
    assert_eq!(running.len(), 1, "only the rolled-back release runs");

    let list = releases(&mut client, app, "dev").await?;
    let summary: Vec<(u64, u64)> = list.iter().map(|r| (r.number, r.rollback_of)).collect();
    assert_eq!(summary, [(3, 1), (2, 0), (1, 0)]);
    assert_eq!(list[0].commit, first.commit);
    let agents = client
        .list_agents(proto::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert_eq!(agents[0].releases, [format!("{app} release 3")]);
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_in_test_keeps_its_newest_images_and_never_touches_prod() -> anyhow::Result<()> {
    let app = "e2e-prune";
    let mut test_app = TestApp::new(app);
    test_app.keep_releases = 2;
    let mut h = Harness::start(&[test_app], &[("test", &[]), ("prod", &[])]).await?;
    h.start_agent("test", "test-1")?;
    h.start_agent("prod", "prod-1")?;
    let mut client = h.client().await?;

    let (_, prod) = deploy(&mut client, app, "prod", "main").await?;
    assert_eq!(state(&prod), JobState::Succeeded, "{}", prod.reason);
    for n in 1..=3 {
        h.commit_version(app, "main", &format!("Hello v{}", n + 1))?;
        let (_, done) = deploy(&mut client, app, "test", "main").await?;
        assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
        assert_eq!(done.release, n);
    }

    let engine = docker::connect().await?;
    let test_images =
        docker::image_tags(&engine, &[(label::APP, app), (label::ENV, "test")]).await?;
    assert_eq!(
        test_images.len(),
        2,
        "test keeps its 2 newest: {test_images:?}"
    );
    let prod_images =
        docker::image_tags(&engine, &[(label::APP, app), (label::ENV, "prod")]).await?;
    assert_eq!(prod_images.len(), 1);
    assert!(prod_images[0].1.contains(&prod.image));
    assert!(get(&prod.url, "/").await?.1.starts_with("Hello v1"));

    let list = releases(&mut client, app, "test").await?;
    let kept: Vec<(u64, bool)> = list.iter().map(|r| (r.number, r.image_retained)).collect();
    assert_eq!(kept, [(3, true), (2, true), (1, false)]);
    let pruned = rollback(&mut client, app, "test", 1).await.unwrap_err();
    assert_eq!(pruned.code(), Code::FailedPrecondition);
    assert!(
        pruned.message().contains("was pruned"),
        "{}",
        pruned.message()
    );
    let only = rollback(&mut client, app, "prod", 0).await.unwrap_err();
    assert_eq!(only.code(), Code::FailedPrecondition, "{}", only.message());
    // Release 2 exists in test, not in prod: numbers never cross environments.
    let elsewhere = rollback(&mut client, app, "prod", 2).await.unwrap_err();
    assert_eq!(elsewhere.code(), Code::NotFound);
    assert!(
        elsewhere.message().contains("has no release 2 in prod"),
        "{}",
        elsewhere.message()
    );
    h.shutdown().await
}
