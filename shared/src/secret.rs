//! A value that must never be shown: tokens and passwords from config files.
//! Its `Debug` and `Display` print `***`, so a config dump or a log line
//! cannot leak it; code that needs the value asks for it by name.

use serde::Deserialize;

/// A secret string.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Replaces secret values with `***` in text bound for logs.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// The values, longest first.
    values: std::sync::Arc<Vec<String>>,
}

impl Redactor {
    /// A redactor of `values` (empty ones are ignored: they would match
    /// everywhere).
    pub fn new<I: IntoIterator<Item = String>>(values: I) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self {
            values: std::sync::Arc::new(values),
        }
    }

    /// `text` with every secret value replaced by `***`. Matches are found
    /// in the original text, overlapping ones included, and each run of
    /// overlapping or touching matches becomes one `***`: no byte of any
    /// match survives, even where two secrets (or two matches of one) overlap.
    pub fn redact(&self, text: String) -> String {
        let mut hits: Vec<(usize, usize)> = Vec::new();
        for value in self.values.iter() {
            let mut from = 0;
            while let Some(at) = text[from..].find(value.as_str()) {
                let start = from + at;
                hits.push((start, start + value.len()));
                // Go on one character later, so "aa" matches twice in "aaa".
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if hits.is_empty() {
            return text;
        }
        hits.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let (mut start, mut end) = hits[0];
        let mut copied = 0;
        for &(s, e) in &hits[1..] {
            if s > end {
                out.push_str(&text[copied..start]);
                out.push_str("***");
                (copied, start) = (end, s);
            }
            end = end.max(e);
        }
        out.push_str(&text[copied..start]);
        out.push_str("***");
        out.push_str(&text[end..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{Redactor, Secret};

    #[test]
    fn secrets_in_text_become_stars() {
        let redactor =
            Redactor::new(["pw-123".to_owned(), "pw-123-long".to_owned(), String::new()]);
        assert_eq!(
            redactor.redact("db pw-123-long and pw-123, not pw-12".into()),
            "db *** and ***, not pw-12"
        );
        assert_eq!(Redactor::default().redact("plain".into()), "plain");
    }

    #[test]
    fn overlapping_secrets_leave_no_part_behind() {
        // Found by shared/tests/fuzz/: replacing one secret after another
        // cut the first match and left the rest of an overlapping one.
        let redactor = Redactor::new(["abcd".to_owned(), "cdef".to_owned()]);
        assert_eq!(redactor.redact("xabcdefy".into()), "x***y");
        let redactor = Redactor::new(["aa".to_owned()]);
        assert_eq!(redactor.redact("aaa aa".into()), "*** ***");
        let redactor = Redactor::new(["pw".to_owned()]);
        assert_eq!(redactor.redact("pwpw".into()), "***");
    }

    #[test]
    fn never_printed() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "\"***\" ***");
        assert_eq!(secret.expose(), "hunter2");
    }
}
