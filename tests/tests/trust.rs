//! Trust, proven from the outside: agents need a client certificate from
//! this coordinator's CA, for their own environment, unrevoked and in date;
//! operators need a token, and each role does exactly what its
//! environment's policy allows; a prod deploy waits for another ops
//! member's approval; bad input changes nothing; every refusal is audited.

use std::time::Duration;

use gantry_cli::sample;
use gantry_shared::{proto, JobState};
use gantry_tests::{
    trust::{audit, audited, client_cert, register},
    *,
};
use rcgen::{CertificateParams, Issuer, KeyPair};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_need_an_unrevoked_certificate_of_this_ca_for_their_own_environment(
) -> anyhow::Result<()> {
    let app = "e2e-trust-agents";
    let mut secure = Secure::default();
    let ops = secure.user("olga", &["ops"]);
    let mut h =
        Harness::start_secure(&[TestApp::new(app)], &[("dev", &[]), ("prod", &[])], secure).await?;
    let mut client = h.client_as(&ops).await?;
    let ca_pem = h.ca_pem()?;
    let tls = h.tls_dir();
    let authority = gantry_coordinator::trust::Authority::load(&tls)?;

    // A token is used once; a forged one is refused.
    let token = authority.enroll("dev".parse()?, "dev-1".parse()?, Duration::from_secs(600));
    let dev_tls = h.work_dir("dev-1").join("tls");
    gantry_agent::join::join(&h.url, &token.to_string(), &dev_tls).await?;
    let again = gantry_agent::join::join(&h.url, &token.to_string(), &h.dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(format!("{again:#}").contains("used already"), "{again:#}");
    let mut forged = authority.enroll("prod".parse()?, "prod-9".parse()?, Duration::from_secs(600));
    forged.mac = "0".repeat(64);
    let refused = gantry_agent::join::join(&h.url, &forged.to_string(), &h.dir.path().join("y"))
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("not made by this coordinator"),
        "{refused:#}"
    );
    // A name belongs to one environment: dev-1 cannot also enrol in prod.
    let elsewhere = authority.enroll("prod".parse()?, "dev-1".parse()?, Duration::from_secs(600));
    let refused = gantry_agent::join::join(&h.url, &elsewhere.to_string(), &h.dir.path().join("z"))
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("enrolled in dev already"),
        "{refused:#}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dev_tls.join("agent.key"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the agent's key is private");

    // No certificate: refused at the stream, audited.
    let bare = gantry_agent::join::endpoint(&h.url, &ca_pem, None)?;
    let err = register(bare, "dev", "dev-1").await.unwrap_err();
    assert!(
        err.starts_with("Unauthenticated") && err.contains("client certificate"),
        "{err}"
    );

    // Expired, and from another CA: refused by TLS, audited.
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(tls.join("ca.key"))?)?;
    let ours = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let day = time::Duration::days(1);
    let uri = "spiffe://gantry/env/dev/agent/dev-1";
    let expired = client_cert(&ours, uri, now - day * 2, now - day)?;
    let endpoint = gantry_agent::join::endpoint(&h.url, &ca_pem, Some(expired))?;
    assert!(register(endpoint, "dev", "dev-1").await.is_err());
    let mut other_ca = CertificateParams::new(Vec::<String>::new())?;
    other_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let theirs = Issuer::new(other_ca, KeyPair::generate()?);
    let foreign = client_cert(&theirs, uri, now - day, now + day)?;
    let endpoint = gantry_agent::join::endpoint(&h.url, &ca_pem, Some(foreign))?;
    assert!(register(endpoint, "dev", "dev-1").await.is_err());
    for word in ["expired", "issuer"] {
        let entry = audited(&client, word, |e| {
            e.action == "tls-handshake" && !e.allowed && e.detail.to_lowercase().contains(word)
        })
        .await?;
        assert!(entry.peer.starts_with("127.0.0.1:"), "{entry:?}");
    }

    // A dev certificate asking to be a prod agent is refused, whatever it claims.
    let cert = std::fs::read_to_string(dev_tls.join("agent.pem"))?;
    let key = std::fs::read_to_string(dev_tls.join("agent.key"))?;
    let endpoint = gantry_agent::join::endpoint(&h.url, &ca_pem, Some((cert, key)))?;
    let err = register(endpoint, "prod", "dev-1").await.unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");
    assert!(err.contains("certificate is for dev/dev-1"), "{err}");
    // So a prod deploy finds no agent, even with dev-1 connected for real.
    h.start_enrolled_agent("dev", "dev-1", dev_tls)?;
    let connected = |client: &Client, want: bool| {
        let client = client.clone();
        async move {
            let agents = client
                .clone()
                .list_agents(proto::ListAgentsRequest {})
                .await?;
            let dev1 = agents
                .into_inner()
                .agents
                .into_iter()
                .find(|a| a.name == "dev-1");
            Ok(dev1.filter(|a| a.connected == want).map(|_| ()))
        }
    };
    eventually("dev-1 to connect", Duration::from_secs(30), || {
        connected(&client, true)
    })
    .await?;
    let job = client
        .deploy(proto::DeployRequest {
            app: app.into(),
            env: "prod".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(state(&job), JobState::Queued);
    assert!(
        job.reason.contains("no agent connected for env prod"),
        "{}",
        job.reason
    );
    client
        .cancel_job(proto::CancelJobRequest { id: job.id })
        .await?;

    // Revoked: disconnected now, and refused when it dials again.
    let revoked = client
        .revoke_agent(proto::RevokeAgentRequest {
            name: "dev-1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(revoked.serials.len(), 1);
    eventually("dev-1 to be cut off", Duration::from_secs(30), || {
        connected(&client, false)
    })
    .await?;
    let entry = audited(&client, "the revoked agent refused", |e| {
        e.action == "agent-connect" && !e.allowed && e.detail.contains("revoked")
    })
    .await?;
    assert_eq!(entry.who, "agent:dev-1");
    let trail = audit(&mut client).await?;
    for action in ["enrol", "revoke"] {
        assert!(
            trail.iter().any(|e| e.action == action && e.allowed),
            "no {action} in {trail:?}"
        );
    }
    assert!(
        trail.iter().any(|e| e.action == "enrol" && !e.allowed),
        "refused joins are audited"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_what_its_policy_allows_and_prod_waits_for_another_ops_approval(
) -> anyhow::Result<()> {
    let app = "e2e-trust-roles";
    let mut secure = Secure::default();
    let alice = secure.user("alice", &["developer"]);
    let tina = secure.user("tina", &["tester"]);
    let olga = secure.user("olga", &["ops"]);
    let oscar = secure.user("oscar", &["ops"]);
    let bot = secure.user("bot", &[]);
    // Enough for the tests' polling (20 requests a second for 15 s), few
    // enough for the bot to reach quickly.
    secure.settings = "rate_limit_per_minute = 300\n".into();
    for (env, policy) in [
        ("dev", "deploy = [\"developer\", \"ops\"]"),
        ("test", "deploy = [\"developer\", \"tester\", \"ops\"]"),
        ("pre", "deploy = [\"tester\", \"ops\"]"),
        ("prod", "deploy = [\"ops\"]\napprove = [\"ops\"]"),
    ] {
        secure.policies.insert(env.into(), policy.into());
    }
    let envs: [(&str, &[(&str, &str)]); 4] =
        [("dev", &[]), ("test", &[]), ("pre", &[]), ("prod", &[])];
    let mut h = Harness::start_secure(&[TestApp::new(app)], &envs, secure).await?;
    let mut as_alice = h.client_as(&alice).await?;
    let mut as_tina = h.client_as(&tina).await?;
    let mut as_olga = h.client_as(&olga).await?;
    let mut as_oscar = h.client_as(&oscar).await?;
    let deploy_to = |env: &str| proto::DeployRequest {
        app: app.into(),
        env: env.into(),
        ..Default::default()
    };

    // Exactly what each policy allows; the rest is PermissionDenied.
    for (client, allowed, denied) in [
        (&mut as_alice, ["dev", "test"], ["pre", "prod"]),
        (&mut as_tina, ["test", "pre"], ["dev", "prod"]),
    ] {
        for env in allowed {
            let job = client.deploy(deploy_to(env)).await?.into_inner();
            client
                .cancel_job(proto::CancelJobRequest { id: job.id })
                .await?;
        }
        for env in denied {
            let err = client.deploy(deploy_to(env)).await.unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{env}: {err:?}");
        }
    }
    let err = as_alice.deploy(deploy_to("prod")).await.unwrap_err();
    assert!(
        err.message().contains("takes the role ops"),
        "{}",
        err.message()
    );
    // No token, or a wrong one: Unauthenticated.
    let anonymous = gantry_cli::commands::connect_with(&h.url, None, Some(h.ca_pem()?)).await?;
    let err = anonymous
        .clone()
        .deploy(deploy_to("dev"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut forger = h.client_as("gat_not-a-real-token").await?;
    let err = forger
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Bad input: InvalidArgument, and nothing created.
    let jobs_before = as_olga
        .list_jobs(proto::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs
        .len();
    let many: Vec<String> = (0..33).map(|i| format!("f{i}")).collect();
    for (field, request) in [
        (
            "app",
            proto::DeployRequest {
                app: "Shop App".into(),
                ..deploy_to("dev")
            },
        ),
        (
            "branch",
            proto::DeployRequest {
                branch: "-rf".into(),
                ..deploy_to("dev")
            },
        ),
        (
            "branch",
            proto::DeployRequest {
                branch: "../../etc".into(),
                ..deploy_to("dev")
            },
        ),
        (
            "branch",
            proto::DeployRequest {
                branch: "b".repeat(5000),
                ..deploy_to("dev")
            },
        ),
        (
            "branches",
            proto::DeployRequest {
                branches: many,
                ..deploy_to("dev")
            },
        ),
    ] {
        let err = as_olga.deploy(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
    }
    // A whole message over the 4 MiB limit is refused before it is decoded.
    let huge = proto::DeployRequest {
        branch: "b".repeat(5 << 20),
        ..deploy_to("dev")
    };
    let err = as_olga.deploy(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("the limit is"), "{}", err.message());
    let jobs_after = as_olga
        .list_jobs(proto::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs
        .len();
    assert_eq!(jobs_before, jobs_after, "refused requests create no job");

    // Prod: the deploy waits, with the agent there, until another ops approves.
    let prod_tls = h.join_agent("prod", "prod-1").await?;
    h.start_enrolled_agent("prod", "prod-1", prod_tls)?;
    let job = as_olga.deploy(deploy_to("prod")).await?.into_inner();
    assert_eq!(job.approval, "waiting for ops");
    eventually("prod-1 to connect", Duration::from_secs(30), || {
        let mut client = as_olga.clone();
        async move {
            let agents = client
                .list_agents(proto::ListAgentsRequest {})
                .await?
                .into_inner();
            Ok(agents
                .agents
                .iter()
                .any(|a| a.name == "prod-1" && a.connected)
                .then_some(()))
        }
    })
    .await?;
    let waiting = as_olga
        .get_job(proto::GetJobRequest { id: job.id })
        .await?
        .into_inner();
    assert_eq!(state(&waiting), JobState::Queued);
    assert!(
        waiting.reason.contains("waiting for approval"),
        "{}",
        waiting.reason
    );
    let approve = |comment: &str| proto::ApproveRequest {
        job_id: job.id,
        comment: comment.into(),
    };
    let err = as_olga.approve(approve("")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "the requester cannot approve"
    );
    let err = as_alice.approve(approve("")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a developer cannot approve"
    );
    let err = as_oscar
        .approve(approve(&"x".repeat(1000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let approved = as_oscar.approve(approve("go")).await?.into_inner();
    assert_eq!(approved.approval, "approved by oscar (go)");
    let (_, done) = follow_to_end(&mut as_olga, job.id).await?;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.reason);
    let (status, body) = get(&done.url, "/").await?;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("Hello v1 from e2e-trust-roles in prod"),
        "{body}"
    );
    let err = as_alice
        .rollback(proto::RollbackRequest {
            app: app.into(),
            env: "prod".into(),
            to_release: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A rejected deploy ends Cancelled and never runs.
    sample::commit_all(&git2::Repository::open(h.repo(app))?, "nothing new")?;
    let job = as_oscar.deploy(deploy_to("prod")).await?.into_inner();
    let rejected = as_olga
        .reject(proto::ApproveRequest {
            job_id: job.id,
            comment: "not today".into(),
        })
        .await?
        .into_inner();
    assert_eq!(state(&rejected), JobState::Cancelled);
    assert_eq!(rejected.reason, "rejected by olga: not today");
    assert!(rejected.agent.is_empty(), "it was never placed");

    // Branches are created by people who deploy somewhere; the bot does not.
    let branch = |name: &str| proto::CreateBranchRequest {
        app: app.into(),
        name: name.into(),
        from: String::new(),
    };
    as_alice.create_branch(branch("feature/by-alice")).await?;
    let mut as_bot = h.client_as(&bot).await?;
    let err = as_bot
        .create_branch(branch("feature/by-bot"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("may not create branches"),
        "{}",
        err.message()
    );

    // The audit trail: admins only, and it holds the refusals.
    let err = as_alice
        .list_audit(proto::ListAuditRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let trail = audit(&mut as_olga).await?;
    let has = |who: &str, action: &str, allowed: bool, detail: &str| {
        trail.iter().any(|e| {
            e.who == who && e.action == action && e.allowed == allowed && e.detail.contains(detail)
        })
    };
    assert!(has("alice", "deploy", false, "PermissionDenied"));
    assert!(has("anonymous", "deploy", false, "Unauthenticated"));
    assert!(has("olga", "approve", false, "cannot approve"));
    assert!(has("oscar", "approve", true, "approved by oscar"));
    assert!(has("olga", "reject", true, "rejected by olga"));
    assert!(has("olga", "deploy", false, "InvalidArgument"));
    assert!(has("alice", "read-audit", false, "PermissionDenied"));
    assert!(has("alice", "create-branch", true, "created at"));
    assert!(has("bot", "create-branch", false, "PermissionDenied"));

    // Rates are per token: the bot is stopped, the others are not.
    let mut served = 0;
    let limited = loop {
        match as_bot.who_am_i(proto::WhoAmIRequest {}).await {
            Ok(_) => served += 1,
            Err(status) => break status,
        }
        assert!(served < 500, "the rate limit never applied");
    };
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    // 300 at once, plus what refilled (5 a second) while they ran: a
    // few, or a few dozen on a machine slowed to 100 ms a call.
    assert!((300..=360).contains(&served), "served {served}");
    as_olga.who_am_i(proto::WhoAmIRequest {}).await?;

    // Bad tokens from one address are throttled past 30 a minute, and
    // audited once, while good tokens from the same address still pass.
    let mut attempts = 0;
    let throttled = loop {
        attempts += 1;
        match forger.who_am_i(proto::WhoAmIRequest {}).await {
            Err(s) if s.code() == Code::ResourceExhausted => break s,
            Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
            Ok(_) => panic!("a forged token was accepted"),
        }
        assert!(attempts < 40, "failed authentications were never throttled");
    };
    assert!(throttled
        .message()
        .contains("too many failed authentications from 127.0.0.1"));
    // The allowance refills at one failure per 2 s, so on a slow machine
    // one of these may be let through to a plain Unauthenticated.
    let mut held_back = 0;
    for _ in 0..10 {
        let err = forger.who_am_i(proto::WhoAmIRequest {}).await.unwrap_err();
        match err.code() {
            Code::ResourceExhausted => held_back += 1,
            code => assert_eq!(code, Code::Unauthenticated, "{err:?}"),
        }
    }
    assert!(held_back >= 8, "only {held_back} of 10 held back");
    as_olga.who_am_i(proto::WhoAmIRequest {}).await?;
    let trail = audit(&mut as_olga).await?;
    let noted = trail
        .iter()
        .filter(|e| e.detail.contains("too many failed"))
        .count();
    // Once per dry spell: one, or two if the allowance refilled in between.
    assert!((1..=2).contains(&noted), "{noted} throttling entries");
    h.shutdown().await
}
