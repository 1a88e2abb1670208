//! The agent's side of its proxies: start one for an (environment, app) if
//! none answers, and tell it where to route and what to drain.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

/// How long a freshly started proxy may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Proxy failures.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The control socket could not be used.
    #[error("proxy control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy answered with an error.
    #[error("the proxy refused {command:?}: {answer}")]
    Refused {
        /// What was asked.
        command: String,
        /// What it said.
        answer: String,
    },
    /// It did not start.
    #[error("the proxy for port {port} did not start within {}s; see {log}", START_TIMEOUT.as_secs())]
    NotStarted {
        /// Its port.
        port: u16,
        /// Its log file.
        log: String,
    },
}

/// The agent's variables a proxy is given: only the log filter. Nothing
/// else is inherited, so no variable of the agent's (`GANTRY_ENV`,
/// `GANTRY_COORDINATOR`, ...) can change how the proxy reads its command
/// line, and nothing the agent holds (a token in its environment) reaches it.
pub const PROXY_VARIABLES: &[&str] = &["RUST_LOG"];

/// How one proxy process is started: the program, its arguments and its
/// whole environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The `gantry-agent` binary.
    pub program: PathBuf,
    /// `proxy --listen ... --control ... --state ...`.
    pub args: Vec<OsString>,
    /// Every variable it gets; it inherits none.
    pub env: Vec<(String, String)>,
}

/// The launch of the proxy listening on `listen`, with the agent's
/// variables read through `agent_var` (`std::env::var`, or a test's map).
pub fn launch(
    program: &Path,
    listen: &str,
    control: &Path,
    state: &Path,
    agent_var: impl Fn(&str) -> Option<String>,
) -> Launch {
    Launch {
        program: program.to_owned(),
        args: vec![
            "proxy".into(),
            "--listen".into(),
            listen.into(),
            "--control".into(),
            control.into(),
            "--state".into(),
            state.into(),
        ],
        env: PROXY_VARIABLES
            .iter()
            .filter_map(|name| Some((name.to_string(), agent_var(name)?)))
            .collect(),
    }
}

impl Launch {
    /// The command: an empty environment plus [`Launch::env`], stdin closed,
    /// in a session of its own, so signals to the agent (or its terminal)
    /// never reach it and it is not the agent's child to reap.
    pub fn command(&self) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        command
    }
}

/// A running proxy, reached through its control socket.
pub struct Proxy {
    socket: PathBuf,
}

/// Where one (environment, app)'s proxy keeps its socket, state and log.
pub fn paths(work_dir: &Path, env: &str, app: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = work_dir.join("proxies");
    let base = format!("{env}-{app}");
    (
        dir.join(format!("{base}.sock")),
        dir.join(format!("{base}.route")),
        dir.join(format!("{base}.log")),
    )
}

impl Proxy {
    /// Sends one command and reads the answer.
    pub async fn ask(&self, command: &str) -> Result<String, ProxyError> {
        let io = |source| ProxyError::Io {
            path: self.socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket).await.map_err(io)?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut answer = String::new();
        BufReader::new(read)
            .read_line(&mut answer)
            .await
            .map_err(io)?;
        let answer = answer.trim().to_owned();
        if answer.starts_with("error") || answer.is_empty() {
            return Err(ProxyError::Refused {
                command: command.to_owned(),
                answer,
            });
        }
        Ok(answer)
    }

    /// The current route, if any.
    pub async fn route_now(&self) -> Result<Option<String>, ProxyError> {
        let answer = self.ask("status").await?;
        Ok(answer
            .split_whitespace()
            .nth(1)
            .filter(|a| *a != "none")
            .map(str::to_owned))
    }

    /// Sends every new request to `addr`.
    pub async fn route(&self, addr: &str) -> Result<(), ProxyError> {
        self.ask(&format!("route {addr}")).await.map(|_| ())
    }

