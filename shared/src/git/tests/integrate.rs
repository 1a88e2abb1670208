//! Tests of branch-set integration on real repositories: merged trees,
//! identical commit ids from separate clones, and conflicts that name both
//! sides.

use std::time::Instant;

use super::*;

/// The time every integration in these tests is dated with.
const SET_TIME: i64 = EPOCH + 3600;

/// The five-line file the conflict tests edit.
const SHARED: &str = "line 1\nline 2\nline 3\nline 4\nline 5\n";

/// A remote whose `main` holds a README and `shared.txt`; returns its head.
fn remote_with_main() -> (Remote, Oid) {
    let remote = Remote::new();
    let base = remote.commit(
        "main",
        None,
        &[("README", "shop\n"), ("shared.txt", SHARED)],
        "Start",
        ALICE,
        EPOCH,
    );
    (remote, base)
}

/// `shared.txt` with line 3 replaced by `line`.
fn shared_with(line: &str) -> String {
    SHARED.replace("line 3", line)
}

/// Names and commits as [`integrate`] takes them.
fn set(branches: &[(&str, Oid)]) -> Vec<(BranchName, String)> {
    branches
        .iter()
        .map(|(name, oid)| (branch(name), oid.to_string()))
        .collect()
}

/// The paths of a commit's tree, sorted.
fn paths(repo: &Repository, commit: &str) -> Vec<String> {
    let commit = repo.find_commit(Oid::from_str(commit).unwrap()).unwrap();
    let mut found = Vec::new();
    commit
        .tree()
        .unwrap()
        .walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                found.push(format!("{dir}{}", entry.name().unwrap()));
            }
            git2::TreeWalkResult::Ok
        })
        .unwrap();
    found.sort();
    found
}

#[test]
fn a_set_merges_into_one_tree_and_every_clone_computes_the_same_commit() {
    let (remote, base) = remote_with_main();
    let mut heads = Vec::new();
    for (i, name) in ["one", "two", "feature/three"].into_iter().enumerate() {
        let file = format!("{}.txt", name.replace('/', "-"));
        let oid = remote.commit(
            name,
            Some(base),
            &[(&file, name)],
            name,
            BOB,
            EPOCH + i as i64,
        );
        heads.push((name, oid));
    }
    let branches = set(&heads);
    let main = branch("main");
    let (_a, coordinator) = mirror_of(&remote);
    let (_b, agent) = mirror_of(&remote);

    let ours = integrate(
        coordinator.repo(),
        &main,
        &base.to_string(),
        &branches,
        SET_TIME,
    )
    .unwrap();
    assert_eq!(ours.merged, branches);
    assert_eq!(
        paths(coordinator.repo(), &ours.commit),
        [
            "README",
            "feature-three.txt",
            "one.txt",
            "shared.txt",
            "two.txt"
        ]
    );
    let result = coordinator
        .repo()
        .find_commit(Oid::from_str(&ours.commit).unwrap())
        .unwrap();
    assert_eq!(result.tree_id().to_string(), ours.tree);
    let short = &heads[2].1.to_string()[..7];
    assert_eq!(
        result.message().ok(),
        Some(format!("Merge feature/three ({short}) for a Gantry branch set\n").as_str())
    );
    assert_eq!(result.author().name().ok(), Some("Gantry"));
    assert_eq!(result.committer().email().ok(), Some("gantry@localhost"));
    assert_eq!(result.parent_ids().nth(1), Some(heads[2].1));
    assert!(
        coordinator.resolve("main").unwrap() == Some(base.to_string()),
        "no ref moved"
    );

    let theirs = integrate(agent.repo(), &main, &base.to_string(), &branches, SET_TIME).unwrap();
    assert_eq!(theirs, ours);
    let dir = TempDir::new().unwrap();
    agent.checkout(&theirs.commit, dir.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("two.txt")).unwrap(),
        "two"
    );

    let later = integrate(
        agent.repo(),
        &main,
        &base.to_string(),
        &branches,
        SET_TIME + 1,
    )
    .unwrap();
    assert_ne!(later.commit, ours.commit, "the time is part of the commit");
    assert_eq!(later.tree, ours.tree);
}

