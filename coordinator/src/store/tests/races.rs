//! Writers racing for one record, and the enrolment rules: two appenders
//! of one job's lines store each line once; of two enrolments of one name
//! in two environments one wins; a token is redeemed once.

use gantry_shared::{AgentName, EnvName, JobId};

use super::*;

on_each_engine!(
    lines_sent_by_two_appenders_at_once_are_stored_once,
    of_two_enrolments_of_one_name_in_two_environments_one_wins,
    an_enrolment_redeems_its_token_once_and_replaces_the_hosts_certificate,
);

async fn lines_sent_by_two_appenders_at_once_are_stored_once(engine: Engine) {
    let store = engine.open().await;
    let job = JobId::new(1).unwrap();
    // Both send every line, in overlapping batches (each resends the
    // five lines before its new five), as an agent and its reconnected
    // self might.
    let send = |store: SharedStore| async move {
        let mut stored = 0;
        for end in (5..=300u64).step_by(5) {
            let start = end.saturating_sub(9).max(1);
            if let Some(run) = append(&store, job, batch(start..=end)).await {
                stored += run.lines_count();
            }
        }
        stored
    };
    let (a, b) = tokio::join!(
        tokio::spawn(send(store.clone())),
        tokio::spawn(send(store.clone()))
    );
    assert_eq!(a.unwrap() + b.unwrap(), 300);
    let stored: Vec<u64> = store
        .log_runs(job, 1, u64::MAX)
        .await
        .unwrap()
        .iter()
        .flat_map(seqs)
        .collect();
    assert_eq!(stored, (1..=300).collect::<Vec<_>>());
    assert_eq!(store.last_seq(job).await.unwrap(), 300);
}

fn cert(name: &AgentName, serial: &str, env: &str, issued_ms: i64) -> IssuedCert {
    IssuedCert {
        serial: serial.into(),
        name: name.clone(),
        env: EnvName::new(env).unwrap(),
        issued_ms,
        revoked_ms: None,
    }
}

async fn of_two_enrolments_of_one_name_in_two_environments_one_wins(engine: Engine) {
    let store = engine.open().await;
    for n in 0..20 {
        let name = AgentName::new(format!("host-{n}")).unwrap();
        let enrol = |env: &str| {
            let store = store.clone();
            let cert = cert(&name, &format!("{n:02}-{env}"), env, 1);
            async move {
                let nonce = format!("token-{}", cert.serial);
                store.enrol(&cert, &nonce).await.unwrap().0
            }
        };
        let (a, b) = tokio::join!(tokio::spawn(enrol("prod")), tokio::spawn(enrol("test")));
        let outcomes = [a.unwrap(), b.unwrap()];
        assert_eq!(
            outcomes.iter().filter(|o| o.is_ok()).count(),
            1,
            "{outcomes:?}"
        );
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(Refusal::EnrolledElsewhere(_)))),
            "{outcomes:?}"
        );
        assert_eq!(store.certs_of(&name).await.unwrap().len(), 1);
    }
}

async fn an_enrolment_redeems_its_token_once_and_replaces_the_hosts_certificate(engine: Engine) {
    let store = engine.open().await;
    let name = AgentName::new("web-1").unwrap();
    let first = store.enrol(&cert(&name, "01", "prod", 10), "n1").await;
    assert_eq!(first.unwrap().0, Ok(vec![]));
    let again = store.enrol(&cert(&name, "02", "prod", 20), "n1").await;
    assert_eq!(again.unwrap().0, Err(Refusal::TokenUsed));
    // A reinstalled host, with a new token: its old certificate is revoked.
    let reinstalled = store.enrol(&cert(&name, "03", "prod", 30), "n2").await;
    let revoked_first = IssuedCert {
        revoked_ms: Some(30),
        ..cert(&name, "01", "prod", 10)
    };
    assert_eq!(reinstalled.unwrap().0, Ok(vec![revoked_first.clone()]));
    // Another environment while enrolled: refused, the token left unused.
    let elsewhere = store.enrol(&cert(&name, "04", "test", 40), "n3").await;
    assert_eq!(
        elsewhere.unwrap().0,
        Err(Refusal::EnrolledElsewhere(EnvName::new("prod").unwrap()))
    );
    assert_eq!(store.cert("02").await.unwrap(), None);
    assert_eq!(store.cert("01").await.unwrap(), Some(revoked_first));
    // Once revoked, the name may move, with that same token.
    let (revoked, _) = store.revoke_certs(&name, 50).await.unwrap();
    let serials: Vec<&str> = revoked.iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(serials, ["03"]);
    let moved = store.enrol(&cert(&name, "04", "test", 60), "n3").await;
    assert_eq!(moved.unwrap().0, Ok(vec![]));
    let certs: Vec<(String, Option<i64>)> = store
        .certs_of(&name)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.serial, c.revoked_ms))
        .collect();
    let expected = [("01", Some(30)), ("03", Some(50)), ("04", None)];
    assert_eq!(certs, expected.map(|(s, r)| (s.to_string(), r)));
}
