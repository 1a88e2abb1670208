//! Both config files (the coordinator's and the agent's), join tokens and
//! the coordinator URLs split by `host_port`.

use std::{collections::HashSet, path::Path};

use gantry_shared::{
    config::{agent::AgentConfig, CoordinatorConfig},
    tls::{host_port, JoinToken},
};
use proptest::{collection::vec, prelude::*, sample::select, sample::Index};

use super::{fuzz_config, lowercase_name, name_text, pieces};

/// The sample of shared/src/config/tests.rs, plus secrets, access rules, a
/// user and a dockerfile app, so that edits reach every check.
const COORDINATOR_TOML: &str = r#"
listen = "127.0.0.1:7701"
plaintext = true
rate_limit_per_minute = 600
[[environments]]
name = "dev"
variables = { REGISTRY = "nacos-dev:8848" }
secrets = { DB_PASSWORD = "hunter2" }
deploy = ["ops", "dev"]
[[environments]]
name = "prod"
rollback = ["ops"]
approve = ["lead"]
[[apps]]
name = "shop"
remote = "file:///srv/git/shop.git"
build_command = "mvn -B package"
artifact = "target/*.jar"
base_image = "eclipse-temurin:17-jre"
container_port = 8080
[[apps]]
name = "cart"
remote = "https://git.example.com/cart.git"
git_token = "tok"
default_branch = "release/1.2"
build_command = "make"
artifact = "out/cart.jar"
dockerfile = "Dockerfile"
container_port = 9090
public_port = 80
[[users]]
name = "ann"
roles = ["ops", "lead"]
token_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"#;

/// An `agent.toml` like the one `gantry-agent install` writes.
const AGENT_TOML: &str = r#"
coordinator = "https://coordinator.internal:7700"
env = "prod"
name = "prod-1"
capacity = 2
public_host = "prod-1.example.com"
drain_grace_secs = 60
[labels]
zone = "a"
"#;

/// TOML syntax, for edits anywhere in a file.
const TOML_PIECES: &str = "\n|=|\"|'|[|]|{|}|,|#|\\|\\u0000|\"\"\"|..|[[apps]]|[[users]]|= \"x\"";

/// Values that each break (or just pass) one rule of the schema.
const TOML_VALUES: &str = concat!(
    r#"""|" "|"/x"|"../x"|"a/../b"|"-x"|"a..b"|"Ops"|"E3B0C442"|"0.0.0.0:7700"|"[::1]:0"|"#,
    r#"[]|[""]|["Ops"]|["ops", "ops"]|0|-1|65536|1e999|true|{}|{ "1X" = "y" }|"\u0000""#,
);

/// How a TOML value starts: `"` for a string, `[` for a list, `0` for a
/// number...
fn value_kind(v: &str) -> Option<u8> {
    let b = v.trim_start_matches('-').bytes().next()?;
    Some(if b.is_ascii_digit() { b'0' } else { b })
}

/// `text` after one to three edits: cut up to 40 bytes at a random place and
/// put random text or TOML syntax there, or give the key of a random line
/// a value of [`TOML_VALUES`] or a random string.
fn edited(text: &'static str) -> impl Strategy<Value = String> {
    let raw = prop_oneof![Just(String::new()), any::<String>(), pieces(TOML_PIECES, 4)];
    let value = prop_oneof![
        select(TOML_VALUES.split('|').collect::<Vec<_>>()).prop_map(str::to_owned),
        any::<String>().prop_map(|s| toml::Value::String(s).to_string())
    ];
    let edit = prop_oneof![
        1 => (any::<Index>(), 0usize..40, raw),
        2 => (any::<Index>(), Just(99), value)
    ];
    vec(edit, 1..4).prop_map(move |edits| {
        let mut s = text.to_owned();
        for (at, cut, insert) in edits {
            let mut start = at.index(s.len() + 1);
            while !s.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (start + cut).min(s.len());
            if cut == 99 {
                // A value edit: the value of the first line from here on
                // whose value is of the same kind (string, list, number...),
                // so that most edits get past the types to the checks.
                let lines: Vec<_> = s.match_indices('\n').map(|(i, _)| i + 1).collect();
                let here = lines.partition_point(|&l| l <= start);
                let found = lines[here..].iter().chain(&lines[..here]).find_map(|&l| {
                    let stop = s[l..].find('\n').map_or(s.len(), |i| l + i);
                    let eq = l + s[l..stop].find(" = ")? + 3;
                    (value_kind(&s[eq..stop]) == value_kind(&insert)).then_some((eq, stop))
                });
                let Some(found) = found else { continue };
                (start, end) = found;
            }
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.replace_range(start..end, &insert);
        }
        s
    })
}

