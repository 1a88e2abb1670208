//! What an agent that died (SIGKILL, a crash, a reboot) leaves on its host,
//! found and removed when it starts again, before it takes work: the
//! process groups of builds it was running, and the workspaces those builds
//! were writing, and the images of jobs it did not finish. Their containers
//! are removed by [`crate::docker::remove_unreleased`].

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::docker;

/// The variable every build runs with, naming the agent installation that
/// started it; it is how an orphaned build is recognised.
pub const BUILD_MARK: &str = "GANTRY_AGENT_ID";

/// Kills the process group of every build this installation started that
/// is still running (its parent died, so nothing else will). Returns how
/// many groups were killed.
pub fn kill_orphaned_builds(agent_id: &str) -> usize {
    let mark = format!("{BUILD_MARK}={agent_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut groups = std::collections::BTreeSet::new();
    // SAFETY: getpgrp only reads this process's group.
    let own_group = unsafe { libc::getpgrp() };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Unreadable (another user's, or gone): not ours to stop.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|var| var == mark.as_bytes()) {
            // SAFETY: getpgid only reads the process table.
            let group = unsafe { libc::getpgid(pid) };
            // Never this agent's own group (an agent started from a build
            // would carry the mark too).
            if group > 1 && group != own_group {
                groups.insert(group);
            }
        }
    }
    for group in &groups {
        // SAFETY: signals a process group found above, which this agent's
        // build started.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    groups.len()
}

/// The marker beside a workspace that says a job is writing it; it is
/// removed when the job ends, and a marker found at start-up means the
/// workspace holds a half-built tree.
pub fn building_marker(workspace: &Path) -> PathBuf {
    workspace.with_extension("building")
}

/// Removes the workspaces of builds an earlier run of the agent did not
/// finish, under `work_dir/workspaces/<env>/`. Returns how many.
pub fn remove_unfinished_workspaces(work_dir: &Path) -> usize {
    let mut removed = 0;
    let Ok(envs) = std::fs::read_dir(work_dir.join("workspaces")) else {
        return 0;
    };
    for env in envs.flatten() {
        let Ok(entries) = std::fs::read_dir(env.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let marker = entry.path();
            if marker.extension().is_none_or(|e| e != "building") {
                continue;
            }
            let workspace = marker.with_extension("");
            if let Err(e) = std::fs::remove_dir_all(&workspace) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(workspace = %workspace.display(), error = %e, "cannot remove an unfinished workspace");
                    continue;
                }
            }
            let _ = std::fs::remove_file(&marker);
            removed += 1;
        }
    }
    removed
}

/// Removes the images of `jobs` (jobs an earlier run of this agent did not
/// finish) that no container uses: built before the job's container was
/// started, they would otherwise stay. Called after [`docker::remove_unreleased`],
/// so a container still there is a released one, and its image is kept.
pub async fn remove_unfinished_images(
    docker: &bollard::Docker,
    agent_id: &str,
    jobs: &[String],
) -> Result<usize, docker::DockerError> {
    let mut removed = 0;
    for job in jobs {
        let scope = [
            (docker::label::AGENT_ID, agent_id),
            (docker::label::JOB, job.as_str()),
        ];
        if !docker::containers(docker, &scope).await?.is_empty() {
            continue;
        }
        for (id, _) in docker::images(docker, &scope).await? {
            docker::remove_image(docker, &id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_built_workspaces_are_removed_and_finished_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let envs = dir.path().join("workspaces").join("dev");
        for app in ["shop", "cart"] {
            std::fs::create_dir_all(envs.join(app).join("src")).unwrap();
        }
        std::fs::write(building_marker(&envs.join("shop")), "7").unwrap();
        assert_eq!(remove_unfinished_workspaces(dir.path()), 1);
        assert!(!envs.join("shop").exists());
        assert!(!building_marker(&envs.join("shop")).exists());
        assert!(envs.join("cart").join("src").exists());
    }

    /// Waits until `pid`'s environment, as /proc shows it, carries `mark`:
    /// a process that is still in `execve` shows an empty one for a moment.
    fn wait_for_environ(pid: u32, mark: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|var| var == mark.as_bytes()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} never showed {mark}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A build started for the test, killed when the test ends whatever it
    /// asserted, so a failure cannot leave a `sleep` behind or hang.
    struct Build(std::process::Child);

    impl Drop for Build {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn only_builds_carrying_this_agents_mark_are_killed() {
        use std::os::unix::process::CommandExt;
        let spawn = |id: &str| {
            let child = std::process::Command::new("sleep")
                .arg("600")
                .env(BUILD_MARK, id)
                .process_group(0)
                .spawn()
                .unwrap();
            wait_for_environ(child.id(), &format!("{BUILD_MARK}={id}"));
            Build(child)
        };
        let mut ours = spawn("agent-a");
        let mut theirs = spawn("agent-b");
        assert_eq!(kill_orphaned_builds("agent-a"), 1);
        assert!(!ours.0.wait().unwrap().success());
        assert!(
            theirs.0.try_wait().unwrap().is_none(),
            "another agent's build runs on"
        );
    }
}
