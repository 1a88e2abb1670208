//! Property-based fuzzing of everything Gantry reads from outside its own
//! process: names in requests, log lines, the redaction of secrets and of
//! URL credentials, both config files, join tokens, and every protobuf
//! message an agent or a client sends.
//!
//! Why: these are the edges an attacker, a broken agent, a careless operator
//! or a hostile git remote controls. A panic there kills a coordinator task;
//! a name accepted wrongly can become a command-line option or a path; a
//! redaction that misses a byte leaks part of a secret into stored logs.
//!
//! Each property states what must hold for *every* input; proptest searches
//! for a counter-example, shrinks it to a minimal one and keeps its seed in
//! `tests/fuzz.proptest-regressions`, to try first next time. Generators mix
//! random values with pieces that hit the rules (".lock", "@{", "://",
//! overlapping secrets, lines at the length limit, well-formed protobuf of
//! each message type), so edge cases come up in every run.
//!
//! Each property runs [`CASES`] cases, which keeps `cargo test` quick. For a
//! long run set `PROPTEST_CASES`, which overrides it, e.g.
//! `PROPTEST_CASES=100000 cargo test --release -p gantry-shared --test fuzz`.

use std::collections::{HashMap, HashSet};
use std::{fmt::Debug, fmt::Display, path::Path, str::FromStr};

use gantry_shared::{
    config::{agent::AgentConfig, CoordinatorConfig},
    git::redact_url,
    limits::{cap_log_line, MAX_LOG_LINE_BYTES, TRUNCATED_MARKER},
    proto,
    tls::{host_port, JoinToken},
    AgentName, AppName, BranchName, EnvName, JobId, NameError, Redactor,
};
use proptest::{collection::vec, prelude::*, sample::select};
use proptest::{sample::Index, test_runner::FileFailurePersistence};
use prost::Message;
use prost_types::{field_descriptor_proto::Label, field_descriptor_proto::Type, DescriptorProto};

/// Cases per property when `PROPTEST_CASES` is not set.
const CASES: u32 = 1024;

/// Concatenations of up to `max` of the `|`-separated pieces `from`: text
/// dense in what a rule is about.
fn pieces(from: &'static str, max: usize) -> impl Strategy<Value = String> {
    vec(select(from.split('|').collect::<Vec<_>>()), 0..max).prop_map(|p| p.concat())
}

/// Pieces touching each of git's ref-name rules, and non-ASCII oddities.
const REF_PIECES: &str = concat!(
    "a|Z|0|_|-|.|/|@|{|}|.lock|HEAD|~|^|:|?|*|[|\\",
    "| |\t|\n|\0|\u{7f}|é|\u{85}|\u{202e}|😀"
);

/// Text for the name validators: anything, plausible names, and names at
/// the length limits (32 and 63 bytes for identifiers, 200 for branches).
fn name_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z][a-z0-9-]{0,70}",
        "[-a-zA-Z0-9_./@]{0,40}",
        pieces(REF_PIECES, 16),
        (195usize..205).prop_map(|n| "b".repeat(n)),
    ]
}

/// Whether `s` is `a-z`, `0-9` and `-`, starts with a letter and has at
/// most `max` bytes: the documented rule of identifiers and of roles.
fn lowercase_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    (1..=max).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A refused name is quoted in the error cut to 128 characters, so a huge
/// request cannot make a huge log line.
fn check_error(e: &NameError) -> Result<(), TestCaseError> {
    prop_assert!(e.value.chars().count() <= 128 && !e.to_string().is_empty());
    Ok(())
}

/// An identifier type accepts exactly what its docs say (a lowercase name
/// of at most `max` bytes not ending with `-`), and reads back unchanged.
fn check_identifier<T>(s: &str, max: usize) -> Result<(), TestCaseError>
where
    T: FromStr<Err = NameError> + Display + AsRef<str> + Into<String>,
{
    let rule = lowercase_name(s, max) && !s.ends_with('-');
    match s.parse::<T>() {
        Ok(name) => {
            prop_assert!(rule, "accepted {:?}", s);
            prop_assert!(name.as_ref() == s && name.to_string() == s && name.into() == s);
        }
        Err(e) => (prop_assert!(!rule, "refused {:?}", s), check_error(&e)?).1,
    }
    Ok(())
}

