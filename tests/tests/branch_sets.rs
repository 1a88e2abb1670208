//! Branches from the platform and branch sets, end to end: listing and
//! creating branches on the real remote, a set of branches merged onto the
//! default branch and deployed as one release, conflicts refused before
//! anything is scheduled, and sets changed with add and remove.

use gantry_shared::{proto, JobState};
use gantry_tests::*;
use tonic::Code;

fn set_request(app: &str, env: &str, branches: &[&str]) -> proto::DeployRequest {
    proto::DeployRequest {
        app: app.into(),
        env: env.into(),
        branches: branches.iter().map(|b| b.to_string()).collect(),
        ..Default::default()
    }
}

async fn job_count(client: &mut Client) -> anyhow::Result<usize> {
    let request = proto::ListJobsRequest {
        limit: 1000,
        ..Default::default()
    };
    Ok(client.list_jobs(request).await?.into_inner().jobs.len())
}

async fn current_set(client: &mut Client, app: &str, env: &str) -> anyhow::Result<Vec<String>> {
    let request = proto::GetEnvironmentStateRequest {
        app: app.into(),
        env: env.into(),
    };
    let state = client.get_environment_state(request).await?.into_inner();
    Ok(state
        .current
        .map(|r| r.branches.into_iter().map(|b| b.branch).collect())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_are_listed_and_created_on_the_remote() -> anyhow::Result<()> {
    let app = "e2e-branches";
    let h = Harness::start(&[TestApp::new(app)], &[("dev", &[])]).await?;
    let mut client = h.client().await?;
    let feature = h.commit_file(app, "feature/login", "LOGIN.md", "login\n")?;

    let list = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            let request = proto::ListBranchesRequest { app: app.into() };
            anyhow::Ok(client.list_branches(request).await?.into_inner().branches)
        }
    };
    let branches = list(&mut client).await?;
    let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["feature/login", "main"]);
    assert_eq!(branches[0].commit, feature);
    assert_eq!(branches[0].subject, "change LOGIN.md");
    assert!(!branches[0].author.is_empty() && branches[0].time_ms > 0);

    let request = proto::CreateBranchRequest {
        app: app.into(),
        name: "feature/pay".into(),
        from: "feature/login".into(),
    };
    let created = client.create_branch(request.clone()).await?.into_inner();
    assert_eq!(
        (created.name.as_str(), created.commit.as_str()),
        ("feature/pay", feature.as_str())
    );
    // It is on the remote itself.
    let remote = git2::Repository::open(h.remote(app))?;
    let head = remote.find_branch("feature/pay", git2::BranchType::Local)?;
    assert_eq!(
        head.get().target().map(|o| o.to_string()),
        Some(feature.clone())
    );
    assert_eq!(list(&mut client).await?.len(), 3);

    let again = client.create_branch(request).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{}", again.message());
    let bad_from = proto::CreateBranchRequest {
        app: app.into(),
        name: "feature/x".into(),
        from: "no-such-branch".into(),
    };
    let status = client.create_branch(bad_from).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("neither a branch nor a commit"),
        "{}",
        status.message()
    );
    let bad_name = proto::CreateBranchRequest {
        app: app.into(),
        name: "--force".into(),
        from: String::new(),
    };
    let status = client.create_branch(bad_name).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        list(&mut client).await?.len(),
        3,
        "refused requests create nothing"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_set_deploys_as_one_integration_commit_and_conflicts_are_refused(
) -> anyhow::Result<()> {
    let app = "e2e-sets";
    let mut h = Harness::start(&[TestApp::new(app)], &[("test", &[]), ("pre", &[])]).await?;
    let mut client = h.client().await?;
    // Twenty feature branches, each adding its own file; 7 and 15 also edit
    // the same line of a shared file; one changes the greeting.
    let mut names = Vec::new();
    for n in 1..=20 {
        let branch = format!("feature/f{n:02}");
        h.commit_file(
            app,
            &branch,
            &format!("f{n:02}.txt"),
            &format!("feature {n}\n"),
        )?;
        if n == 7 || n == 15 {
            h.commit_file(app, &branch, "README.md", &format!("edited by {n}\n"))?;
        }
        names.push(branch);
    }
    h.commit_version(app, "feature/greeting", "Hello set")?;
    let all: Vec<&str> = names.iter().map(String::as_str).collect();

    let before = job_count(&mut client).await?;
    let status = client
        .deploy(set_request(app, "test", &all))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with(
            "branch \"feature/f15\" conflicts with branch \"feature/f07\" in README.md"
        ),
        "{}",
        status.message()
    );
    for (set, code, says) in [
        (
            vec!["feature/f01", "feature/f01"],
            Code::InvalidArgument,
            "listed twice",
        ),
        (
            vec!["feature/f01", "feature/nope"],
            Code::NotFound,
            "\"feature/nope\" does not exist",
        ),
        (vec!["feature/f01", "-rf"], Code::InvalidArgument, "-rf"),
    ] {
        let status = client
            .deploy(set_request(app, "test", &set))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{set:?}: {}", status.message());
        assert!(status.message().contains(says), "{}", status.message());
    }
    assert_eq!(
        job_count(&mut client).await?,
        before,
        "refused requests create nothing"
    );

    // Without f15 the other nineteen and the greeting merge.
    h.start_agent("test", "test-1")?;
    let mut set: Vec<&str> = all
        .iter()
        .copied()
        .filter(|b| *b != "feature/f15")
        .collect();
    set.push("feature/greeting");
    let job = client
        .deploy(set_request(app, "test", &set))
        .await?
        .into_inner();
    assert_eq!(job.branches.len(), 20);
    assert_eq!(job.base.as_ref().map(|b| b.branch.as_str()), Some("main"));
    let (lines, done) = follow_to_end(&mut client, job.id).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    assert!(
        texts(&lines)
            .iter()
            .any(|l| l.starts_with("merged 20 branches onto main")),
        "{:?}",
        texts(&lines)
    );
    assert!(get(&done.url, "/").await?.1.starts_with("Hello set"));
    assert_eq!(
        get(&done.url, "/env/GANTRY_COMMIT").await?.1.trim(),
        job.commit
    );
    let workspace = h.work_dir("test-1").join("workspaces/test").join(app);
    for n in (1..=20).filter(|n| *n != 15) {
        assert!(
            workspace.join(format!("f{n:02}.txt")).exists(),
            "f{n:02}.txt was merged"
        );
    }
    assert_eq!(
        std::fs::read_to_string(workspace.join("README.md"))?,
        "edited by 7\n"
    );

    // Change the set: add f15 back is a conflict; remove f07 then add f15.
    let change = |add: &[&str], remove: &[&str]| proto::DeployRequest {
        app: app.into(),
        env: "test".into(),
        add: add.iter().map(|b| b.to_string()).collect(),
        remove: remove.iter().map(|b| b.to_string()).collect(),
        ..Default::default()
    };
    let status = client
        .deploy(change(&["feature/f15"], &[]))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{}",
        status.message()
    );
    let status = client
        .deploy(change(&[], &["feature/zz"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not in the set"),
        "{}",
        status.message()
    );
    let job = client
        .deploy(change(&["feature/f15"], &["feature/f07"]))
        .await?
        .into_inner();
    let (_, done) = follow_to_end(&mut client, job.id).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    let now = current_set(&mut client, app, "test").await?;
    assert_eq!(now.len(), 20);
    assert!(now.contains(&"feature/f15".to_owned()) && !now.contains(&"feature/f07".to_owned()));
    assert_eq!(now.last().map(String::as_str), Some("feature/f15"));

    // Removing every branch would leave nothing to deploy.
    let everything: Vec<&str> = now.iter().map(String::as_str).collect();
    let status = client.deploy(change(&[], &everything)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("with no branch"),
        "{}",
        status.message()
    );

    // pre runs nothing yet: every branch of test differs.
    let request = proto::DiffEnvironmentsRequest {
        app: app.into(),
        from_env: "test".into(),
        to_env: "pre".into(),
    };
    let diff = client
        .diff_environments(request)
        .await?
        .into_inner()
        .branches;
    assert_eq!(diff.len(), 20);
    assert!(diff
        .iter()
        .all(|d| !d.from_commit.is_empty() && d.to_commit.is_empty()));
    h.shutdown().await
}
