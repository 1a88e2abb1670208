//! `gantry-coordinator migrate` as an operator runs it, where it refuses:
//! a config whose store is sled, a directory holding no sled database, and
//! one a running coordinator holds. Each refusal changes nothing. (The copy
//! itself is tested against a real Postgres in `store/copy/tests.rs`.)

use std::{path::Path, process::Command};

use gantry_coordinator::store::{sled::SledStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_gantry-coordinator");

/// A Postgres store nobody listens for: each refusal below comes before
/// the destination is opened.
const NOWHERE: &str = "store = \"postgres://gantry@127.0.0.1:1/gantry\"\n";

/// Runs `migrate` with the config `text` (in `dir`) and `args`; returns
/// whether it succeeded, and its stdout and stderr.
fn migrate(dir: &Path, text: &str, args: &[&str]) -> (bool, String, String) {
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n{text}\n[[environments]]\nname = \"dev\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_whose_store_is_sled_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = migrate(dir.path(), "", &[]);
    assert!(!ok);
    assert!(
        err.contains("coordinator.toml is sled, so there is nowhere to migrate to: set store = \"postgres://USER@HOST:PORT/DATABASE\""),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn a_directory_holding_no_sled_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = migrate(dir.path(), NOWHERE, &[]);
    assert!(!ok);
    let data = dir.path().join("data");
    assert!(
        err.contains(&format!(
            "{} holds no sled database (no file {}/conf): give the coordinator's data_dir with --from-sled DIR",
            data.display(),
            data.display()
        )),
        "{err}"
    );
    assert!(!data.exists(), "nothing was created");
    let elsewhere = dir.path().join("elsewhere");
    let (ok, _, err) = migrate(
        dir.path(),
        NOWHERE,
        &["--from-sled", elsewhere.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        err.contains(&format!("{} holds no sled database", elsewhere.display())),
        "{err}"
    );
}

#[tokio::test]
async fn a_sled_database_a_coordinator_holds_is_refused_until_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let held = SledStore::open(&data).unwrap();
    let (ok, _, err) = migrate(dir.path(), NOWHERE, &[]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the sled database in {} is held by a running coordinator: stop it first",
            data.display()
        )),
        "{err}"
    );
    held.close().await.unwrap();
    drop(held);
    // Once it has stopped, migrate goes on to the destination (here one
    // that does not answer), so the refusal above was the lock's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (ok, _, err) = migrate(dir.path(), NOWHERE, &[]);
        assert!(!ok);
        if err.contains("cannot open the Postgres database postgres://gantry@127.0.0.1:1/gantry") {
            break;
        }
        assert!(err.contains("held by a running coordinator"), "{err}");
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never let go: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