    /// Waits for `addr`'s requests in flight to finish; returns how many
    /// were still running when `timeout` passed.
    pub async fn drain(&self, addr: &str, timeout: Duration) -> Result<usize, ProxyError> {
        let answer = self
            .ask(&format!("drain {addr} {}", timeout.as_millis()))
            .await?;
        Ok(answer
            .strip_prefix("timeout ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// The proxy of (env, app) on `listen`: the running one, or a new
    /// detached `program proxy ...` process ([`launch`]) that outlives this
    /// agent.
    pub async fn ensure(
        program: &Path,
        work_dir: &Path,
        env: &str,
        app: &str,
        listen: &str,
        port: u16,
    ) -> Result<Proxy, ProxyError> {
        let (socket, state, log) = paths(work_dir, env, app);
        let proxy = Proxy { socket };
        if proxy.ask("status").await.is_ok() {
            return Ok(proxy);
        }
        let io = |source| ProxyError::Io {
            path: log.clone(),
            source,
        };
        std::fs::create_dir_all(work_dir.join("proxies")).map_err(io)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io)?;
        let launch = launch(
            program,
            &format!("{listen}:{port}"),
            &proxy.socket,
            &state,
            |name| std::env::var(name).ok(),
        );
        let mut command = launch.command();
        command
            .stdout(log_file.try_clone().map_err(io)?)
            .stderr(log_file);
        let mut child = command.spawn().map_err(io)?;
        let until = tokio::time::Instant::now() + START_TIMEOUT;
        while tokio::time::Instant::now() < until {
            if proxy.ask("status").await.is_ok() {
                // Reaped by a thread so it never lingers as a zombie of
                // this agent; it normally outlives the agent anyway.
                std::thread::spawn(move || child.wait());
                return Ok(proxy);
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        Err(ProxyError::NotStarted {
            port,
            log: log.display().to_string(),
        })
    }
}

/// Makes sure every released container of this installation that has a
/// stable port is served by its proxy, on its current published port: after
/// a host reboot the proxies are gone and the containers came back on new
/// ports. Called when the agent starts; failures are logged, not fatal.
pub async fn reconcile(rt: &crate::runtime::Runtime) {
    use crate::docker::{self, label};
    let scope = [(label::AGENT_ID, rt.agent_id.as_str())];
    let Ok(containers) = docker::containers(&rt.docker, &scope).await else {
        return;
    };
    for (id, labels) in containers {
        let (Some(app), Some(env), Some(ports)) = (
            labels.get(label::APP),
            labels.get(label::ENV),
            labels.get(label::PROXY),
        ) else {
            continue;
        };
        let Some((public, inner)) = ports
            .split_once(':')
            .and_then(|(p, i)| Some((p.parse::<u16>().ok()?, i.parse::<u16>().ok()?)))
        else {
            continue;
        };
        let Ok(Some(host_port)) = docker::published_port(&rt.docker, &id, inner).await else {
            continue;
        };
        let upstream = format!("{}:{host_port}", rt.health_host);
        let routed = async {
            let proxy = Proxy::ensure(
                &rt.proxy_program,
                &rt.work_dir,
                env,
                app,
                &rt.publish_ip,
                public,
            )
            .await?;
            if proxy.route_now().await?.as_deref() != Some(upstream.as_str()) {
                proxy.route(&upstream).await?;
                tracing::info!(app = %app, env = %env, %upstream, "proxy route restored");
            }
            Ok::<_, ProxyError>(())
        };
        if let Err(e) = routed.await {
            tracing::warn!(app = %app, env = %env, error = %e, "cannot restore the app's proxy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_gets_its_arguments_and_the_log_filter_and_no_other_variable() {
        let agent_env = |name: &str| match name {
            "RUST_LOG" => Some("debug".to_owned()),
            "GANTRY_COORDINATOR" | "GANTRY_ENV" | "GANTRY_AGENT_NAME" | "GANTRY_WORK_DIR" => {
                Some("set".to_owned())
            }
            _ => None,
        };
        let started = launch(
            Path::new("/usr/local/bin/gantry-agent"),
            "0.0.0.0:8080",
            Path::new("/w/proxies/prod-shop.sock"),
            Path::new("/w/proxies/prod-shop.route"),
            agent_env,
        );
        assert_eq!(started.program, Path::new("/usr/local/bin/gantry-agent"));
        let args: Vec<&str> = started.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "proxy",
                "--listen",
                "0.0.0.0:8080",
                "--control",
                "/w/proxies/prod-shop.sock",
                "--state",
                "/w/proxies/prod-shop.route"
            ]
        );
        assert_eq!(started.env, [("RUST_LOG".to_owned(), "debug".to_owned())]);
        let without_filter = launch(
            Path::new("gantry-agent"),
            "127.0.0.1:1",
            Path::new("s"),
            Path::new("r"),
            |_| None,
        );
        assert!(without_filter.env.is_empty());
    }

    #[test]
    fn the_command_inherits_no_variable() {
        // A child that prints its environment shows what the command gives;
        // this test process has PATH, HOME and the rest.
        let printed = Launch {
            program: "/usr/bin/env".into(),
            args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info".into())],
        }
        .command()
        .output()
        .expect("env runs");
        let text = String::from_utf8_lossy(&printed.stdout);
        assert_eq!(text.lines().collect::<Vec<_>>(), ["RUST_LOG=info"]);
    }
}
