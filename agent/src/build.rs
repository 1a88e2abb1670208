//! Running the app's build command: a child process in its own process group,
//! with a clean, explicit environment and a timeout. Its stdout and stderr
//! are streamed line by line as they are produced.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use gantry_shared::limits::MAX_LOG_LINE_BYTES;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader},
    process::Command,
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    build_user::BuildUser,
    report::{Reporter, Stream, Tail},
};

/// Between SIGTERM and SIGKILL when a build is stopped: long enough for a
/// build tool to remove its lock files, short enough for cancel to feel quick.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// Lines in flight between the pipe readers and the reporter.
const LINE_BUFFER: usize = 256;

/// Why a build did not produce an artifact.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The command could not be started.
    #[error("cannot start the build command: {0}")]
    Spawn(std::io::Error),
    /// It exited with a failure.
    #[error("build failed with exit code {code}; last lines:\n{tail}")]
    Exit {
        /// Its exit code (or -signal).
        code: i32,
        /// Its last lines.
        tail: String,
    },
    /// It ran past its timeout and was stopped.
    #[error(
        "build timed out after {0}s and was stopped; raise build_timeout_secs if it needs longer"
    )]
    Timeout(u64),
    /// The job was cancelled.
    #[error("build cancelled")]
    Cancelled,
    /// The artifact pattern did not match exactly one file.
    #[error("artifact {pattern:?} matched {found}; the build must produce exactly one file there")]
    Artifact {
        /// The pattern.
        pattern: String,
        /// What matched, in words.
        found: String,
    },
}

/// Runs `command` with `sh -c` in `dir` with exactly `env`, as `user`
/// (its uid and group, no supplementary groups) when given, streaming its
/// output.
pub async fn run(
    command: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    user: Option<&BuildUser>,
    limits: (Duration, &CancellationToken),
    report: &Reporter,
) -> Result<(), BuildError> {
    let (timeout, cancel) = limits;
    let mut build = Command::new("sh");
    build
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = user {
        // Dropping from root also drops root's supplementary groups.
        build.uid(user.uid).gid(user.gid);
    }
    let mut child = build.spawn().map_err(BuildError::Spawn)?;
    let pgid = child.id().expect("a just-spawned child has a pid") as i32;
    let (tx, mut lines) = mpsc::channel(LINE_BUFFER);
    let readers = [
        tokio::spawn(read_lines(
            BufReader::new(child.stdout.take().expect("piped")),
            Stream::Stdout,
            tx.clone(),
        )),
        tokio::spawn(read_lines(
            BufReader::new(child.stderr.take().expect("piped")),
            Stream::Stderr,
            tx,
        )),
    ];

    let mut tail = Tail::default();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut status = None;
    let mut stopped = None;
    let mut lines_open = true;
    // Forward lines until both pipes close and the child is reaped.
    while lines_open || status.is_none() {
        tokio::select! {
            line = lines.recv(), if lines_open => match line {
                Some((stream, text)) => {
                    tail.push(&text);
                    report.line(stream, text).await;
                }
                None => lines_open = false,
            },
            done = child.wait(), if status.is_none() => {
                status = Some(done);
                // Leftover processes of the group (daemons) must not hold the pipes open.
                signal_group(pgid, libc::SIGKILL);
            }
            _ = &mut deadline, if stopped.is_none() => {
                stopped = Some(BuildError::Timeout(timeout.as_secs()));
                stop_group(pgid).await;
            }
            _ = cancel.cancelled(), if stopped.is_none() => {
                stopped = Some(BuildError::Cancelled);
                stop_group(pgid).await;
            }
        }
    }
    for reader in readers {
        let _ = reader.await;
    }
    if let Some(err) = stopped {
        return Err(err);
    }
    let status = status
        .expect("loop ends after wait")
        .map_err(BuildError::Spawn)?;
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| -status.signal().unwrap_or(0));
    Err(BuildError::Exit {
        code,
        tail: tail.joined(),
    })
}

/// SIGTERM to the whole group, then SIGKILL after [`KILL_GRACE`] if any of it lives.
async fn stop_group(pgid: i32) {
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + KILL_GRACE;
    while tokio::time::Instant::now() < deadline && signal_group(pgid, 0) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(pgid, libc::SIGKILL);
}

/// Sends `signal` to process group `pgid`; true if the group exists.
fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: killpg only sends a signal; a stale pgid makes it fail with ESRCH.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Reads `reader` line by line, cutting lines longer than the limit with a
/// marker instead of buffering without bound.
async fn read_lines(
    mut reader: impl AsyncBufRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<(Stream, String)>,
) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LOG_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') && buf.len() > MAX_LOG_LINE_BYTES {
            // Skip the rest of this over-long line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader)
                    .take(64 * 1024)
                    .read_until(b'\n', &mut rest)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let text = gantry_shared::limits::cap_log_line(String::from_utf8_lossy(&buf).into_owned());
        if tx.send((stream, text)).await.is_err() {
            return;
        }
    }
}

/// The one file `pattern` (a path or glob relative to `dir`) matches.
pub fn find_artifact(dir: &Path, pattern: &str) -> Result<PathBuf, BuildError> {
    let err = |found: String| BuildError::Artifact {
        pattern: pattern.to_owned(),
        found,
    };
    let full = dir.join(pattern);
    let matches: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
        .map_err(|e| err(format!("nothing: the pattern is invalid ({e})")))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(err("no file".into())),
        many => Err(err(format!(
            "{} files: {}",
            many.len(),
            many.iter()
                .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
