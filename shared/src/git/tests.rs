//! Tests of the mirror against real repositories: a "remote" is a bare
//! repository in a temporary directory, reached by its path, and commits are
//! made on it with git2 directly.

use std::{cell::RefCell, path::Path};

use git2::{Oid, Repository};
use tempfile::TempDir;

use super::*;

mod integrate;

/// A fixed moment for test commits, so their ids never depend on the clock.
const EPOCH: i64 = 1_700_000_000;

/// A bare repository standing in for an app's remote.
struct Remote {
    /// Keeps the directory alive.
    dir: TempDir,
    /// The repository in it.
    repo: Repository,
}

impl Remote {
    /// An empty bare repository in a new temporary directory.
    fn new() -> Remote {
        let dir = TempDir::new().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        Remote { dir, repo }
    }

    /// The URL a mirror uses: the path.
    fn url(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Commits `files` (path, content) on top of `parent` and points
    /// `branch` at the result.
    fn commit(
        &self,
        branch: &str,
        parent: Option<Oid>,
        files: &[(&str, &str)],
        message: &str,
        author: (&str, &str),
        secs: i64,
    ) -> Oid {
        let oid = commit(&self.repo, parent, files, message, author, secs);
        self.repo
            .reference(&format!("refs/heads/{branch}"), oid, true, "test")
            .unwrap();
        oid
    }

    /// The commit `branch` points to on the remote, if it exists.
    fn head(&self, branch: &str) -> Option<Oid> {
        self.repo
            .find_reference(&format!("refs/heads/{branch}"))
            .ok()
            .and_then(|r| r.target())
    }
}

/// Writes a commit with `files` changed from `parent`'s tree, on no ref.
fn commit(
    repo: &Repository,
    parent: Option<Oid>,
    files: &[(&str, &str)],
    message: &str,
    (name, email): (&str, &str),
    secs: i64,
) -> Oid {
    let parent = parent.map(|oid| repo.find_commit(oid).unwrap());
    let baseline = match &parent {
        Some(parent) => parent.tree().unwrap(),
        None => {
            let empty = repo.treebuilder(None).unwrap().write().unwrap();
            repo.find_tree(empty).unwrap()
        }
    };
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, content) in files {
        let blob = repo.blob(content.as_bytes()).unwrap();
        update.upsert(*path, blob, git2::FileMode::Blob);
    }
    let tree = update.create_updated(repo, &baseline).unwrap();
    let tree = repo.find_tree(tree).unwrap();
    let who = git2::Signature::new(name, email, &git2::Time::new(secs, 0)).unwrap();
    let parents: Vec<_> = parent.iter().collect();
    repo.commit(None, &who, &who, message, &tree, &parents)
        .unwrap()
}