/// The slow, obviously right model of [`Redactor::redact`]: mark every byte
/// of every occurrence of a non-empty secret (overlapping ones included),
/// and put one `***` for each run of marked bytes.
fn redact_model(text: &str, secrets: &[String]) -> String {
    let mut hidden = vec![false; text.len()];
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        for start in (0..text.len()).filter(|i| text.as_bytes()[*i..].starts_with(s.as_bytes())) {
            hidden[start..start + s.len()].fill(true);
        }
    }
    let mut out = String::new();
    for (i, c) in text.char_indices() {
        match (hidden[i], i > 0 && hidden[i - 1]) {
            (false, _) => out.push(c),
            (true, false) => out.push_str("***"),
            (true, true) => {}
        }
    }
    out
}

/// Secrets, and a text made of them and filler. Small alphabets make
/// secrets overlap each other and themselves ("aba" in "ababa"). Secrets
/// hold no `*`: one that does can reappear in the `***` put in its place.
fn secrets_and_text() -> impl Strategy<Value = (Vec<String>, String)> {
    let secret = prop_oneof!["[ab]{0,4}", "[a-cé]{1,6}", any::<String>()];
    vec(secret.prop_map(|s| s.replace('*', "")), 0..5).prop_flat_map(|secrets| {
        let filler = "[abé *x]{0,4}".boxed();
        let piece = match secrets.is_empty() {
            true => filler,
            false => prop_oneof![filler, select(secrets.clone())].boxed(),
        };
        (Just(secrets), vec(piece, 0..10).prop_map(|p| p.concat()))
    })
}

/// Text around URLs: separators, quotes and URL syntax.
const URL_PIECES: &str = "://|@|:|/| |\n|'|\"|<|>|`|(|)|https|x|é";

/// A text holding `scheme://user:password@host...`, and the password. It
/// starts with `Q` and nothing else holds a `Q`, so any `Q` in the output is
/// a piece of it. Users and passwords use RFC 3986's userinfo characters
/// (`'`, `;` and the other sub-delimiters included), passwords also `@` and
/// `/`, which people paste unencoded.
fn text_with_password() -> impl Strategy<Value = (String, String)> {
    let around = || prop_oneof![any::<String>(), pieces(URL_PIECES, 10)];
    let user = "[A-Za-z0-9._~!$&'()*+,;=%-]{0,8}";
    let password = "[A-Za-z0-9._~!$&'()*+,;=%:@/-]{0,12}";
    let host = "[a-z0-9.-]{1,12}(:[0-9]{1,5})?(/[A-Za-z0-9._~/%-]{0,12})?";
    let end = select(&["", " ", "\n", "\t", "'", "\"", ">", "`", ")", ",", "."][..]);
    let scheme = "[a-z][a-z0-9+.-]{0,8}";
    (around(), scheme, user, password, host, end, around()).prop_map(|t| {
        let (before, scheme, user, password, host, end, after) = t;
        let [before, user, host, after] = [before, user, host, after].map(|s| s.replace('Q', ""));
        let text = format!("{before}{scheme}://{user}:Q{password}@{host}{end}{after}");
        (text, format!("Q{password}"))
    })
}

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

/// `v` in protobuf's base-128 varint encoding.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// Message types by full name, e.g. ".gantry.v1.Register.LabelsEntry".
type Types = HashMap<String, DescriptorProto>;

/// Adds each type of `messages`, and the types nested in them, to `all`.
fn collect(scope: &str, messages: &[DescriptorProto], all: &mut Types) {
    for m in messages {
        let name = format!("{scope}.{}", m.name());
        collect(&name, &m.nested_type, all);
        all.insert(name, m.clone());
    }
}

/// Strings for string fields: empty, names, hostile ones.
const STRINGS: [&str; 8] = ["", "prod", "main", "-rf", "../etc", "a\0b", "é😀", "a@{1}"];

/// A well-formed encoding of message type `name`, every choice (which
/// fields, how many times, what values) read from `dice`: it reaches fields
/// deep in nested messages, which random bytes almost never do. Gantry's
/// protos have only varint and length-delimited fields.
fn message_bytes(types: &Types, name: &str, dice: &mut Vec<u32>) -> Vec<u8> {
    const K: u64 = 0x9e37_79b9_7f4a_7c15; // spreads a die over all 64 bits
    let mut out = Vec::new();
    for f in &types[name].field {
        let times = dice.pop().unwrap_or(0) % if f.label() == Label::Repeated { 4 } else { 2 };
        for _ in 0..times {
            let (v, key) = (dice.pop().unwrap_or(0), (f.number() as u64) << 3);
            let delimited = match f.r#type() {
                Type::Message => message_bytes(types, f.type_name(), dice),
                Type::String | Type::Bytes => STRINGS[v as usize % 8].into(),
                // Integers, bools and enums (wire type 0): small values, or any.
                _ => {
                    let v = [u64::from(v / 2 % 16), u64::from(v).wrapping_mul(K)][v as usize % 2];
                    out.extend([varint(key), varint(v)].concat());
                    continue;
                }
            };
            out.extend([varint(key | 2), varint(delimited.len() as u64), delimited].concat());
        }
    }
    out
}

