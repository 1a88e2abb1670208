//! A gRPC client the team did not write: Python's grpcio, with stubs
//! compiled from proto/ at run time, against a real coordinator. It checks
//! health and reflection, lists, deploys, refuses a bad branch with
//! INVALID_ARGUMENT, and cancels a queued job.

use gantry_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpc_client_uses_the_operator_api() -> anyhow::Result<()> {
    let app = "e2e-python";
    let h = Harness::start(&[TestApp::new(app)], &[("dev", &[]), ("prod", &[])]).await?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/api_client.py");
    let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let addr = h.url.trim_start_matches("http://").to_owned();
    let out = tokio::process::Command::new("python3")
        .args([script, &addr, protos, app])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "the Python client failed (pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(seen["health"], "SERVING");
    for service in [
        "gantry.v1.AgentService",
        "gantry.v1.OperatorService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            seen["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == service),
            "{seen}"
        );
    }
    assert_eq!(seen["environments"], serde_json::json!(["dev", "prod"]));
    assert_eq!(seen["apps"], serde_json::json!([app]));
    assert_eq!(seen["bad_branch"][0], "INVALID_ARGUMENT");
    assert_eq!(
        seen["bad_branch"][1],
        "invalid branch name \"--upload-pack=evil\": it must not start with '-'"
    );
    assert_eq!(seen["deployed"]["state"], "JOB_STATE_QUEUED");
    assert_eq!(seen["deployed"]["reason"], "no agent connected for env dev");
    assert_eq!(seen["commit_matches"], true);
    assert_eq!(
        seen["cancelled_reason"],
        "cancelled by operator before it started"
    );
    assert_eq!(seen["jobs"], serde_json::json!([1]));
    h.shutdown().await
}
