//! TLS from the store to a real Postgres cluster: one with `ssl = on`
//! that takes TLS connections only, one that listens on TCP without TLS.

use std::path::Path;

use gantry_shared::{AgentName, EnvName};

use super::{
    testdb::{Listen, TestDb, TLS_PASSWORD, TLS_USER},
    PgStore,
};
use crate::{job::AgentRecord, store::Store};

/// Whether the store's own connection is encrypted, as the server sees it.
async fn encrypted(store: &PgStore) -> bool {
    let slot = store.pool.get().await.unwrap();
    let rows = slot
        .client
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    rows[0].get(0)
}

/// Stores an agent and reads it back: the store works over this
/// connection.
async fn round_trip(store: &PgStore) {
    store.lead_for_test().await;
    let agent = AgentRecord {
        name: AgentName::new("prod-1").unwrap(),
        env: EnvName::new("prod").unwrap(),
        labels: Default::default(),
        capacity: 2,
        version: "0.1.0".into(),
        last_seen_ms: 7,
    };
    store.put_agent(&agent).await.unwrap().await.unwrap();
    assert_eq!(store.agent(&agent.name).await.unwrap(), Some(agent));
}

/// The message of the store's refusal to open.
async fn refusal(url: &str, ca: Option<&Path>) -> String {
    match PgStore::open_with_ca(url, None, ca).await {
        Ok(_) => panic!("{url} opened"),
        Err(e) => e.to_string(),
    }
}

/// A CA that signed nothing the cluster holds, in `dir`.
fn other_ca(dir: &Path) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test database CA");
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path
}

#[tokio::test]
async fn verify_full_against_the_right_ca_opens_an_encrypted_store() {
    let db = TestDb::create_in(Listen::TcpTls).await;
    let ca = db.ca();
    for query in ["?sslmode=verify-full", ""] {
        let url = db.tcp_url("postgres", "127.0.0.1", query);
        let store = PgStore::open_with_ca(&url, None, Some(&ca)).await.unwrap();
        assert!(encrypted(&store).await, "{url}");
        round_trip(&store).await;
    }
    let url = db.tcp_url("postgres", "localhost", "?sslmode=verify-full");
    let store = PgStore::open_with_ca(&url, None, Some(&ca)).await.unwrap();
    assert!(encrypted(&store).await);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let db = TestDb::create_in(Listen::TcpTls).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = other_ca(dir.path());
    for mode in ["verify-full", "verify-ca", "require", "prefer"] {
        let url = db.tcp_url("postgres", "127.0.0.1", &format!("?sslmode={mode}"));
        let msg = refusal(&url, Some(&wrong)).await;
        assert!(
            msg.contains(&format!(
                "the database's certificate at 127.0.0.1 is not signed by the CA in {} (store_ca)",
                wrong.display()
            )) && msg
                .contains("set store_ca to the CA that signed the database server's certificate"),
            "{mode}: {msg}"
        );
    }
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let db = TestDb::create_in(Listen::TcpTls).await;
    let ca = db.ca();
    // The certificate names localhost and 127.0.0.1, not db.invalid,
    // which hostaddr still reaches.
    let url = db.tcp_url(
        "postgres",
        "db.invalid",
        "?hostaddr=127.0.0.1&sslmode=verify-full",
    );
    let msg = refusal(&url, Some(&ca)).await;
    assert!(
        msg.contains(
            "the database's certificate is not valid for the host name db.invalid \
             (sslmode=verify-full): connect by a name the certificate holds"
        ),
        "{msg}"
    );
    let url = db.tcp_url(
        "postgres",
        "db.invalid",
        "?hostaddr=127.0.0.1&sslmode=verify-ca",
    );
    let store = PgStore::open_with_ca(&url, None, Some(&ca)).await.unwrap();
    assert!(encrypted(&store).await);
}

