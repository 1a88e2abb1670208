//! Names in requests: app, environment and agent identifiers, branch names
//! (checked against libgit2) and job ids.

use std::{fmt::Display, str::FromStr};

use gantry_shared::{AgentName, AppName, BranchName, EnvName, JobId, NameError};
use proptest::prelude::*;

use super::{fuzz_config, lowercase_name, name_text};

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

proptest! {
    #![proptest_config(fuzz_config())]

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
}