#[test]
fn checking_a_set_gives_the_same_result_and_writes_nothing() {
    let (remote, base) = remote_with_main();
    let one = remote.commit("one", Some(base), &[("one.txt", "1")], "one", BOB, EPOCH);
    let two = remote.commit("two", Some(base), &[("two.txt", "2")], "two", BOB, EPOCH);
    let branches = set(&[("one", one), ("two", two)]);
    let main = branch("main");
    let (_a, checked) = mirror_of(&remote);
    let (_b, written) = mirror_of(&remote);

    let check = check_integration(
        checked.repo(),
        &main,
        &base.to_string(),
        &branches,
        SET_TIME,
    )
    .unwrap();
    assert!(!checked.has_commit(&check.commit), "nothing was written");
    assert!(checked
        .repo()
        .find_tree(Oid::from_str(&check.tree).unwrap())
        .is_err());

    let made = integrate(
        written.repo(),
        &main,
        &base.to_string(),
        &branches,
        SET_TIME,
    )
    .unwrap();
    assert_eq!(made, check);
    assert!(written.has_commit(&made.commit));
}

#[test]
fn a_conflict_in_a_set_of_twenty_names_both_branches_and_the_file() {
    let (remote, base) = remote_with_main();
    let mut heads = Vec::new();
    for i in 1..=20 {
        let name = format!("b-{i:02}");
        let file = format!("{name}.txt");
        let shared = shared_with(&format!("changed by {name}"));
        let mut files = vec![(file.as_str(), name.as_str())];
        if i == 7 || i == 15 {
            files.push(("shared.txt", &shared));
        }
        let oid = remote.commit(&name, Some(base), &files, &name, BOB, EPOCH + i);
        heads.push((name, oid));
    }
    let branches: Vec<_> = heads
        .iter()
        .map(|(name, oid)| (branch(name), oid.to_string()))
        .collect();
    let (_dir, mirror) = mirror_of(&remote);

    let started = Instant::now();
    let err = integrate(
        mirror.repo(),
        &branch("main"),
        &base.to_string(),
        &branches,
        SET_TIME,
    )
    .unwrap_err();
    eprintln!(
        "integrating 20 branches up to the conflict took {:?}",
        started.elapsed()
    );
    match &err {
        IntegrateError::Conflict {
            branch,
            with,
            files,
        } => {
            assert_eq!(branch.as_str(), "b-15");
            assert_eq!(with.as_str(), "b-07");
            assert_eq!(files, &["shared.txt"]);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "branch \"b-15\" conflicts with \"b-07\" in shared.txt; merge one into the other \
         and resolve the conflict, or leave one out of the set"
    );

    let started = Instant::now();
    let checked = check_integration(
        mirror.repo(),
        &branch("main"),
        &base.to_string(),
        &branches,
        SET_TIME,
    );
    eprintln!("checking the same set took {:?}", started.elapsed());
    assert!(matches!(checked, Err(IntegrateError::Conflict { .. })));

    let without_15: Vec<_> = branches
        .iter()
        .filter(|(b, _)| b.as_str() != "b-15")
        .cloned()
        .collect();
    let started = Instant::now();
    let clean = check_integration(
        mirror.repo(),
        &branch("main"),
        &base.to_string(),
        &without_15,
        SET_TIME,
    )
    .unwrap();
    eprintln!("checking 19 clean branches took {:?}", started.elapsed());
    assert_eq!(clean.merged.len(), 19);
}

#[test]
fn a_branch_that_conflicts_with_the_default_branch_names_it() {
    let (remote, fork) = remote_with_main();
    let docs = remote.commit(
        "docs",
        Some(fork),
        &[("docs.md", "d")],
        "Docs",
        BOB,
        EPOCH + 1,
    );
    let feature = remote.commit(
        "feature",
        Some(fork),
        &[("shared.txt", &shared_with("feature's line"))],
        "Feature",
        BOB,
        EPOCH + 2,
    );
    let head = remote.commit(
        "main",
        Some(fork),
        &[("shared.txt", &shared_with("main's line"))],
        "Main moves on",
        ALICE,
        EPOCH + 3,
    );
    let (_dir, mirror) = mirror_of(&remote);
    // A host's git config must not change the result: with this, git itself
    // would merge both lines silently.
    let mut config = mirror.repo().config().unwrap();
    config.set_str("merge.default", "union").unwrap();
    let branches = set(&[("docs", docs), ("feature", feature)]);

    let err = integrate(
        mirror.repo(),
        &branch("main"),
        &head.to_string(),
        &branches,
        SET_TIME,
    )
    .unwrap_err();
    match err {
        IntegrateError::Conflict {
            branch,
            with,
            files,
        } => {
            assert_eq!(branch.as_str(), "feature");
            assert_eq!(with.as_str(), "main");
            assert_eq!(files, ["shared.txt"]);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn branches_already_contained_are_skipped() {
    let (remote, old) = remote_with_main();
    remote.commit("old", Some(old), &[], "unused", BOB, EPOCH);
    remote
        .repo
        .reference("refs/heads/old", old, true, "test")
        .unwrap();
    let head = remote.commit(
        "main",
        Some(old),
        &[("new.txt", "n")],
        "New",
        ALICE,
        EPOCH + 1,
    );
    let fresh = remote.commit(
        "fresh",
        Some(head),
        &[("f.txt", "f")],
        "Fresh",
        BOB,
        EPOCH + 2,
    );
    let (_dir, mirror) = mirror_of(&remote);
    let main = branch("main");

    let nothing_new = set(&[("old", old), ("main", head)]);
    let result = integrate(
        mirror.repo(),
        &main,
        &head.to_string(),
        &nothing_new,
        SET_TIME,
    )
    .unwrap();
    assert_eq!(result.commit, head.to_string());
    assert_eq!(
        result.tree,
        mirror
            .repo()
            .find_commit(head)
            .unwrap()
            .tree_id()
            .to_string()
    );
    assert_eq!(result.merged, nothing_new);

    let twice = set(&[("old", old), ("fresh", fresh), ("fresh-again", fresh)]);
    let result = integrate(mirror.repo(), &main, &head.to_string(), &twice, SET_TIME).unwrap();
    let merge = mirror
        .repo()
        .find_commit(Oid::from_str(&result.commit).unwrap())
        .unwrap();
    assert_eq!(
        merge.parent_ids().collect::<Vec<_>>(),
        [head, fresh],
        "one merge only"
    );
    assert_eq!(result.merged.len(), 3);
}

#[test]
fn unknown_commits_name_their_branch() {
    let (remote, base) = remote_with_main();
    let (_dir, mirror) = mirror_of(&remote);
    let main = branch("main");
    let abbreviated = base.to_string()[..10].to_owned();
    for (name, commit) in [
        ("ghost", "3".repeat(40)),
        ("short", abbreviated),
        ("text", "main".into()),
    ] {
        let branches = vec![(branch(name), commit.clone())];
        let err =
            integrate(mirror.repo(), &main, &base.to_string(), &branches, SET_TIME).unwrap_err();
        assert!(
            matches!(&err, IntegrateError::UnknownCommit { branch, commit: c } if branch.as_str() == name && *c == commit),
            "{err:?}"
        );
    }
    let err = integrate(mirror.repo(), &main, &"4".repeat(40), &[], SET_TIME).unwrap_err();
    assert!(
        matches!(&err, IntegrateError::UnknownCommit { branch, .. } if branch.as_str() == "main"),
        "{err:?}"
    );
}
