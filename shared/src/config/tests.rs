use super::*;

const GOOD: &str = r#"
listen = "127.0.0.1:7701"

[[environments]]
name = "dev"
variables = { REGISTRY = "nacos-dev:8848" }

[[environments]]
name = "prod"

[[apps]]
name = "shop"
remote = "file:///srv/git/shop.git"
build_command = "mvn -B package"
artifact = "target/*.jar"
base_image = "eclipse-temurin:17-jre"
container_port = 8080
"#;

fn parse(text: &str) -> Result<CoordinatorConfig, ConfigError> {
    CoordinatorConfig::parse(Path::new("coordinator.toml"), text)
}

#[test]
fn a_good_file_parses_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listen.port(), 7701);
    assert_eq!(c.environments.len(), 2);
    assert_eq!(c.environments[0].variables["REGISTRY"], "nacos-dev:8848");
    let app = &c.apps[0];
    assert_eq!(app.default_branch.as_str(), "main");
    assert_eq!(app.health_path, "/actuator/health");
    assert_eq!(app.health_timeout_secs, 60);
    assert_eq!(c.agent_lease_secs, 15);
    assert_eq!(app.deploy_timeout_secs, 3600);
}

#[test]
fn an_unknown_field_names_file_line_and_field() {
    let text = GOOD.replace(
        "container_port = 8080",
        "container_port = 8080\ncontainr = 1",
    );
    let msg = parse(&text).unwrap_err().to_string();
    assert!(msg.contains("coordinator.toml"), "{msg}");
    assert!(msg.contains("line 18"), "{msg}");
    assert!(msg.contains("containr"), "{msg}");
}

#[test]
fn a_bad_value_names_line_and_what_to_fix() {
    let text = GOOD.replace("name = \"shop\"", "name = \"Shop!\"");
    let msg = parse(&text).unwrap_err().to_string();
    assert!(msg.contains("line 12"), "{msg}");
    assert!(msg.contains("invalid app name"), "{msg}");

    let text = GOOD.replace("container_port = 8080", "container_port = 0");
    let msg = parse(&text).unwrap_err().to_string();
    assert!(msg.contains("container_port"), "{msg}");
}

#[test]
fn heartbeats_and_the_lease_must_fit_together() {
    let text = format!("heartbeat_secs = 5\nagent_lease_secs = 8\n{GOOD}");
    let msg = parse(&text).unwrap_err().to_string();
    assert!(msg.contains("line 2"), "{msg}");
    assert!(
        msg.contains("agent_lease_secs (8) must be at least twice heartbeat_secs (5)"),
        "{msg}"
    );
    let text = format!("heartbeat_secs = 0\n{GOOD}");
    let msg = parse(&text).unwrap_err().to_string();
    assert!(
        msg.contains("line 1") && msg.contains("heartbeat_secs must be at least 1"),
        "{msg}"
    );
    let text = GOOD.replace(
        "base_image = \"eclipse-temurin:17-jre\"",
        "dockerfile = \"../../etc/Dockerfile\"",
    );
    let msg = parse(&text).unwrap_err().to_string();
    assert!(
        msg.contains("dockerfile must be a path inside the repository"),
        "{msg}"
    );
    let text = GOOD.replace(
        "container_port = 8080",
        "container_port = 8080\ndeploy_timeout_secs = 0",
    );
    let msg = parse(&text).unwrap_err().to_string();
    assert!(
        msg.contains("deploy_timeout_secs must be at least 1"),
        "{msg}"
    );
}

#[test]
fn cross_field_mistakes_name_the_entry_line() {
    let text = GOOD.replace("base_image = \"eclipse-temurin:17-jre\"", "");
    let msg = parse(&text).unwrap_err().to_string();
    assert!(msg.contains("line 12"), "{msg}");
    assert!(
        msg.contains("exactly one of base_image and dockerfile"),
        "{msg}"
    );

    let text = format!("{GOOD}\n[[environments]]\nname = \"dev\"\n");
    let msg = parse(&text).unwrap_err().to_string();
    assert!(msg.contains("declared twice"), "{msg}");
}

#[test]
fn variables_must_be_valid_names() {
    let text = GOOD.replace("REGISTRY =", "\"BAD-NAME\" =");
    let msg = parse(&text).unwrap_err().to_string();
    assert!(msg.contains("BAD-NAME"), "{msg}");
}

