//! A gRPC client the team did not write: Python's grpcio, with stubs
//! compiled from proto/ at run time, against a real coordinator over TLS
//! with an API token. It is refused without the token, checks health and
//! reflection, lists, deploys, sees a bad branch refused with
//! INVALID_ARGUMENT, and cancels a queued job.

use gantry_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpc_client_uses_the_operator_api() -> anyhow::Result<()> {
    let python = grpc_python()?;
    let app = "e2e-python";
    let mut secure = Secure::default();
    let token = secure.user("py", &["ops"]);
    let envs: [(&str, &[(&str, &str)]); 2] = [("dev", &[]), ("prod", &[])];
    let h = Harness::start_secure(&[TestApp::new(app)], &envs, secure).await?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/api_client.py");
    let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let addr = h.url.trim_start_matches("https://").to_owned();
    let ca = h.tls_dir().join("ca.pem");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([&addr, protos, app])
        .arg(&ca)
        .arg(&token)
        .output()
        .await?;
    assert!(
        out.status.success(),
        "the Python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(seen["without_token"], "UNAUTHENTICATED");
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
