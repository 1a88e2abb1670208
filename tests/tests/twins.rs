//! One agent name, two environments: a dev and a prod join token for the
//! same name, redeemed at the same moment, never both win; and a session
//! certified for dev that sends stage, log and finish events for a prod job
//! its name once held is refused, changes nothing, and is audited.

use std::{sync::Arc, time::Duration};

use gantry_shared::{proto, AgentName, EnvName, JobState};
use gantry_tests::{
    trust::{audited, RawAgent},
    *,
};

/// Pairs of racing enrolments: each pair is one name, one dev and one prod
/// token, redeemed at once.
const PAIRS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_enrolments_of_one_name_never_win_in_two_environments() -> anyhow::Result<()> {
    let h = Harness::start_secure(&[], &[("dev", &[]), ("prod", &[])], Secure::default()).await?;
    let authority = gantry_coordinator::trust::Authority::load(&h.tls_dir())?;
    let ca_pem = h.ca_pem()?;
    // Every join is connected and ready, then all are let go together, so
    // the two of a pair reach the coordinator at the same moment.
    let start = Arc::new(tokio::sync::Barrier::new(PAIRS * 2));
    let mut joins = Vec::new();
    for pair in 0..PAIRS {
        let name = format!("tr-twin-{pair}");
        for env in ["dev", "prod"] {
            let token = authority.enroll(
                EnvName::new(env)?,
                AgentName::new(name.clone())?,
                Duration::from_secs(600),
            );
            let key = rcgen::KeyPair::generate()?;
            let csr_pem = rcgen::CertificateParams::new(Vec::<String>::new())?
                .serialize_request(&key)?
                .pem()?;
            let channel = gantry_agent::join::endpoint(&h.url, &ca_pem, None)?
                .connect()
                .await?;
            let mut client = proto::agent_service_client::AgentServiceClient::new(channel);
            let start = start.clone();
            joins.push(tokio::spawn(async move {
                let request = proto::JoinRequest {
                    token: token.to_string(),
                    csr_pem,
                };
                start.wait().await;
                let joined = client.join(request).await;
                (
                    pair,
                    env,
                    joined.map_err(|s| (s.code(), s.message().to_owned())),
                )
            }));
        }
    }
    let mut won = vec![Vec::new(); PAIRS];
    for join in joins {
        let (pair, env, joined) = join.await?;
        match joined {
            Ok(_) => won[pair].push(env),
            Err((code, message)) => {
                let other = if env == "dev" { "prod" } else { "dev" };
                assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
                assert!(
                    message.contains(&format!("enrolled in {other} already"))
                        && message.contains("revoke it there first"),
                    "pair {pair}, {env}: {message}"
                );
            }
        }
    }
    let both: Vec<usize> = (0..PAIRS).filter(|p| won[*p].len() > 1).collect();
    assert!(
        both.is_empty(),
        "{} of {PAIRS} names were enrolled in both environments: {both:?}",
        both.len()
    );
    assert!(
        won.iter().all(|w| w.len() == 1),
        "every name is enrolled once: {won:?}"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_session_cannot_report_on_a_prod_job_its_name_once_held() -> anyhow::Result<()> {
    let app = "tr-twin-job";
    let name = "tr-twin";
    let mut secure = Secure::default();
    let ops = secure.user("olga", &["ops"]);
    let h =
        Harness::start_secure(&[TestApp::new(app)], &[("dev", &[]), ("prod", &[])], secure).await?;
    let mut client = h.client_as(&ops).await?;
    let ca_pem = h.ca_pem()?;
    let endpoint = |dir: std::path::PathBuf| -> anyhow::Result<_> {
        let cert = std::fs::read_to_string(dir.join("agent.pem"))?;
        let key = std::fs::read_to_string(dir.join("agent.key"))?;
        gantry_agent::join::endpoint(&h.url, &ca_pem, Some((cert, key)))
    };

    // The prod agent takes a prod job, then is revoked while holding it.
    let mut prod =
        RawAgent::attach(endpoint(h.join_agent("prod", name).await?)?, "prod", name).await?;
    let job = client
        .deploy(proto::DeployRequest {
            app: app.into(),
            env: "prod".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let assigned = loop {
        if let proto::coordinator_message::Body::Assign(spec) = prod.next().await? {
            break spec;
        }
    };
    assert_eq!(assigned.job_id, job.id);
    client
        .revoke_agent(proto::RevokeAgentRequest { name: name.into() })
        .await?;

    // The same name, enrolled in dev now: the prod session that held the
    // job is gone for good, so the job fails.
    let mut dev =
        RawAgent::attach(endpoint(h.join_agent("dev", name).await?)?, "dev", name).await?;
    let before = client
        .get_job(proto::GetJobRequest { id: job.id })
        .await?
        .into_inner();
    assert_eq!(state(&before), JobState::Failed, "{}", before.reason);
    assert!(
        before
            .reason
            .contains("the session that held this job is gone"),
        "{}",
        before.reason
    );
    // It reports the prod job done.
    let line = |seq, text: &str| proto::LogLine {
        seq,
        stage: proto::Stage::Build as i32,
        text: text.into(),
        opens_stage: seq == 1,
        ..Default::default()
    };
    let done = proto::JobFinished {
        state: proto::JobState::Succeeded as i32,
        summary: "forged".into(),
        url: "http://forged.example".into(),
        image: "forged:1".into(),
        container: "forged".into(),
    };
    dev.lines(job.id, vec![line(1, "==> build")], None).await?;
    dev.lines(job.id, vec![line(2, "forged by the dev twin")], None)
        .await?;
    dev.lines(job.id, vec![line(3, "==> succeeded: forged")], Some(done))
        .await?;
    // Acknowledged (resending cannot change the answer), and applied: no.
    dev.acked(job.id, 3).await?;

    let after = client
        .get_job(proto::GetJobRequest { id: job.id })
        .await?
        .into_inner();
    assert_eq!(state(&after), JobState::Failed, "{}", after.reason);
    assert_eq!(
        (after.stage, &after.reason, &after.url, &after.image),
        (before.stage, &before.reason, &before.url, &before.image)
    );
    let request = proto::StreamJobLogsRequest {
        job_id: job.id,
        from_seq: 1,
        follow: false,
    };
    let mut stream = client.stream_job_logs(request).await?.into_inner();
    let mut stored = Vec::new();
    while let Some(line) = stream.message().await? {
        stored.push(line.text);
    }
    assert!(stored.is_empty(), "lines were stored: {stored:?}");
    let releases = client
        .list_releases(proto::ListReleasesRequest {
            app: app.into(),
            env: "prod".into(),
            limit: 0,
        })
        .await?
        .into_inner();
    assert!(
        releases.releases.is_empty(),
        "a release was recorded: {releases:?}"
    );
    let entry = audited(&client, "the refused events", |e| {
        e.action == "agent-event" && !e.allowed
    })
    .await?;
    assert_eq!(entry.who, format!("agent:{name}"));
    assert_eq!(entry.target, format!("job {}", job.id));
    assert!(
        entry.detail.contains("env dev") && entry.detail.contains("does not hold"),
        "{entry:?}"
    );
    h.shutdown().await
}
