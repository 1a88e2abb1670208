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
    /// The values, longest first, so a secret containing another is
    /// replaced whole.
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

    /// `text` with every secret value replaced by `***`.
    pub fn redact(&self, text: String) -> String {
        if !self.values.iter().any(|v| text.contains(v.as_str())) {
            return text;
        }
        let mut text = text;
        for value in self.values.iter() {
            text = text.replace(value.as_str(), "***");
        }
        text
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
    fn never_printed() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "\"***\" ***");
        assert_eq!(secret.expose(), "hunter2");
    }
}
