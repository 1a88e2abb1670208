//! Per-environment secrets: given to the build and the container, never
//! returned by the API, and replaced by `***` in every stored or streamed
//! log line, even when a build script prints them. The same build prints a
//! line far over the length limit: it is cut with a visible marker, and the
//! line after it arrives whole.

use gantry_cli::sample;
use gantry_shared::{
    limits::{MAX_LOG_LINE_BYTES, TRUNCATED_MARKER},
    proto, JobState,
};
use gantry_tests::*;

const SECRET: &str = "pw-9f8e7d6c5b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_printed_by_a_build_never_reaches_the_logs() -> anyhow::Result<()> {
    let app = "e2e-secrets";
    let mut test_app = TestApp::new(app);
    test_app.build_command = format!(
        "echo \"connecting with $DB_PASSWORD\" && head -c 20000 /dev/zero | tr '\\0' x && echo \
         && echo after-the-long-line && {}",
        sample::BUILD_COMMAND
    );
    let mut h = Harness::start_with_secrets(
        &[test_app],
        &[("dev", &[("DB_HOST", "db.dev")])],
        &[("dev", "DB_PASSWORD", SECRET)],
    )
    .await?;
    h.start_agent("dev", "dev-1")?;
    let mut client = h.client().await?;

    let (lines, done) = deploy(&mut client, app, "dev", "main").await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    // The build saw it (and printed it); the log shows stars.
    assert!(
        texts(&lines).contains(&"connecting with ***"),
        "{:?}",
        texts(&lines)
    );
    // The 20,000-character line is cut, marked, and not the last word.
    let long = texts(&lines)
        .into_iter()
        .position(|t| t.starts_with("xxxx"))
        .expect("the long line is in the log");
    let cut = texts(&lines)[long];
    assert!(cut.len() <= MAX_LOG_LINE_BYTES, "{} bytes", cut.len());
    assert!(
        cut.ends_with(TRUNCATED_MARKER),
        "{}",
        &cut[cut.len() - 40..]
    );
    assert_eq!(texts(&lines)[long + 1], "after-the-long-line");
    // The container has it.
    assert_eq!(get(&done.url, "/env/DB_PASSWORD").await?.1.trim(), SECRET);

    // Nowhere in what the API returns: stored log (both follow APIs), the
    // job, the environments.
    let request = proto::StreamJobLogsRequest {
        job_id: done.id,
        from_seq: 1,
        follow: false,
    };
    let mut stream = client.follow_job_logs(request).await?.into_inner();
    while let Some(batch) = stream.message().await? {
        for line in batch.lines {
            assert!(!line.text.contains(SECRET), "{}", line.text);
        }
    }
    let job = client
        .get_job(proto::GetJobRequest { id: done.id })
        .await?
        .into_inner();
    let envs = client
        .list_environments(proto::ListEnvironmentsRequest {})
        .await?
        .into_inner();
    assert_eq!(envs.environments[0].secret_names, ["DB_PASSWORD"]);
    let shown = format!("{job:?} {envs:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    h.shutdown().await
}