#[test]
fn secrets_are_checked_and_never_printed() {
    let with = GOOD.replace(
        "variables = { REGISTRY = \"nacos-dev:8848\" }",
        "variables = { REGISTRY = \"nacos-dev:8848\" }\nsecrets = { DB_PASSWORD = \"hunter2\" }",
    );
    let c = parse(&with).unwrap();
    assert_eq!(c.environments[0].secrets["DB_PASSWORD"].expose(), "hunter2");
    assert!(!format!("{:?}", c.environments).contains("hunter2"));
    assert_eq!(
        c.environments[0].redactor().redact("pw=hunter2".into()),
        "pw=***"
    );

    let twice = GOOD.replace(
        "variables = { REGISTRY = \"nacos-dev:8848\" }",
        "variables = { REGISTRY = \"x\" }\nsecrets = { REGISTRY = \"y\" }",
    );
    let msg = parse(&twice).unwrap_err().to_string();
    assert!(
        msg.contains("\"REGISTRY\" is both a variable and a secret"),
        "{msg}"
    );
    let bad = GOOD.replace(
        "variables = { REGISTRY = \"nacos-dev:8848\" }",
        "secrets = { \"1PW\" = \"y\" }",
    );
    let msg = parse(&bad).unwrap_err().to_string();
    assert!(msg.contains("environments.secrets: \"1PW\""), "{msg}");
}

#[test]
fn the_documented_example_config_is_valid() {
    let text = include_str!("../../../docs/coordinator.example.toml");
    let config = CoordinatorConfig::parse(Path::new("coordinator.example.toml"), text).unwrap();
    assert!(
        !config.plaintext,
        "the example listens on the network, so over TLS"
    );
    let prod = config
        .environments
        .iter()
        .find(|e| e.name().as_str() == "prod")
        .unwrap();
    assert_eq!(prod.approve, vec!["ops".to_owned()]);
}

#[test]
fn plaintext_off_loopback_is_refused() {
    let text = GOOD.replace(
        "listen = \"127.0.0.1:7701\"",
        "listen = \"0.0.0.0:7701\"\nplaintext = true",
    );
    let err = CoordinatorConfig::parse(Path::new("c.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plaintext = true is allowed only on a loopback address"),
        "{err}"
    );
}

#[test]
fn fetch_credentials_name_a_secret_of_every_environment_they_apply_to() {
    let with = |fetch: &str, secrets: &str| {
        GOOD.replace(
            "name = \"prod\"\n",
            &format!("name = \"prod\"\n[environments.secrets]\n{secrets}\n"),
        ) + fetch
    };
    let fetch = "[apps.fetch_credentials]\nusername = \"reader\"\ntoken_secret = \"READ\"\n";
    // dev has no READ: refused, naming the secret and the environment.
    let msg = parse(&with(fetch, "READ = \"r\"")).unwrap_err().to_string();
    assert!(
        msg.contains("\"READ\"") && msg.contains("environment dev"),
        "{msg}"
    );
    // Only prod fetches with a credential: dev fetches without.
    let only_prod = "[apps.fetch_credentials.env.prod]\ntoken_secret = \"READ\"\n";
    let c = parse(&with(only_prod, "READ = \"r\"")).unwrap();
    let app = &c.apps[0];
    assert_eq!(fetch::fetch_token(app, &c.environments[0]), None);
    assert_eq!(
        fetch::fetch_token(app, &c.environments[1]),
        Some((None, "r".to_owned()))
    );
    let typo = "[apps.fetch_credentials.env.prd]\ntoken_secret = \"READ\"\n";
    let msg = parse(&with(typo, "READ = \"r\"")).unwrap_err().to_string();
    assert!(
        msg.contains("env.prd names no configured environment"),
        "{msg}"
    );
    let unknown = "[apps.fetch_credentials]\ntoken = \"x\"\n";
    let msg = parse(&with(unknown, "")).unwrap_err().to_string();
    assert!(msg.contains("unknown field `token`"), "{msg}");
}

#[test]
fn the_store_is_sled_unless_a_postgres_url_is_given() {
    assert_eq!(parse(GOOD).unwrap().store_choice(), StoreChoice::Sled);
    let text = format!(
        "store = \"postgres://gantry@db:5432/gantry\"\nstore_password = \"hunter2\"\n{GOOD}"
    );
    let config = parse(&text).unwrap();
    let StoreChoice::Postgres { url, password, ca } = config.store_choice() else {
        panic!("a Postgres store");
    };
    assert_eq!(url, "postgres://gantry@db:5432/gantry");
    assert_eq!(ca, None);
    assert_eq!(password.map(|p| p.expose()), Some("hunter2"));
    assert_eq!(format!("{:?}", config.store_password), "Some(\"***\")");
    let refused = |text: String| parse(&text).unwrap_err().to_string();
    assert_eq!(
        refused(format!("store = \"postgres://gantry:hunter2@db/gantry\"\n{GOOD}")),
        "invalid config file coordinator.toml, line 1: store: keep the password out of the URL (it is logged); \
         put it in store_password, a secret"
    );
    assert!(refused(format!("store = \"mysql://db\"\n{GOOD}"))
        .starts_with("invalid config file coordinator.toml, line 1: store must be \"sled\" or a Postgres URL"));
    assert_eq!(
        refused(format!("store_password = \"x\"\n{GOOD}")),
        "invalid config file coordinator.toml, line 1: store_password is for a Postgres store; store is sled"
    );
}

