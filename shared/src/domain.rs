//! Domain names that validate on construction. A value of one of these types
//! is known to be well formed, so the code behind the API edge never checks
//! again, and a name can never be read as a command-line option or a path.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why a name was refused; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    /// What kind of name ("app name", "branch name", ...).
    pub kind: &'static str,
    /// The value refused (quoted with escapes in the message).
    pub value: String,
    /// What rule it broke.
    pub reason: String,
}

impl NameError {
    fn new(kind: &'static str, value: &str, reason: impl Into<String>) -> Self {
        let value: String = value.chars().take(128).collect();
        Self {
            kind,
            value,
            reason: reason.into(),
        }
    }
}

/// Checks a short lowercase identifier: it starts with a letter, holds only
/// `a-z`, `0-9` and `-`, does not end with `-`, and is at most `max` bytes.
/// These are safe in Docker image names, container names, labels and paths.
fn check_identifier(kind: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    let rule = "use lowercase letters, digits and '-', starting with a letter";
    if value.is_empty() {
        return Err(NameError::new(kind, value, format!("it is empty; {rule}")));
    }
    if value.len() > max {
        return Err(NameError::new(
            kind,
            value,
            format!("it is longer than {max} characters"),
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NameError::new(
            kind,
            value,
            format!("it must start with a letter; {rule}"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::new(
            kind,
            value,
            format!("{bad:?} is not allowed; {rule}"),
        ));
    }
    if value.ends_with('-') {
        return Err(NameError::new(kind, value, "it must not end with '-'"));
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                check_identifier($kind, &value, $max)?;
                Ok(Self(value))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// An app's name, e.g. `shop`. Also the repository of its Docker images.
    AppName, "app name", 63
);
identifier!(
    /// An environment's name, e.g. `dev` or `prod`.
    EnvName, "environment name", 32
);
identifier!(
    /// An agent's name, e.g. `prod-1`.
    AgentName, "agent name", 63
);

/// A git branch name, following git's ref-name rules (`git check-ref-format
/// --branch`), and never starting with `-`, so it cannot be read as an option.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BranchName(String);

/// Longest branch name accepted; git allows more, but no team needs it and
/// every byte of it lands in labels and logs.
const MAX_BRANCH_BYTES: usize = 200;

impl BranchName {
    /// Validates `value` against git's ref-name rules.
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        check_branch(&value)?;
        Ok(Self(value))
    }

    /// The branch as text, e.g. `feature/login`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full ref, e.g. `refs/heads/feature/login`.
    pub fn full_ref(&self) -> String {
        format!("refs/heads/{}", self.0)
    }
}

fn check_branch(value: &str) -> Result<(), NameError> {
    let err = |reason: &str| Err(NameError::new("branch name", value, reason));
    if value.is_empty() {
        return err("it is empty");
    }
    if value.len() > MAX_BRANCH_BYTES {
        return err("it is longer than 200 characters");
    }
    if value.starts_with('-') {
        return err("it must not start with '-'");
    }
    if value == "@" || value == "HEAD" {
        return err("it is reserved by git");
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_ascii_control() || " ~^:?*[\\".contains(*c))
    {
        return err(&format!("git does not allow {c:?} in a branch name"));
    }
    if value.contains("..") || value.contains("@{") || value.contains("//") {
        return err("git does not allow '..', '@{' or '//' in a branch name");
    }
    if value.starts_with('/') || value.ends_with('/') || value.ends_with('.') {
        return err("it must not start or end with '/' or end with '.'");
    }
    for part in value.split('/') {
        if part.starts_with('.') || part.ends_with(".lock") {
            return err("no part may start with '.' or end with '.lock'");
        }
    }
    Ok(())
}

impl TryFrom<String> for BranchName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        Self::new(value)
    }
}

impl From<BranchName> for String {
    fn from(value: BranchName) -> String {
        value.0
    }
}

impl FromStr for BranchName {
    type Err = NameError;
    fn from_str(value: &str) -> Result<Self, NameError> {
        Self::new(value)
    }
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's id: a positive number, increasing in creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(u64);

impl JobId {
    /// Wraps a number; 0 is refused because it is proto3's "unset".
    pub fn new(value: u64) -> Result<Self, NameError> {
        if value == 0 {
            return Err(NameError::new("job id", "0", "job ids start at 1"));
        }
        Ok(Self(value))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for JobId {
    type Err = NameError;
    fn from_str(value: &str) -> Result<Self, NameError> {
        let n = value
            .trim_start_matches('#')
            .parse::<u64>()
            .map_err(|_| NameError::new("job id", value, "it must be a positive number"))?;
        Self::new(n)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_plain_names() {
        for ok in ["dev", "prod-2", "shop", "a1"] {
            AppName::new(ok).unwrap();
            EnvName::new(ok).unwrap();
        }
    }

    #[test]
    fn identifiers_refuse_what_docker_or_a_shell_would_misread() {
        for bad in [
            "", "Dev", "1dev", "-x", "x-", "a b", "a/b", "a.b", "ä", "x;rm",
        ] {
            let e = AppName::new(bad).unwrap_err();
            assert_eq!(e.kind, "app name", "{bad}");
        }
        assert!(EnvName::new("a".repeat(33)).is_err());
    }

    #[test]
    fn branches_follow_git_ref_rules() {
        for ok in [
            "main",
            "feature/login",
            "release-1.2",
            "fix_23",
            "a/b/c",
            "v1@2",
        ] {
            BranchName::new(ok).unwrap();
        }
        for bad in [
            "",
            "-rf",
            "--upload-pack=x",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "/a",
            "a/",
            "a//b",
            "a.",
            ".a",
            "a/.b",
            "a.lock",
            "a/b.lock",
            "a@{1}",
            "@",
            "HEAD",
            "a\u{7f}",
            "a\nb",
        ] {
            assert!(BranchName::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn errors_say_what_to_fix() {
        let e = BranchName::new("-x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid branch name \"-x\": it must not start with '-'"
        );
    }

    #[test]
    fn job_ids_are_positive() {
        assert_eq!("42".parse::<JobId>().unwrap().get(), 42);
        assert_eq!("#7".parse::<JobId>().unwrap().get(), 7);
        assert!("0".parse::<JobId>().is_err());
        assert!("x".parse::<JobId>().is_err());
    }
}