/// Bytes for the decoders: random ones, and well-formed messages of the
/// types sent (see [`message_bytes`]), sometimes cut short or with a byte
/// changed.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut types = Types::new();
    for file in &set.file {
        collect(
            &format!(".{}", file.package()),
            &file.message_type,
            &mut types,
        );
    }
    // AgentMessage, whose bodies nest deepest, a third of the time.
    let name = prop_oneof![1 => Just("AgentMessage"), 2 => select(SENT)];
    let choices = (
        name,
        vec(any::<u32>(), 0..300),
        any::<Index>(),
        any::<u8>(),
        0..4,
    );
    let message = choices.prop_map(move |(name, mut dice, at, byte, damage)| {
        let mut bytes = message_bytes(&types, &format!(".gantry.v1.{name}"), &mut dice);
        let at = at.index(bytes.len() + 1);
        match damage {
            0 => bytes.truncate(at),
            1 if at < bytes.len() => bytes[at] ^= byte,
            _ => {}
        }
        bytes
    });
    prop_oneof![1 => vec(any::<u8>(), 0..256), 4 => message]
}

/// Decoding `bytes` as `M` fails or succeeds without panicking, and a
/// decoded message re-encodes to bytes that decode to the same message.
fn decodes<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(msg) = M::decode(bytes) {
        let again = msg.encode_to_vec();
        prop_assert_eq!(again.len(), msg.encoded_len());
        let back = M::decode(again.as_slice());
        prop_assert!(back.as_ref() == Ok(&msg), "{:?} from {:?}", back, msg);
    }
    Ok(())
}

/// Lists the messages sent to Gantry's servers as `SENT`, and defines
/// `decode_all`, which runs [`decodes`] for each of them.
macro_rules! sent {
    ($($ty:ident)*) => {
        const SENT: &[&str] = &[$(stringify!($ty)),*];
        fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
            $(decodes::<proto::$ty>(bytes)?;)*
            Ok(())
        }
    };
}

sent! {
    // AgentService: the Attach stream, each body of it, and Join.
    AgentMessage Register Heartbeat JobEvent JobFinished LogLine LogBatch Drain ContainerOutput
    JoinRequest
    // What the coordinator sends on the Attach stream, which agents decode.
    CoordinatorMessage
    // Every request of OperatorService.
    ListAppsRequest ListEnvironmentsRequest ListAgentsRequest DeployRequest GetJobRequest
    ListJobsRequest CancelJobRequest StreamJobLogsRequest RollbackRequest ListReleasesRequest
    GetEnvironmentStateRequest DiffEnvironmentsRequest ListBranchesRequest CreateBranchRequest
    StreamAppLogsRequest ApproveRequest RevokeAgentRequest ListAuditRequest WhoAmIRequest
}

