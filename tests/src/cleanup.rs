//! What a test leaves behind, removed: child processes, app proxies, and
//! Docker objects by label.

use gantry_agent::docker;

/// A child process killed (SIGKILL) when dropped, so a failing test leaves
/// no process behind.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// SIGKILLs it now and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops every app proxy the agents under `agents` started (they run
/// detached from the agents, by design, so the test must end them).
pub(crate) fn stop_proxies(agents: &std::path::Path) {
    use std::io::Write;
    let Ok(dirs) = std::fs::read_dir(agents) else {
        return;
    };
    for agent in dirs.flatten() {
        let Ok(files) = std::fs::read_dir(agent.path().join("proxies")) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "sock") {
                if let Ok(mut socket) = std::os::unix::net::UnixStream::connect(&path) {
                    let _ = socket.write_all(b"stop\n");
                }
            }
        }
    }
}

/// Removes every container and image labelled with `app`.
pub async fn remove_app_objects(app: &str) -> anyhow::Result<()> {
    let engine = docker::connect().await?;
    Ok(docker::remove_app_objects(&engine, app).await?)
}
