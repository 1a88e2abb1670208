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
//! `tests/fuzz/<module>.proptest-regressions`, next to the module's file, to
//! try first next time. Generators mix random values with pieces that hit
//! the rules (".lock", "@{", "://", overlapping secrets, lines at the length
//! limit, well-formed protobuf of each message type), so edge cases come up
//! in every run.
//!
//! Each property runs [`CASES`] cases, which keeps `cargo test` quick. For a
//! long run set `PROPTEST_CASES`, which overrides it, e.g.
//! `PROPTEST_CASES=100000 cargo test --release -p gantry-shared --test fuzz`.
//!
//! The properties are grouped by what they fuzz:
//! - [`names`]: identifiers, branch names (against libgit2) and job ids;
//! - [`text`]: the capping of log lines, and the redaction of secrets and
//!   of URL credentials;
//! - [`configs`]: both config files, join tokens and coordinator URLs;
//! - [`messages`]: the decoding of every protobuf message sent to Gantry.

use proptest::test_runner::FileFailurePersistence;
use proptest::{collection::vec, prelude::*, sample::select};

mod configs;
mod messages;
mod names;
mod text;

/// Cases per property when `PROPTEST_CASES` is not set.
const CASES: u32 = 1024;

/// The config of every `proptest!` block: [`CASES`] cases, and the seeds of
/// failures kept in a file named after the block's source file (see the
/// module doc).
fn fuzz_config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::with_cases(CASES)
    }
}

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
