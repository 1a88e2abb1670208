//! The `gantry-coordinator` binary run as an operator runs it, for tests
//! that must kill it, measure it or flood it from outside.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gantry-coordinator");

/// How long a starting coordinator may take to say it serves.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback port (bound, then let go for the coordinator to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running coordinator process, killed when dropped.
pub struct Running {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Running {
    /// Starts the binary on the config at `path` (listening on `port`) and
    /// waits until it logs that it serves. Its output is drained from
    /// then on, so that logging never blocks it.
    pub fn start(path: &Path, port: u16) -> Self {
        Self::start_with(Command::new(BIN).arg("--config").arg(path), port)
    }

    /// As [`Running::start`], with a prepared command.
    pub fn start_with(command: &mut Command, port: u16) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the coordinator starts");
        let stdout = child.stdout.take().unwrap();
        let (serving, serving_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.contains("coordinator serving") {
                    let _ = serving.send(());
                }
            }
        });
        if serving_rx.recv_timeout(START_TIMEOUT).is_err() {
            let _ = child.kill();
            panic!("the coordinator did not start within {START_TIMEOUT:?}");
        }
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it at once (SIGKILL: a crash, nothing flushed on the way out)
    /// and waits for it to be gone.
    pub fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Its resident memory, in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` as `coordinator.toml` in `dir`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, text).unwrap();
    path
}