#[tokio::test]
async fn require_without_a_ca_encrypts_and_disable_is_refused_by_a_tls_only_server() {
    let db = TestDb::create_in(Listen::TcpTls).await;
    let url = db.tcp_url("postgres", "127.0.0.1", "?sslmode=require");
    let store = PgStore::open_with_ca(&url, None, None).await.unwrap();
    assert!(encrypted(&store).await);
    round_trip(&store).await;
    // The server takes TLS connections only: a plain one is refused, so
    // disable really does not encrypt.
    let url = db.tcp_url("postgres", "127.0.0.1", "?sslmode=disable");
    let Err(e) = PgStore::open(&url, None).await else {
        panic!("a plain connection to a TLS-only server opened");
    };
    let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(chain.contains("no encryption"), "{chain}");
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_refused() {
    let db = TestDb::create_in(Listen::Tcp).await;
    let url = db.tcp_url("postgres", "127.0.0.1", "?sslmode=require");
    assert_eq!(
        refusal(&url, None).await,
        "storage error: the database server at 127.0.0.1 does not accept TLS, and \
         sslmode=require requires it: turn ssl on in the server's postgresql.conf, or \
         (on a trusted network only) set sslmode=prefer or disable in store"
    );
    // prefer falls back to a plain connection.
    let url = db.tcp_url("postgres", "127.0.0.1", "?sslmode=prefer");
    let store = PgStore::open(&url, None).await.unwrap();
    assert!(!encrypted(&store).await);
}

#[tokio::test]
async fn verify_modes_need_a_ca() {
    let db = TestDb::create_in(Listen::TcpTls).await;
    let url = db.tcp_url("postgres", "127.0.0.1", "?sslmode=verify-ca");
    assert_eq!(
        refusal(&url, None).await,
        "storage error: sslmode=verify-ca checks the database's certificate against a CA: \
         set store_ca to the PEM file of the CA that signed it"
    );
}

#[tokio::test]
async fn a_password_login_binds_to_the_tls_session() {
    // SCRAM with channel_binding=require succeeds only if the hash of the
    // server's certificate this side computes is the one the server has.
    let db = TestDb::create_in(Listen::TcpTls).await;
    let url = db.tcp_url(
        TLS_USER,
        "localhost",
        "?sslmode=verify-full&channel_binding=require",
    );
    let store = PgStore::open_with_ca(&url, Some(TLS_PASSWORD), Some(&db.ca()))
        .await
        .unwrap();
    assert!(encrypted(&store).await);
    round_trip(&store).await;
}

#[tokio::test]
async fn a_unix_socket_never_uses_tls() {
    // As libpq: sslmode is ignored for a socket, where Postgres offers no TLS.
    let db = TestDb::create_in(Listen::TcpTls).await;
    let url = format!("{} sslmode=require", db.url);
    let store = PgStore::open_with_ca(&url, None, Some(&db.ca()))
        .await
        .unwrap();
    assert!(!encrypted(&store).await);
}

#[tokio::test]
async fn the_config_store_ca_reaches_the_connection() {
    let db = TestDb::create_in(Listen::TcpTls).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(db.ca(), dir.path().join("db-ca.pem")).unwrap();
    let path = dir.path().join("coordinator.toml");
    let config = |store_ca: &str| {
        let text = format!(
            "store = \"{}\"\nstore_ca = \"{store_ca}\"\n[[environments]]\nname = \"dev\"\n",
            db.tcp_url("postgres", "127.0.0.1", "")
        );
        std::fs::write(&path, text).unwrap();
        gantry_shared::config::CoordinatorConfig::load(&path).unwrap()
    };
    // Relative to the config file; verify-full by default with a CA.
    let store = crate::open_store(&config("db-ca.pem")).await.unwrap();
    assert!(store.agents().await.unwrap().is_empty());
    other_ca(dir.path());
    let Err(e) = crate::open_store(&config("other-ca.pem")).await else {
        panic!("opened with the wrong CA");
    };
    assert!(e.to_string().contains("is not signed by the CA in"), "{e}");
}
