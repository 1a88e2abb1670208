//! Text Gantry stores or shows: log lines capped at the length limit, and
//! the redaction of secrets and of URL credentials.

use gantry_shared::{
    git::redact_url,
    limits::{cap_log_line, MAX_LOG_LINE_BYTES, TRUNCATED_MARKER},
    Redactor,
};
use proptest::{collection::vec, prelude::*, sample::select};

use super::{fuzz_config, pieces};

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

proptest! {
    #![proptest_config(fuzz_config())]

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
}