/// A branch name known to be valid.
fn branch(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

/// A fresh mirror of `remote` in its own temporary directory, fetched.
fn mirror_of(remote: &Remote) -> (TempDir, Mirror) {
    let dir = TempDir::new().unwrap();
    let mirror = Mirror::open(
        &dir.path().join("mirror.git"),
        &remote.url(),
        Credentials::default(),
    )
    .unwrap();
    mirror.fetch().unwrap();
    (dir, mirror)
}

/// Authors of test commits.
const ALICE: (&str, &str) = ("Alice", "alice@example.com");
/// See [`ALICE`].
const BOB: (&str, &str) = ("Bob", "bob@example.com");

#[test]
fn fetch_lists_every_branch_and_is_incremental() {
    let remote = Remote::new();
    let first = remote.commit("main", None, &[("README", "hi\n")], "Start", ALICE, EPOCH);
    let main = remote.commit(
        "main",
        Some(first),
        &[("src/lib.rs", "fn x() {}\n")],
        "Add lib\n\nWith a body.",
        ALICE,
        EPOCH + 60,
    );
    let login = remote.commit(
        "feature/login",
        Some(first),
        &[("login.txt", "form\n")],
        "Login form",
        BOB,
        EPOCH + 120,
    );
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("apps/shop.git");
    let mirror = Mirror::open(&path, &remote.url(), Credentials::default()).unwrap();

    let fetched = mirror.fetch().unwrap();
    assert!(fetched.received_objects > 0, "{fetched:?}");
    let branches = mirror.branches().unwrap();
    assert_eq!(
        branches,
        vec![
            BranchInfo {
                name: branch("feature/login"),
                commit: login.to_string(),
                author_name: "Bob".into(),
                author_email: "bob@example.com".into(),
                time_ms: (EPOCH + 120) * 1000,
                subject: "Login form".into(),
            },
            BranchInfo {
                name: branch("main"),
                commit: main.to_string(),
                author_name: "Alice".into(),
                author_email: "alice@example.com".into(),
                time_ms: (EPOCH + 60) * 1000,
                subject: "Add lib".into(),
            },
        ]
    );

    let again = mirror.fetch().unwrap();
    assert_eq!(again.received_objects, 0, "{again:?}");
    // With nothing new, a refresh only lists the remote: it fetches
    // nothing, so FETCH_HEAD (which every fetch writes) is not written.
    let fetch_head = path.join("FETCH_HEAD");
    std::fs::remove_file(&fetch_head).unwrap();
    assert_eq!(mirror.refresh().unwrap().received_objects, 0);
    assert!(!fetch_head.exists(), "a refresh with nothing new fetched");

    let next = remote.commit(
        "main",
        Some(main),
        &[("b", "b\n")],
        "More",
        ALICE,
        EPOCH + 180,
    );
    let fetched = mirror.refresh().unwrap();
    // The commit, its tree and the new blob.
    assert!((1..=5).contains(&fetched.received_objects), "{fetched:?}");
    assert_eq!(
        mirror.branch_head(&branch("main")).unwrap(),
        Some(next.to_string())
    );

    // A branch deleted on the remote leaves the mirror too; reopening the
    // mirror finds what was fetched.
    remote
        .repo
        .find_reference("refs/heads/feature/login")
        .unwrap()
        .delete()
        .unwrap();
    mirror.refresh().unwrap();
    let reopened = Mirror::open(&path, &remote.url(), Credentials::default()).unwrap();
    let names: Vec<_> = reopened
        .branches()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, vec![branch("main")]);
    assert_eq!(
        reopened.branch_head(&branch("feature/login")).unwrap(),
        None
    );
}

#[test]
fn resolve_accepts_branches_and_full_or_abbreviated_ids() {
    let remote = Remote::new();
    let main = remote.commit("main", None, &[("a", "a\n")], "A", ALICE, EPOCH);
    let (_dir, mirror) = mirror_of(&remote);
    let full = main.to_string();

    assert_eq!(mirror.resolve("main").unwrap(), Some(full.clone()));
    assert_eq!(mirror.resolve(&full).unwrap(), Some(full.clone()));
    assert_eq!(
        mirror.resolve(&full.to_uppercase()).unwrap(),
        Some(full.clone())
    );
    assert_eq!(mirror.resolve(&full[..7]).unwrap(), Some(full.clone()));
    assert_eq!(mirror.resolve(&full[..6]).unwrap(), None, "too short");
    assert_eq!(mirror.resolve("nope").unwrap(), None);
    assert_eq!(mirror.resolve("0000000000").unwrap(), None);
    assert_eq!(mirror.resolve("not a rev").unwrap(), None);
    let tree = mirror
        .repo()
        .find_commit(main)
        .unwrap()
        .tree_id()
        .to_string();
    assert_eq!(
        mirror.resolve(&tree).unwrap(),
        None,
        "a tree is not a commit"
    );

    assert!(mirror.has_commit(&full));
    assert!(!mirror.has_commit(&full[..7]));
    assert!(!mirror.has_commit(&"0".repeat(40)));
    assert!(!mirror.has_commit("main"));
}

