//! Followers of a job's log see every line, in order, once, however fast the
//! job runs and however many follow it: a job that streams its lines and
//! ends at once, followed by many clients that start at different moments.

mod common;

use std::time::Duration;

use common::up;
use gantry_shared::proto;

const LINES: u64 = 5_000;
const FOLLOWERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_follower_sees_every_line_of_a_fast_job() {
    let dir = tempfile::tempdir().unwrap();
    let common::Coordinator {
        url,
        shutdown,
        server,
    } = common::start_coordinator(dir.path(), "fast").await;
    // A raw agent speaking the protocol: register, then wait for the job.
    let (tx, mut inbound) = common::attach_raw_agent(&url, 1024).await;

    let mut client = proto::operator_service_client::OperatorServiceClient::connect(url.clone())
        .await
        .unwrap();
    let request = proto::DeployRequest {
        app: "fast".into(),
        env: "dev".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let job = client.deploy(request).await.unwrap().into_inner().id;
    let assigned = inbound.message().await.unwrap().expect("assignment");
    assert!(matches!(
        assigned.body,
        Some(proto::coordinator_message::Body::Assign(_))
    ));

    // Followers start before, during and after the lines flow.
    let mut followers = Vec::new();
    for i in 0..FOLLOWERS {
        let mut client = client.clone();
        followers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(i as u64 * 500)).await;
            let request = proto::StreamJobLogsRequest {
                job_id: job,
                from_seq: 1,
                follow: true,
            };
            // Half follow line by line, half in runs of lines.
            let mut seqs = Vec::new();
            if i % 2 == 0 {
                let mut stream = client.stream_job_logs(request).await.unwrap().into_inner();
                while let Some(line) = stream.message().await.unwrap() {
                    seqs.push(line.seq);
                }
            } else {
                let mut stream = client.follow_job_logs(request).await.unwrap().into_inner();
                while let Some(batch) = stream.message().await.unwrap() {
                    seqs.extend(batch.lines.iter().map(|l| l.seq));
                }
            }
            seqs
        }));
    }
    // The first line opens the build stage; the last ends the job.
    for n in 1..=LINES {
        let line = proto::LogLine {
            seq: n,
            stage: proto::Stage::Build as i32,
            text: format!("line {n}"),
            opens_stage: n == 1,
            ..Default::default()
        };
        let finished = (n == LINES).then(|| proto::JobFinished {
            state: proto::JobState::Succeeded as i32,
            ..Default::default()
        });
        let event = proto::JobEvent {
            job_id: job,
            lines: Some(vec![line].into()),
            finished,
        };
        tx.send(up(proto::agent_message::Body::JobEvent(event)))
            .await
            .unwrap();
    }

    let want: Vec<u64> = (1..=LINES).collect();
    for follower in followers {
        let seen = tokio::time::timeout(Duration::from_secs(60), follower)
            .await
            .expect("the follow ends")
            .unwrap();
        assert_eq!(
            seen.len(),
            want.len(),
            "a follower saw {} of {LINES} lines",
            seen.len()
        );
        assert_eq!(seen, want);
    }
    shutdown.cancel();
    drop(tx);
    server.await.unwrap().unwrap();
}
