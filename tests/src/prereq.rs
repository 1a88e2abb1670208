//! What some tests need beyond Rust, Docker and a JDK, found where
//! `scripts/test` provides it, with a message naming that entry point when
//! it is missing.

use std::path::PathBuf;

use anyhow::Context;

/// The Python interpreter with the gRPC packages of the Python client test:
/// `GANTRY_TEST_PYTHON` (set by `scripts/test`), else the virtual environment
/// `scripts/test` makes under target/, else `python3`. Fails, naming the
/// entry point, when that Python lacks the packages.
pub fn grpc_python() -> anyhow::Result<PathBuf> {
    let venv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/test-venv/bin/python"
    ));
    let python = match std::env::var_os("GANTRY_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None if venv.exists() => venv,
        None => PathBuf::from("python3"),
    };
    let check = std::process::Command::new(&python)
        .args([
            "-c",
            "import grpc, grpc_tools, grpc_health, grpc_reflection",
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(
        check.status.success(),
        "{} lacks the Python gRPC packages this test needs; run the suite with `scripts/test`, \
         which installs them in a virtual environment under target/ \
         (or: pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection)",
        python.display()
    );
    Ok(python)
}