#[test]
fn create_branch_pushes_to_the_remote_and_never_moves_an_existing_one() {
    let remote = Remote::new();
    let main = remote.commit("main", None, &[("a", "a\n")], "A", ALICE, EPOCH);
    let (_dir, mirror) = mirror_of(&remote);
    // A commit only the mirror has, so the push must send it.
    let local = commit(
        mirror.repo(),
        Some(main),
        &[("b", "b\n")],
        "B",
        BOB,
        EPOCH + 1,
    );

    mirror
        .create_branch(&branch("release/1"), &local.to_string())
        .unwrap();
    assert_eq!(remote.head("release/1"), Some(local));
    assert!(remote.repo.find_commit(local).is_ok());
    assert_eq!(
        mirror.branch_head(&branch("release/1")).unwrap(),
        Some(local.to_string())
    );

    // Known to the mirror: refused before contacting the remote.
    let err = mirror
        .create_branch(&branch("main"), &local.to_string())
        .unwrap_err();
    assert!(
        matches!(&err, GitError::BranchExists(b) if b.as_str() == "main"),
        "{err}"
    );
    assert_eq!(remote.head("main"), Some(main));

    // Created on the remote after the last fetch: refused while negotiating.
    remote.commit("hotfix", Some(main), &[("c", "c\n")], "C", BOB, EPOCH + 2);
    let before = remote.head("hotfix");
    let err = mirror
        .create_branch(&branch("hotfix"), &local.to_string())
        .unwrap_err();
    assert!(
        matches!(&err, GitError::BranchExists(b) if b.as_str() == "hotfix"),
        "{err}"
    );
    assert_eq!(remote.head("hotfix"), before);
    assert_eq!(mirror.branch_head(&branch("hotfix")).unwrap(), None);

    let err = mirror
        .create_branch(&branch("x"), &"1".repeat(40))
        .unwrap_err();
    assert!(matches!(err, GitError::MissingCommit(_)), "{err}");
    let err = mirror.create_branch(&branch("x"), "main").unwrap_err();
    assert!(matches!(err, GitError::InvalidCommitId(_)), "{err}");
}

#[test]
fn checkout_replaces_the_workspace_with_the_commit() {
    let remote = Remote::new();
    let main = remote.commit(
        "main",
        None,
        &[("README", "hi\n"), ("src/main.rs", "fn main() {}\n")],
        "First\n\nbody",
        ALICE,
        EPOCH,
    );
    let (dir, mirror) = mirror_of(&remote);
    let workspace = dir.path().join("work/dev");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("stale.txt"), "old build").unwrap();

    let out = mirror.checkout(&main.to_string(), &workspace).unwrap();
    assert_eq!(out.subject, "First");
    assert_eq!(out.author, "Alice");
    assert_eq!(out.dir, workspace);
    assert!(!workspace.join("stale.txt").exists());
    let read = |p: &str| std::fs::read_to_string(workspace.join(p)).unwrap();
    assert_eq!(read("src/main.rs"), "fn main() {}\n");
    assert_eq!(read("README"), "hi\n");

    let err = mirror.checkout(&"2".repeat(40), &workspace).unwrap_err();
    assert!(matches!(err, GitError::MissingCommit(_)), "{err}");
}

