//! What one client may hold of a proxy, and how many clients it serves at
//! once: a proxy faces whoever can reach the app's stable port, so a slow or
//! silent client must not keep a connection, a task and a file descriptor
//! for long, and a flood of them must not exhaust the process.

use std::time::Duration;

/// Time a client has to send a whole request head, counted from when the
/// proxy starts waiting for it (a new connection, or a kept-alive one after
/// its last response). A real client sends its head in one write, within
/// milliseconds; 10 s leaves room for a slow mobile link and is all a
/// slowloris client (a head sent a byte at a time, or never) holds a
/// connection for. Enforced by hyper's `header_read_timeout`.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A kept-alive connection on which no request has begun for this long is
/// closed (and so is a new one on which nothing arrives). 5 s is the default
/// of Apache httpd and Node.js: callers on a busy path reuse a connection
/// well within it, and each idle one costs a descriptor and a task. Sent to
/// clients as `Keep-Alive: timeout=5`, so pooling clients that read it drop
/// the connection first.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Client connections served at once; past it a new connection is answered
/// `503` and closed at once. 8,192 is Tomcat's default `maxConnections`: the
/// Java service behind the proxy would not hold more at once anyway.
pub const MAX_CONNECTIONS: usize = 8_192;

/// Largest request head (and read buffer) per connection, so a connection's
/// memory is bounded whatever a client sends: 64 KiB, twice nginx's default
/// limit for a head (4 buffers of 8 KiB). A bigger head is answered `431`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// File descriptors one client connection may hold: its own socket, the
/// upstream connection serving it, and one idle in the upstream pool.
pub const FDS_PER_CONNECTION: u64 = 3;

/// Descriptors kept for everything else (listener, control socket, log,
/// runtime internals).
const FD_RESERVE: u64 = 64;

/// Pause after a failed `accept` (most often: no descriptor left), so the
/// loop waits for connections to close instead of spinning on the error;
/// new connections wait in the listen backlog meanwhile.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Raises this process's soft limit on open files to its hard limit (a
/// proxy started from a shell inherits a soft limit of 1,024; the agent's
/// systemd unit sets both to 65,536) and returns the soft limit now in
/// force, or `None` if it cannot be read.
pub fn raise_open_files() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Connections to serve at once: `wanted`, lowered so that every one of
/// them can get its descriptors within `open_files` (a proxy that runs out
/// answers nobody; one at its cap still answers `503` fast).
pub fn connection_cap(wanted: usize, open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files else {
        return wanted;
    };
    let fit = open_files.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION;
    wanted
        .min(usize::try_from(fit).unwrap_or(usize::MAX))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_descriptors_there_are() {
        assert_eq!(
            connection_cap(MAX_CONNECTIONS, Some(65_536)),
            MAX_CONNECTIONS
        );
        assert_eq!(connection_cap(MAX_CONNECTIONS, Some(1_024)), 320);
        assert_eq!(connection_cap(MAX_CONNECTIONS, Some(10)), 1);
        assert_eq!(connection_cap(MAX_CONNECTIONS, None), MAX_CONNECTIONS);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_open_files().expect("RLIMIT_NOFILE can be read");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!((soft, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
