//! How the CLI shows things: aligned tables for people, JSON for scripts.

use gantry_shared::{proto, JobState, Stage};
use serde_json::{json, Value};

/// Writes a line to standard output. A closed pipe (`gantry logs JOB | head`)
/// comes back as an `io::Error` of kind `BrokenPipe` for the caller to
/// return with `?`; `main` then ends quietly with status 0, as git does.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Writes a line to standard error, for progress and warnings; a closed
/// stderr is no reason to stop (the next line to stdout says so if it is).
#[macro_export]
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Whether `error` is a write to a closed standard output.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `text` with every control character but tab shown as `\xNN` (or
/// `\u{NN}` past ASCII), so a build's output cannot move the cursor, retitle
/// the terminal or hide lines from the person reading it.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into();
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => shown.push(c),
            c if c.is_control() && (c as u32) < 0x80 => {
                shown.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => shown.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => shown.push(c),
        }
    }
    shown.into()
}

/// The output format chosen with `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document (or one object per line for logs).
    Json,
}

/// Prints rows under `headers`, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("{}", padded.join("  ").trim_end())
    };
    line(headers.iter().map(|h| h.to_string()).collect())?;
    for row in rows {
        line(row.clone())?;
    }
    Ok(())
}

/// A job's state as a word.
pub fn state(job: &proto::Job) -> &'static str {
    JobState::from_proto(job.state).map_or("unknown", JobState::as_str)
}

/// A job's stage as a word ("" when none).
pub fn stage(value: i32) -> &'static str {
    Stage::from_proto(value).map_or("", Stage::as_str)
}

/// A timestamp as "YYYY-MM-DD HH:MM:SS" UTC.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A job kind as a word.
pub fn kind(value: i32) -> &'static str {
    match proto::JobKind::try_from(value) {
        Ok(proto::JobKind::Rollback) => "rollback",
        _ => "deploy",
    }
}

/// A number, or "" for zero (unset).
pub fn nonzero(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        n.to_string()
    }
}

/// Branch and commit pairs as JSON.
pub fn branches_json(list: &[proto::BranchCommit]) -> Value {
    list.iter()
        .map(|b| json!({"branch": b.branch, "commit": b.commit}))
        .collect()
}

/// A job as JSON.
pub fn job_json(job: &proto::Job) -> Value {
    json!({
        "id": job.id, "app": job.app, "env": job.env, "branch": job.branch, "commit": job.commit,
        "state": state(job), "stage": stage(job.stage), "reason": job.reason, "agent": job.agent,
        "created_ms": job.created_ms, "updated_ms": job.updated_ms, "url": job.url,
        "image": job.image, "container": job.container, "last_seq": job.last_seq,
        "kind": kind(job.kind), "branches": branches_json(&job.branches),
        "base": job.base.as_ref().map(|b| json!({"branch": b.branch, "commit": b.commit})),
        "release": job.release, "rollback_to": job.rollback_to,
        "requested_by": job.requested_by, "superseded_by": job.superseded_by,
        "approval": job.approval,
    })
}

/// Which output a line came from, as a word.
pub fn stream_name(value: i32) -> &'static str {
    match proto::LogStream::try_from(value) {
        Ok(proto::LogStream::Stdout) => "stdout",
        Ok(proto::LogStream::Stderr) => "stderr",
        _ => "system",
    }
}

/// A log line as JSON.
pub fn line_json(line: &proto::LogLine) -> Value {
    let stream = stream_name(line.stream);
    json!({"seq": line.seq, "timestamp_ms": line.timestamp_ms, "stage": stage(line.stage), "stream": stream, "text": line.text})
}

/// Short commit id.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_dates() {
        assert_eq!(super::time(0), "-");
        assert_eq!(super::time(1_795_000_000_000), "2026-11-18 11:06:40");
        assert_eq!(super::time(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn terminal_escapes_are_shown_not_obeyed() {
        assert_eq!(super::printable("plain\ttext é"), "plain\ttext é");
        assert_eq!(
            super::printable("\u{1b}]0;owned\u{7}red"),
            "\\x1b]0;owned\\x07red"
        );
        assert_eq!(
            super::printable("a\rb\u{7f}\u{9b}c"),
            "a\\x0db\\x7f\\u{9b}c"
        );
    }
}