#[test]
fn credentials_never_show_in_debug_or_errors() {
    let credentials = Credentials {
        username: Some("bot".into()),
        token: Some("tok-3141".into()),
        ssh_key: None,
    };
    let shown = format!("{credentials:?}");
    assert!(!shown.contains("tok-3141"), "{shown}");
    assert!(shown.contains("bot"), "{shown}");

    let dir = TempDir::new().unwrap();
    let url = "https://user:secret@127.0.0.1:1/x.git";
    let mirror = Mirror::open(&dir.path().join("m.git"), url, credentials).unwrap();
    assert!(!format!("{mirror:?}").contains("secret"));
    let err = mirror.fetch().unwrap_err();
    eprintln!("unreachable remote: {err}");
    assert!(matches!(err, GitError::Remote { .. }), "{err:?}");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(
            !text.contains("secret") && !text.contains("tok-3141"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1"), "{text}");
    }
}

#[test]
fn redaction_removes_credentials_from_urls_in_any_text() {
    assert_eq!(
        redact_url("https://bot:s3cret@git.example.com/shop.git"),
        "https://***@git.example.com/shop.git"
    );
    assert_eq!(redact_url("file:///srv/shop.git"), "file:///srv/shop.git");
    assert_eq!(redact_url("git@host:shop.git"), "git@host:shop.git");
    assert_eq!(
        redact_url("failed 'https://a:p@w@h/x' then ssh://git@h2/y."),
        "failed 'https://***@h/x' then ssh://***@h2/y."
    );
    let credentials = Credentials {
        token: Some("abc123".into()),
        ..Credentials::default()
    };
    assert_eq!(
        credentials.redact("token abc123 refused"),
        "token *** refused"
    );
}

#[test]
fn each_kind_of_credential_is_offered_once() {
    use git2::CredentialType as Kind;
    let credentials = Credentials {
        username: None,
        token: Some("t".into()),
        ssh_key: Some(Path::new("/nonexistent/id_ed25519").to_owned()),
    };
    let attempts = RefCell::new(AuthAttempts::default());
    let cred = credentials
        .answer(&attempts, None, Kind::USER_PASS_PLAINTEXT)
        .unwrap();
    assert_eq!(cred.credtype(), Kind::USER_PASS_PLAINTEXT.bits());
    assert!(attempts.borrow().failure().is_none());
    let err = credentials
        .answer(&attempts, None, Kind::USER_PASS_PLAINTEXT)
        .err()
        .expect("a second request is refused");
    assert!(err.message().contains("refused"), "{err}");
    assert!(attempts.borrow().failure().is_some());

    let attempts = RefCell::new(AuthAttempts::default());
    let ssh = Kind::SSH_KEY | Kind::USERNAME;
    credentials.answer(&attempts, Some("deploy"), ssh).unwrap();
    credentials.answer(&attempts, Some("deploy"), ssh).unwrap();
    assert!(credentials.answer(&attempts, Some("deploy"), ssh).is_err());

    let none = Credentials::default();
    let attempts = RefCell::new(AuthAttempts::default());
    let err = none
        .answer(&attempts, None, Kind::USER_PASS_PLAINTEXT)
        .err()
        .expect("nothing to offer");
    assert!(err.message().contains("none of that kind"), "{err}");
}

#[test]
fn redaction_hides_credentials_holding_a_quote() {
    // Found by shared/tests/fuzz/: `'` is allowed unencoded in a URL's
    // user and password (RFC 3986 sub-delims), and ending the URL there
    // showed the rest of the password.
    assert_eq!(
        redact_url("https://bot:it's-s3cret@git.example.com/shop.git"),
        "https://***@git.example.com/shop.git"
    );
    assert_eq!(
        redact_url("fetch 'https://o'brien:pw@h/x' failed"),
        "fetch 'https://***@h/x' failed"
    );
    // The same fuzz property for the token: no part of an overlapping match.
    let credentials = Credentials {
        token: Some("abab".into()),
        ..Credentials::default()
    };
    assert_eq!(credentials.redact("ababab"), "***");
}

#[test]
fn a_url_given_to_others_keeps_its_user_and_loses_its_password() {
    assert_eq!(
        super::without_password("https://bot:s3cret@git.example.com/shop.git"),
        "https://bot@git.example.com/shop.git"
    );
    assert_eq!(
        super::without_password("https://bot:it's:@x@git.example.com/a@b.git"),
        "https://bot@git.example.com/a@b.git"
    );
    for plain in [
        "https://git.example.com/shop.git",
        "ssh://git@host/shop.git",
        "file:///srv/shop.git",
        "/srv/shop.git",
    ] {
        assert_eq!(super::without_password(plain), plain);
    }
}
