//! 100,000 HTTP/2 streams without a token, on 10 TLS connections, each
//! sending only its HEADERS (no END_STREAM, no body): the coordinator answers
//! each at once, resets it, and holds no per-stream state, so its resident
//! memory grows by less than [`RSS_BUDGET_KIB`].

mod running;

use std::time::Duration;

use futures::StreamExt;
use tonic::codegen::http;

/// Connections of the flood.
const CONNECTIONS: usize = 10;

/// Streams opened on each.
const STREAMS_PER_CONNECTION: usize = 10_000;

/// What the whole flood may add to the coordinator's resident memory.
const RSS_BUDGET_KIB: u64 = 50 * 1024;

/// Longest the flood may take; it stops by itself then. (The operators'
/// lane runs at idle priority, so on a busy machine the answers come only
/// as fast as the CPU others leave.)
const FLOOD_DEADLINE: Duration = Duration::from_secs(300);

/// How often the coordinator's memory is sampled during the flood.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How each stream ended.
#[derive(Debug, Default)]
struct Outcomes {
    /// Answered with a gRPC status (Unauthenticated, ResourceExhausted).
    refused: usize,
    /// Reset by the coordinator before an answer.
    reset: usize,
    /// Never answered within the deadline.
    unanswered: usize,
    /// Not opened: the connection was closed first.
    not_opened: usize,
}

/// One TLS connection with its HTTP/2 handshake done, and the task
/// driving it. All are made before the flood starts: a connection made
/// while another floods could miss the coordinator's preface timeout.
async fn connect(
    secure: &running::Secure,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = running::tls_from(
        std::net::Ipv4Addr::LOCALHOST,
        secure.running.addr,
        secure.tls_client(),
    )
    .await
    .expect("the TLS handshake");
    let (client, connection) = h2::client::handshake(tls).await.expect("HTTP/2");
    (client, tokio::spawn(connection))
}

/// Opens `STREAMS_PER_CONNECTION` HEADERS-only streams on one connection
/// and sees how each ends. The streams' send halves are held open to the
/// end, as an attacker would.
async fn flood_one(
    secure: &running::Secure,
    (client, driver): (
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ),
    deadline: tokio::time::Instant,
) -> Outcomes {
    let mut outcomes = Outcomes::default();
    let mut held = Vec::with_capacity(STREAMS_PER_CONNECTION);
    let mut answers = futures::stream::FuturesUnordered::new();
    let uri = format!("{}/gantry.v1.OperatorService/WhoAmI", secure.url);
    for n in 0..STREAMS_PER_CONNECTION {
        let ready = tokio::time::timeout_at(deadline, client.clone().ready()).await;
        let Ok(Ok(mut sender)) = ready else {
            outcomes.not_opened += STREAMS_PER_CONNECTION - n;
            break;
        };
        let request = http::Request::post(&uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        match sender.send_request(request, false) {
            Ok((answer, stream)) => {
                held.push(stream);
                answers.push(answer);
            }
            Err(_) => {
                outcomes.not_opened += STREAMS_PER_CONNECTION - n;
                break;
            }
        }
    }
    loop {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(Ok(response))) => {
                // Unauthenticated, or ResourceExhausted once the address's
                // failures are throttled: never a timeout.
                let status = response.headers().get("grpc-status");
                let code = status.and_then(|s| s.to_str().ok());
                assert!(
                    matches!(code, Some("16" | "8")),
                    "an answer other than a refusal: {response:?}"
                );
                outcomes.refused += 1;
            }
            Ok(Some(Err(_))) => outcomes.reset += 1,
            Ok(None) => break,
            Err(_) => {
                outcomes.unanswered += answers.len();
                break;
            }
        }
    }
    drop((held, client));
    driver.abort();
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_only_streams_without_a_token_are_refused_at_once_and_cost_little() {
    running::raise_fd_limit();
    let secure = running::secure().await;
    // One legitimate call first, so the baseline includes a served request.
    secure.whoami().await;
    let before = secure.running.rss_kib();
    // The highest resident memory seen while the flood runs.
    let pid = secure.running.pid();
    let done = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut peak = 0;
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            while !done.is_cancelled() {
                tick.tick().await;
                peak = peak.max(running::rss_kib(pid));
            }
            peak
        }
    });
    let deadline = tokio::time::Instant::now() + FLOOD_DEADLINE;
    let connections = futures::future::join_all((0..CONNECTIONS).map(|_| connect(&secure))).await;
    let floods = connections
        .into_iter()
        .map(|connection| flood_one(&secure, connection, deadline));
    let all = futures::future::join_all(floods).await;
    done.cancel();
    let peak = sampler.await.unwrap();
    let total = |f: fn(&Outcomes) -> usize| all.iter().map(f).sum::<usize>();
    let (refused, reset, unanswered, not_opened) = (
        total(|o| o.refused),
        total(|o| o.reset),
        total(|o| o.unanswered),
        total(|o| o.not_opened),
    );
    eprintln!(
        "RSS {before} KiB before, {peak} KiB after {} streams: {refused} refused, {reset} reset, {unanswered} unanswered, {not_opened} not opened",
        CONNECTIONS * STREAMS_PER_CONNECTION
    );
    // The coordinator is still serving.
    let after = secure.whoami().await;
    assert!(after < Duration::from_secs(2), "whoami took {after:?}");
    assert_eq!(unanswered, 0, "streams left hanging");
    assert_eq!(not_opened, 0, "streams the flood could not open");
    assert_eq!(refused + reset, CONNECTIONS * STREAMS_PER_CONNECTION);
    assert!(
        peak.saturating_sub(before) < RSS_BUDGET_KIB,
        "resident memory grew from {before} KiB to {peak} KiB"
    );
}
