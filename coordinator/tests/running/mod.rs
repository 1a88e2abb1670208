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

/// The binary to run: [`BIN`], or the one `GANTRY_TEST_COORDINATOR_BIN`
/// names (to measure another build, e.g. an older commit's, the same way).
pub fn bin() -> String {
    std::env::var("GANTRY_TEST_COORDINATOR_BIN").unwrap_or_else(|_| BIN.to_owned())
}

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
        Self::start_with(Command::new(bin()).arg("--config").arg(path), port)
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

    /// Its resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
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

/// The admin's API token in [`secure`] coordinators.
pub const ADMIN_TOKEN: &str = "ce-flood-admin-token";

/// The agent enrolled in [`secure`] coordinators.
pub const AGENT: &str = "ce-flood-1";

/// A coordinator serving TLS, with an admin user and an enrolled agent.
pub struct Secure {
    /// The process.
    pub running: Running,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA operators and agents trust.
    pub ca_pem: String,
    /// The enrolled agent's key and certificate.
    pub agent_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts a TLS coordinator (`ca init`, one agent enrolled and joined).
pub async fn secure() -> Secure {
    secure_with(None).await
}

/// As [`secure`], the coordinator limited to `open_files` descriptors
/// when given.
pub async fn secure_with(open_files: Option<u64>) -> Secure {
    gantry_shared::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\nadmins = [\"admin\"]\n\
             [[environments]]\nname = \"dev\"\n\
             [[users]]\nname = \"ce-admin\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n",
            gantry_shared::tls::fingerprint(ADMIN_TOKEN.as_bytes())
        ),
    );
    let admin = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    admin(&["ca", "init"]);
    let token = admin(&["agent", "enroll", "--env", "dev", "--name", AGENT]);
    let mut command = Command::new(bin());
    command.arg("--config").arg(&path);
    if let Some(limit) = open_files {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure only calls setrlimit, which is
        // async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                match libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
    let running = Running::start_with(&mut command, port);
    let url = format!("https://127.0.0.1:{port}");
    let agent_dir = dir.path().join("agent-tls");
    gantry_agent::join::join(&url, token.trim(), &agent_dir)
        .await
        .unwrap();
    let ca_pem = std::fs::read_to_string(dir.path().join("gantry-data/tls/ca.pem")).unwrap();
    Secure {
        running,
        url,
        ca_pem,
        agent_dir,
        _dir: dir,
    }
}

impl Secure {
    /// `gantry whoami` as the admin, on a new connection; how long it took.
    pub async fn whoami(&self) -> Duration {
        let started = std::time::Instant::now();
        let endpoint = tonic::transport::Endpoint::from_shared(self.url.clone())
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        let channel = gantry_shared::tls::with_tls(endpoint, &self.ca_pem, None)
            .unwrap()
            .connect()
            .await
            .expect("the operator connects");
        let mut client =
            gantry_shared::proto::operator_service_client::OperatorServiceClient::new(channel);
        let mut request = tonic::Request::new(gantry_shared::proto::WhoAmIRequest {});
        let bearer = format!("Bearer {ADMIN_TOKEN}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        let me = client.who_am_i(request).await.expect("whoami answers");
        assert_eq!(me.into_inner().name, "ce-admin");
        started.elapsed()
    }

    /// The agent connecting and registering, as it does on every
    /// reconnect; how long until the coordinator said Registered. The
    /// stream ends when the returned sender is dropped.
    pub async fn agent_attach(
        &self,
    ) -> (
        Duration,
        tokio::sync::mpsc::Sender<gantry_shared::proto::AgentMessage>,
    ) {
        use gantry_shared::proto;
        let started = std::time::Instant::now();
        let channel = gantry_agent::join::agent_endpoint(&self.url, Some(&self.agent_dir))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("the agent connects");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let register = proto::Register {
            name: AGENT.into(),
            env: "dev".into(),
            capacity: 1,
            protocol: gantry_shared::messages::PROTOCOL,
            ..Default::default()
        };
        tx.send(proto::AgentMessage {
            body: Some(proto::agent_message::Body::Register(register)),
        })
        .await
        .unwrap();
        let mut inbound = proto::agent_service_client::AgentServiceClient::new(channel)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the agent is admitted")
            .into_inner();
        let first = inbound.message().await.unwrap().expect("a first message");
        assert!(
            matches!(
                first.body,
                Some(proto::coordinator_message::Body::Registered(_))
            ),
            "{first:?}"
        );
        (started.elapsed(), tx)
    }

    /// A TLS client configuration trusting the coordinator's CA (for raw
    /// connections that speak HTTP/2 themselves, or nothing).
    pub fn tls_client(&self) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        std::sync::Arc::new(config)
    }
}

/// A TCP connection to `to` from the loopback address `from`.
pub async fn tcp_from(
    from: std::net::Ipv4Addr,
    to: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// A TLS connection to `to` from `from`, past its handshake.
pub async fn tls_from(
    from: std::net::Ipv4Addr,
    to: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tcp_from(from, to).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Raises this process's open-file limit to its hard limit, for floods of
/// connections (the coordinator it starts inherits it).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        limit.rlim_cur
    }
}

/// The resident memory of process `pid`, in KiB (VmRSS of
/// /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// CPU time process `pid` has used (user and system), from
/// /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads its argument.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}
