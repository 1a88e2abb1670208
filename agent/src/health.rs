//! The health check of a new container: HTTP GET on its health path until it
//! answers 200, it exits, or the timeout passes. Its output is streamed into
//! the job's log meanwhile, so a failed start shows why.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bollard::Docker;
use futures::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    docker,
    report::{Reporter, Stream, Tail},
};

/// Pause between probes while the container is young: a release that is
/// healthy in 1 s is seen within 1.1 s.
const PROBE_FAST: Duration = Duration::from_millis(100);

/// How long probes stay [`PROBE_FAST`]: most services that start quickly
/// are up by then; slower ones (a Spring Boot JVM) are probed less often.
const FAST_FOR: Duration = Duration::from_secs(5);

/// The longest pause between probes, reached by doubling after
/// [`FAST_FOR`]: a slow starter is seen within a second of being ready,
/// and is not loaded by probes while it starts.
const PROBE_SLOWEST: Duration = Duration::from_secs(1);

/// The pause before the next probe, `elapsed` after the first one.
fn pause_after(elapsed: Duration) -> Duration {
    if elapsed < FAST_FOR {
        return PROBE_FAST;
    }
    let doublings = ((elapsed - FAST_FOR).as_secs() / 2).min(4) as u32;
    (PROBE_FAST * 2u32.pow(doublings + 1)).min(PROBE_SLOWEST)
}

/// One probe may take this long before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest response head read from a probe.
const MAX_HEAD: usize = 1024;

/// Where and how to probe.
pub struct Probe<'a> {
    /// Host the published port is reached on from the agent.
    pub host: &'a str,
    /// The published port.
    pub port: u16,
    /// The health path.
    pub path: &'a str,
    /// How long to wait for 200.
    pub timeout: Duration,
}

/// Waits until the container answers 200; on failure, says why with its last lines.
pub async fn wait_healthy(
    docker: &Docker,
    container: &str,
    probe: Probe<'_>,
    report: &Reporter,
) -> Result<(), String> {
    let tail = Arc::new(Mutex::new(Tail::default()));
    let follower = {
        let mut lines = Box::pin(docker::follow_logs(docker, container));
        let report = report.clone();
        let tail = tail.clone();
        tokio::spawn(async move {
            while let Some((is_err, line)) = lines.next().await {
                tail.lock().expect("tail lock").push(&line);
                report
                    .line(
                        if is_err {
                            Stream::Stderr
                        } else {
                            Stream::Stdout
                        },
                        line,
                    )
                    .await;
            }
        })
    };
    let outcome = probe_until(docker, container, &probe).await;
    follower.abort();
    let _ = follower.await;
    outcome.map_err(|why| {
        let last = tail.lock().expect("tail lock").joined();
        if last.is_empty() {
            why
        } else {
            format!("{why}; last lines of the container:\n{last}")
        }
    })
}

async fn probe_until(docker: &Docker, container: &str, probe: &Probe<'_>) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let deadline = started + probe.timeout;
    let mut last;
    loop {
        if let Some(code) = docker::container_exit(docker, container)
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "the new container exited with code {code} before it became healthy"
            ));
        }
        match http_status(probe.host, probe.port, probe.path).await {
            Ok(200) => return Ok(()),
            Ok(status) => last = format!("last answer was HTTP {status}"),
            Err(e) => last = format!("last attempt: {e}"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the new container did not answer 200 on {} within {}s ({last})",
                probe.path,
                probe.timeout.as_secs()
            ));
        }
        tokio::time::sleep(pause_after(started.elapsed())).await;
    }
}

/// Largest response read by [`http_get`]: health answers and test pages are small.
const MAX_RESPONSE: usize = 64 * 1024;

/// The status code of `GET path` on host:port.
pub async fn http_status(host: &str, port: u16, path: &str) -> std::io::Result<u16> {
    Ok(http_get(host, port, path).await?.0)
}

/// `GET path` on host:port (HTTP/1.0, one request): the status and the body.
pub async fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut conn = TcpStream::connect((host, port)).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        (&mut conn)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut answer)
            .await?;
        let status = parse_status(&answer[..answer.len().min(MAX_HEAD)])
            .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
        let body = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| String::from_utf8_lossy(&answer[at + 4..]).into_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 2s"))?
}

/// Splits "http://host:port[/...]" into host and port.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_status, pause_after, PROBE_FAST, PROBE_SLOWEST};

    #[test]
    fn probes_are_fast_at_first_then_back_off() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(pause_after(ms(0)), PROBE_FAST);
        assert_eq!(pause_after(ms(4_900)), PROBE_FAST);
        assert_eq!(pause_after(ms(5_000)), ms(200));
        assert_eq!(pause_after(ms(7_000)), ms(400));
        assert_eq!(pause_after(ms(9_000)), ms(800));
        assert_eq!(pause_after(ms(11_000)), PROBE_SLOWEST);
        assert_eq!(pause_after(Duration::from_secs(3_600)), PROBE_SLOWEST);
        // In the first second, ten probes: healthy at 1 s is seen by 1.1 s.
        let mut at = ms(0);
        let mut probes = 0;
        while at <= ms(1_000) {
            probes += 1;
            at += pause_after(at);
        }
        assert_eq!(probes, 11);
    }

    #[test]
    fn status_lines_are_read() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\nx: y\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            super::host_port("http://127.0.0.1:8080"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(
            super::host_port("http://app.dev:81/x"),
            Some(("app.dev".into(), 81))
        );
        assert_eq!(super::host_port("ftp://x:1"), None);
    }
}