#[test]
fn the_advertised_url_defaults_to_the_listen_address_and_is_checked() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.advertised_url(), "https://127.0.0.1:7701");
    let text = GOOD.replace("listen = \"127.0.0.1:7701\"", "listen = \"0.0.0.0:7701\"");
    let url = parse(&text).unwrap().advertised_url();
    assert!(
        url.starts_with("https://") && url.ends_with(":7701"),
        "{url}"
    );
    assert!(!url.contains("0.0.0.0"), "{url}");

    let given = format!("advertise_url = \"https://coord-a.example:7700/\"\n{GOOD}");
    assert_eq!(
        parse(&given).unwrap().advertised_url(),
        "https://coord-a.example:7700"
    );
    let wrong_scheme = format!("advertise_url = \"http://coord-a:7700\"\n{GOOD}");
    let msg = parse(&wrong_scheme).unwrap_err().to_string();
    assert!(
        msg.contains("line 1") && msg.contains("give https://HOST:PORT"),
        "{msg}"
    );
    let junk = format!("advertise_url = \"coord-a\"\n{GOOD}");
    let msg = parse(&junk).unwrap_err().to_string();
    assert!(msg.contains("advertise_url"), "{msg}");
}

#[test]
fn the_store_sslmode_and_ca_must_agree() {
    let refused = |head: &str| parse(&format!("{head}{GOOD}")).unwrap_err().to_string();
    assert_eq!(
        refused("store = \"postgres://g@db/g?sslmode=verify-full\"\n"),
        "invalid config file coordinator.toml, line 1: store: sslmode=verify-full checks the \
         database's certificate against a CA: set store_ca to the PEM file of the CA that signed it"
    );
    assert_eq!(
        refused("store = \"postgres://g@db/g?sslmode=allow\"\n"),
        "invalid config file coordinator.toml, line 1: store: sslmode must be disable, prefer, \
         require, verify-ca or verify-full, not \"allow\""
    );
    assert_eq!(
        refused("\nstore_ca = \"ca.pem\"\n"),
        "invalid config file coordinator.toml, line 2: store_ca is for a Postgres store; store is sled"
    );
    assert_eq!(
        refused("store = \"postgres://g@db/g?sslmode=disable\"\nstore_ca = \"ca.pem\"\n"),
        "invalid config file coordinator.toml, line 2: store_ca is set but the store's \
         sslmode=disable turns TLS off: remove one of them"
    );
    for ok in ["require", "verify-ca", "verify-full", "prefer"] {
        let head = format!("store = \"postgres://g@db/g?sslmode={ok}\"\nstore_ca = \"ca.pem\"\n");
        parse(&format!("{head}{GOOD}")).unwrap();
    }
}

#[test]
fn the_store_ca_is_read_from_beside_the_config_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    let load = |ca: &[u8]| {
        std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
        let text = format!("store = \"postgres://g@db/g\"\nstore_ca = \"ca.pem\"\n{GOOD}");
        std::fs::write(&config, text).unwrap();
        CoordinatorConfig::load(&config)
    };
    let ca = dir.path().join("ca.pem");
    let pem = rcgen::generate_simple_self_signed(vec!["db".into()])
        .unwrap()
        .cert
        .pem();
    let loaded = load(pem.as_bytes()).unwrap();
    let StoreChoice::Postgres { ca: Some(got), .. } = loaded.store_choice() else {
        panic!("a Postgres store with a CA");
    };
    assert_eq!(got, ca);

    let msg = load(b"not a certificate\n").unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "invalid config file {}, line 2: store_ca: {} holds no certificate: give the CA's \
             certificate in PEM (-----BEGIN CERTIFICATE----- ...)",
            config.display(),
            ca.display()
        )
    );
    std::fs::remove_file(&ca).unwrap();
    let text = format!("store = \"postgres://g@db/g\"\nstore_ca = \"ca.pem\"\n{GOOD}");
    std::fs::write(&config, text).unwrap();
    let msg = CoordinatorConfig::load(&config).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "invalid config file {}, line 2: store_ca: cannot read {}: ",
            config.display(),
            ca.display()
        )),
        "{msg}"
    );
}