/// Everything `CoordinatorConfig::parse` promises of a config it accepts,
/// restated from its documentation.
fn check_coordinator_config(c: &CoordinatorConfig) -> Result<(), TestCaseError> {
    let var = |k: &String| {
        !k.starts_with(|c: char| c.is_ascii_digit())
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let role = |r: &String| lowercase_name(r, 32);
    prop_assert!(!c.environments.is_empty() && c.rate_limit_per_minute > 0);
    prop_assert!(!c.plaintext || c.listen.ip().is_loopback());
    let mut names = HashSet::new();
    for env in &c.environments {
        prop_assert!(names.insert(env.name().clone()), "duplicate environment");
        prop_assert!(env.variables.keys().chain(env.secrets.keys()).all(var));
        prop_assert!(env.secrets.keys().all(|k| !env.variables.contains_key(k)));
        prop_assert!(env
            .deploy
            .iter()
            .chain(env.rollback_roles())
            .chain(&env.approve)
            .all(role));
    }
    let mut names = HashSet::new();
    for app in &c.apps {
        prop_assert!(names.insert(app.name().clone()), "duplicate app");
        prop_assert!(app.base_image.is_some() != app.dockerfile.is_some());
        prop_assert!(!app.remote.trim().is_empty() && !app.build_command.trim().is_empty());
        prop_assert!(!app.artifact.trim().is_empty() && !app.artifact.starts_with('/'));
        prop_assert!(app.artifact.split('/').all(|part| part != ".."));
        prop_assert!(app.health_path.starts_with('/') && app.keep_releases > 0);
        prop_assert!(app.health_timeout_secs > 0 && app.build_timeout_secs > 0);
    }
    let (mut names, mut hashes) = (HashSet::new(), HashSet::new());
    for user in &c.users {
        let hash = &user.token_sha256;
        prop_assert!(role(user.name.get_ref()) && names.insert(user.name.get_ref()));
        prop_assert!(hash.len() == 64 && hash.bytes().all(|b| b"0123456789abcdef".contains(&b)));
        prop_assert!(hashes.insert(hash) && user.roles.iter().all(role));
    }
    Ok(())
}

/// Text shaped like a join token (`gantry-join-1.env.name.expiry.nonce.
/// ca.mac`), each part now and then wrong, or any text.
fn join_token_text() -> impl Strategy<Value = String> {
    let name = || prop_oneof![6 => "[a-z]([a-z0-9-]{0,8}[a-z0-9])?", 1 => name_text()];
    let prefix = prop_oneof![9 => Just("gantry-join-1".to_owned()), 1 => name_text()];
    let expiry = prop_oneof![6 => "[0-9]{1,19}", 1 => "[+0-9]{0,21}"];
    // Hex of the right length; of one digit too few or too many; not hex.
    let hex = |right, wrong| prop_oneof![6 => right, 1 => wrong];
    let nonce = hex("[0-9a-f]{32}", "[0-9a-fA-F]{31,33}|[0-9a-gz.]{32}");
    let hash = || hex("[0-9a-fA-F]{64}", "[0-9a-fA-F]{63,65}|[0-9a-gz.]{64}");
    let parts = (
        prefix,
        name(),
        name(),
        expiry,
        (nonce, hash(), hash()),
        "\\s{0,2}",
    );
    let token = parts.prop_map(|(prefix, env, name, expiry, (nonce, ca, mac), space)| {
        format!("{space}{prefix}.{env}.{name}.{expiry}.{nonce}.{ca}.{mac}{space}")
    });
    prop_oneof![4 => token, 1 => any::<String>()]
}

/// The samples are valid, so edits start from a file that passes every
/// check, and a change of schema cannot make the fuzzing silently shallow.
#[test]
fn samples_are_valid() {
    CoordinatorConfig::parse(Path::new("coordinator.toml"), COORDINATOR_TOML).unwrap();
    AgentConfig::parse(Path::new("agent.toml"), AGENT_TOML).unwrap();
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// The coordinator's config parser takes any text, and any edit of a
    /// valid file, without panicking; what it accepts is valid.
    #[test]
    fn coordinator_config_parses_any_text(
        text in prop_oneof![1 => any::<String>(), 4 => edited(COORDINATOR_TOML)],
    ) {
        match CoordinatorConfig::parse(Path::new("coordinator.toml"), &text) {
            Ok(config) => check_coordinator_config(&config)?,
            Err(e) => prop_assert!(e.to_string().contains("coordinator.toml")),
        }
    }

    /// The agent's config parser takes any text, and any edit of a valid
    /// file, without panicking; what it accepts has a capacity, and reads
    /// back the same once written again by `to_toml`.
    #[test]
    fn agent_config_parses_any_text(text in prop_oneof![1 => any::<String>(), 4 => edited(AGENT_TOML)]) {
        let path = Path::new("agent.toml");
        match AgentConfig::parse(path, &text) {
            Ok(config) => {
                prop_assert!(config.capacity >= 1);
                prop_assert_eq!(AgentConfig::parse(path, &config.to_toml()).ok(), Some(config));
            }
            Err(e) => prop_assert!(e.to_string().contains("agent.toml")),
        }
    }

    /// Join tokens (sent by agents that hold no certificate yet) parse
    /// without panicking, and an accepted one prints as text that reads back
    /// the same; coordinator URLs split without panicking.
    #[test]
    fn join_tokens_parse_any_text(text in join_token_text()) {
        if let Ok(token) = JoinToken::parse(&text) {
            let hex = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
            prop_assert!(hex(&token.nonce, 32) && hex(&token.ca_fingerprint, 64));
            prop_assert!(hex(&token.mac, 64) && token.mac == token.mac.to_ascii_lowercase());
            prop_assert_eq!(JoinToken::parse(&token.to_string()).ok(), Some(token));
        }
        host_port(&text);
        host_port(&format!("https://{text}"));
    }
}