/// The samples are valid, so edits start from a file that passes every
/// check, and a change of schema cannot make the fuzzing silently shallow.
#[test]
fn samples_are_valid() {
    CoordinatorConfig::parse(Path::new("coordinator.toml"), COORDINATOR_TOML).unwrap();
    AgentConfig::parse(Path::new("agent.toml"), AGENT_TOML).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::with_cases(CASES)
    })]

    /// App, environment and agent names accept exactly the documented
    /// identifiers, and read back unchanged.
    #[test]
    fn identifiers_accept_exactly_the_documented_names(s in name_text()) {
        check_identifier::<AppName>(&s, 63)?;
        check_identifier::<EnvName>(&s, 32)?;
        check_identifier::<AgentName>(&s, 63)?;
    }

    /// An accepted branch name keeps every rule of `git check-ref-format
    /// --branch` and reads back unchanged; BranchName and libgit2 agree on
    /// every name but for Gantry's stricter extras (no leading '-', neither
    /// "@" nor "HEAD", at most 200 bytes).
    #[test]
    fn branch_names_follow_git_and_libgit2(s in name_text()) {
        let git2_ok = git2::Reference::is_valid_name(&format!("refs/heads/{s}"));
        let extras_ok = !s.starts_with('-') && s != "@" && s != "HEAD" && s.len() <= 200;
        match s.parse::<BranchName>() {
            Ok(b) => {
                let bad = |c: char| c.is_ascii_control() || " ~^:?*[\\".contains(c);
                prop_assert!(!s.is_empty() && !s.chars().any(bad) && s != "@" && s != "HEAD");
                prop_assert!(!s.starts_with(['-', '/']) && !s.ends_with(['/', '.']));
                prop_assert!(["..", "//", "@{"].iter().all(|t| !s.contains(t)), "{:?}", s);
                prop_assert!(s.split('/').all(|p| !p.starts_with('.') && !p.ends_with(".lock")));
                prop_assert!(git2_ok, "libgit2 refuses {:?}", s);
                prop_assert!(b.as_str() == s && b.to_string() == s);
                prop_assert_eq!(b.full_ref(), format!("refs/heads/{s}"));
            }
            Err(e) => {
                prop_assert!(!(git2_ok && extras_ok), "refused {:?}, which git accepts", s);
                check_error(&e)?;
            }
        }
    }

    /// Job ids: text parses only to a positive number, written `n` or `#n`,
    /// and every positive number reads back from its text.
    #[test]
    fn job_ids_are_positive_numbers(s in name_text(), n in 1u64..) {
        if let Ok(id) = s.parse::<JobId>() {
            prop_assert!(id.get() > 0);
            prop_assert_eq!(s.trim_start_matches('#').parse::<u64>(), Ok(id.get()));
        }
        let id = JobId::new(n).unwrap();
        prop_assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
        prop_assert_eq!(format!("#{n}").parse::<JobId>(), Ok(id));
    }

    /// A capped log line fits the limit, is kept whole when short, and
    /// otherwise is the longest prefix (on a character boundary) that fits
    /// with the marker appended; capping twice changes nothing.
    #[test]
    fn log_lines_are_capped_on_a_char_boundary(
        // Around the cut (limit - marker), around the limit, anywhere.
        n in prop_oneof![8150usize..8170, 8184usize..8200, 0usize..3 * MAX_LOG_LINE_BYTES],
        filler in select(&["a", "é", "€", "😀"][..]),
        tail in vec(any::<char>(), 0..8),
    ) {
        let mut line = filler.repeat(n / filler.len());
        line.extend(tail);
        let out = cap_log_line(line.clone());
        prop_assert!(out.len() <= MAX_LOG_LINE_BYTES);
        if line.len() <= MAX_LOG_LINE_BYTES {
            prop_assert_eq!(&out, &line);
        } else {
            let kept = out.strip_suffix(TRUNCATED_MARKER).expect("a cut line ends with the marker");
            prop_assert!(line.starts_with(kept));
            // At most 3 bytes are lost to the cut: a character has at most 4.
            prop_assert!(kept.len() + 3 >= MAX_LOG_LINE_BYTES - TRUNCATED_MARKER.len());
        }
        prop_assert_eq!(cap_log_line(out.clone()), out);
    }

    /// No secret survives redaction, nor any byte of one, even where secrets
    /// overlap; text without secrets comes back unchanged.
    #[test]
    fn redaction_leaves_no_byte_of_any_secret((secrets, text) in secrets_and_text()) {
        let out = Redactor::new(secrets.clone()).redact(text.clone());
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            prop_assert!(!out.contains(s.as_str()), "{:?} left in {:?}", s, out);
        }
        prop_assert_eq!(out, redact_model(&text, &secrets));
    }

    /// `redact_url` shows no part of a URL's password, wherever the URL sits
    /// in the text and whatever surrounds it.
    #[test]
    fn url_passwords_never_show((text, password) in text_with_password()) {
        let out = redact_url(&text);
        prop_assert!(!out.contains('Q'), "part of {:?} shows in {:?}", password, out);
    }

    /// `redact_url` takes any text, leaves text without `://` alone, and a
    /// second pass changes nothing.
    #[test]
    fn url_redaction_takes_any_text(text in prop_oneof![any::<String>(), pieces(URL_PIECES, 24)]) {
        let out = redact_url(&text);
        prop_assert!(text.contains("://") || out == text);
        prop_assert_eq!(redact_url(&out), out);
    }

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

    /// Every message an agent or a client sends (and the coordinator's,
    /// which agents decode) decodes any bytes without panicking, and
    /// re-encodes to the same message.
    #[test]
    fn messages_decode_any_bytes(bytes in wire_bytes()) {
        decode_all(&bytes)?;
    }
}
