//! `install` names the user builds run as: `gantry-build` unless told
//! otherwise, written into the config `run` reads.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gantry-agent");

#[test]
fn install_names_gantry_build_as_the_build_user() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("agent.toml");
    let out = Command::new(BIN)
        .args([
            "install",
            "--no-systemctl",
            "--env",
            "dev",
            "--name",
            "dev-1",
        ])
        .arg("--config")
        .arg(&etc)
        .arg("--unit-dir")
        .arg(dir.path().join("units"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(&etc).unwrap();
    assert!(config.contains("build_user = \"gantry-build\""), "{config}");
}
