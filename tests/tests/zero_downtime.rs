//! Updates that drop no request: continuous HTTP load on the app's stable
//! port (served by Gantry's proxy) through ten deploys in a row, one whose
//! build fails and one that never becomes healthy, and an agent restart in
//! the middle, ends with zero failed requests.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use gantry_shared::JobState;
use gantry_tests::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Clients hammering the stable port at once, each on keep-alive
/// connections, as a service's callers do.
const CLIENTS: usize = 4;

#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

async fn hammer(url: String, load: Arc<Load>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    while !load.stop.load(Ordering::SeqCst) {
        let outcome = async {
            let response = client.get(url.parse()?).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        }
        .await;
        match outcome {
            Ok((status, body)) if status == 200 && body.starts_with("Hello v") => {
                load.ok.fetch_add(1, Ordering::SeqCst);
            }
            other => {
                load.failed.fetch_add(1, Ordering::SeqCst);
                let mut errors = load.errors.lock().unwrap();
                if errors.len() < 10 {
                    errors.push(format!("{other:?}"));
                }
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_deploys_under_load_fail_no_request() -> anyhow::Result<()> {
    let app = "e2e-zero-downtime";
    let port = free_port()?;
    let mut test_app = TestApp::new(app);
    test_app.public_port = Some(port);
    test_app.health_timeout_secs = 15;
    let mut h = Harness::start(&[test_app], &[("prod", &[])]).await?;
    h.start_agent("prod", "prod-1")?;
    let mut client = h.client().await?;
    let stable = format!("http://127.0.0.1:{port}");

    let (_, first) = deploy(&mut client, app, "prod", "main").await?;
    assert_eq!(state(&first), JobState::Succeeded, "{}", first.reason);
    assert_eq!(first.url, stable);
    assert!(get(&stable, "/").await?.1.starts_with("Hello v1"));

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(hammer(format!("{stable}/"), load.clone())))
        .collect();

    let mut serving = 1;
    for round in 2..=11 {
        let expect_success = match round {
            4 => {
                h.commit_file(app, "main", "src/Main.java", "class Broken {")?;
                false
            }
            6 => {
                h.commit_unhealthy(app, "main")?;
                false
            }
            _ => {
                h.commit_version(app, "main", &format!("Hello v{round}"))?;
                true
            }
        };
        if round == 8 {
            // The agent restarts (an upgrade, say); its proxy serves on.
            h.stop_agent("prod-1").await?;
            let during = get(&stable, "/").await?;
            assert_eq!(during.0, 200, "the proxy serves while the agent is down");
            h.start_agent("prod", "prod-1")?;
        }
        let (_, done) = deploy(&mut client, app, "prod", "main").await?;
        if expect_success {
            assert_eq!(
                state(&done),
                JobState::Succeeded,
                "round {round}: {}",
                done.reason
            );
            serving = round;
        } else {
            assert_eq!(state(&done), JobState::Failed, "round {round}");
        }
        let answer = get(&stable, "/").await?.1;
        assert!(
            answer.starts_with(&format!("Hello v{serving} ")),
            "round {round}: {answer}"
        );
    }

    load.stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await?;
    }
    let (ok, failed) = (
        load.ok.load(Ordering::SeqCst),
        load.failed.load(Ordering::SeqCst),
    );
    eprintln!("{ok} requests answered, {failed} failed during ten deploys");
    assert_eq!(
        failed,
        0,
        "failed requests: {:?}",
        load.errors.lock().unwrap()
    );
    assert!(ok > 1000, "the load ran throughout: {ok} requests");

    // The proxy is gone (as after a host reboot): the agent restores it,
    // routed to the running release, when it starts.
    h.stop_agent("prod-1").await?;
    h.stop_proxies();
    eventually("the proxy to stop", Duration::from_secs(10), || {
        let url = stable.clone();
        async move { Ok(get(&url, "/").await.is_err().then_some(())) }
    })
    .await?;
    h.start_agent("prod", "prod-1")?;
    let back = eventually(
        "the agent to restore the proxy",
        Duration::from_secs(30),
        || {
            let url = stable.clone();
            async move { Ok(get(&url, "/").await.ok().filter(|(code, _)| *code == 200)) }
        },
    )
    .await?;
    assert!(
        back.1.starts_with(&format!("Hello v{serving} ")),
        "{}",
        back.1
    );
    h.shutdown().await
}
