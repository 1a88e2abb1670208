//! The audit trail survives a crash right after the caller was answered:
//! an entry is on disk before the answer leaves.

mod running;

use gantry_shared::{proto, tls::fingerprint};
use running::{free_port, write_config, Running};
use tonic::{Code, Request};

/// Crashes in a row, each right after a refused request.
const CRASHES: usize = 3;

const ADMIN_TOKEN: &str = "ce-audit-admin-token";

/// `request` carrying `token` as a bearer token.
fn with_token<T>(request: T, token: &str) -> Request<T> {
    let mut request = Request::new(request);
    let bearer = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    request
}

async fn client(
    running: &Running,
) -> proto::operator_service_client::OperatorServiceClient<tonic::transport::Channel> {
    let url = format!("http://{}", running.addr);
    proto::operator_service_client::OperatorServiceClient::connect(url)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_on_disk_before_the_caller_hears_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_config(
        dir.path(),
        &format!(
            "plaintext = true\nlisten = \"127.0.0.1:{port}\"\nadmins = [\"admin\"]\n\
             [[environments]]\nname = \"dev\"\n\
             [[users]]\nname = \"ce-olga\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n",
            fingerprint(ADMIN_TOKEN.as_bytes())
        ),
    );
    for _ in 0..CRASHES {
        let running = Running::start(&path, port);
        let refused = client(&running)
            .await
            .who_am_i(with_token(proto::WhoAmIRequest {}, "ce-wrong-token"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        // The moment the caller has its answer, the process dies.
        running.crash();
    }

    let running = Running::start(&path, port);
    let request = proto::ListAuditRequest {
        limit: 100,
        ..Default::default()
    };
    let trail = client(&running)
        .await
        .list_audit(with_token(request, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let refusals = trail
        .iter()
        .filter(|e| e.who == "anonymous" && e.action == "read" && !e.allowed)
        .count();
    assert_eq!(
        refusals, CRASHES,
        "refusals answered before a crash are in the trail: {trail:#?}"
    );
}
