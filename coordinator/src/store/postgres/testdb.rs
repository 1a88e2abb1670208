//! A Postgres cluster owned by the test run: `initdb` into a temporary
//! directory, the server started on a Unix socket in that directory (so
//! no port is shared with anything else on the host), a database for each
//! test, and the server stopped when the last test using it lets go.
//! Tests of TLS get a cluster that also listens on a free 127.0.0.1 port,
//! with TLS on ([`Listen::TcpTls`]) or off ([`Listen::Tcp`]).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
};

use tempfile::TempDir;

/// Where Debian's postgresql 15 puts its programs.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The port in the socket's name of a cluster that opens no TCP port:
/// the socket lives in the cluster's own directory, so any number is free.
const PORT: u16 = 5432;

/// A user of the TLS cluster who logs in with a password (SCRAM), over
/// TLS only, so channel binding can be tested; a superuser, to migrate.
pub const TLS_USER: &str = "gantry";
/// Its password.
pub const TLS_PASSWORD: &str = "tls-test-password";

/// How a cluster listens besides its Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// No TCP port.
    Socket,
    /// 127.0.0.1 on a free port, without TLS.
    Tcp,
    /// 127.0.0.1 on a free port, TLS on and required (`hostssl` only),
    /// its certificate for localhost and 127.0.0.1 signed by the CA in
    /// [`TestDb::ca`].
    TcpTls,
}

/// The clusters the tests running now share, one of each [`Listen`].
static SHARED: [Mutex<Weak<Cluster>>; 3] = [const { Mutex::new(Weak::new()) }; 3];

/// Numbers the databases of this test process.
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A running server and its data directory.
pub struct Cluster {
    dir: TempDir,
    /// Its port (a TCP one unless it listens on its socket only).
    port: u16,
}

/// One test's database in the shared cluster.
pub struct TestDb {
    /// Its connection string.
    pub url: String,
    /// Its name.
    name: String,
    /// Keeps the server running while the test does.
    cluster: Arc<Cluster>,
}

/// Runs `program` of the Postgres tools as the `postgres` user when this
/// process is root (initdb refuses root), as itself otherwise.
fn pg_command(program: &str) -> Command {
    let path = Path::new(BIN).join(program);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

/// The postgres user's id when this process is root (and so runs the
/// server as postgres), else none.
fn postgres_uid() -> Option<u32> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let postgres = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("id runs");
    let uid = String::from_utf8_lossy(&postgres.stdout)
        .trim()
        .parse()
        .expect("a user named postgres exists");
    Some(uid)
}

/// Writes `text` to `path`, readable by the server only when `secret`.
fn write_for_server(path: &Path, text: &str, secret: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write a cluster file");
    let mode = if secret { 0o600 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    if let Some(uid) = postgres_uid() {
        std::os::unix::fs::chown(path, Some(uid), None).expect("chown a cluster file");
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// A CA, and a server certificate and key it signed for localhost and
/// 127.0.0.1, in PEM: (ca, cert, key).
fn server_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "test database CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a server key");
    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server names");
    server
        .distinguished_name
        .push(DnType::CommonName, "test database");
    let cert = server
        .signed_by(&key, &issuer)
        .expect("the server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn run(mut command: Command) {
    assert!(
        Path::new(BIN).join("initdb").exists(),
        "PostgreSQL 15 is not installed (no {BIN}/initdb): scripts/test installs it \
         (Debian: apt-get install postgresql)"
    );
    let output = command.output().expect("the Postgres tools run");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Cluster {
    /// The cluster tests share that listens as `listen` says, started if
    /// none is running.
    fn shared(listen: Listen) -> Arc<Cluster> {
        let mut shared = SHARED[listen as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(Cluster::start(listen));
        *shared = Arc::downgrade(&cluster);
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// initdb, then start the server and wait until it accepts connections.
    fn start(listen: Listen) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        if let Some(uid) = postgres_uid() {
            std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown the cluster dir");
        }
        let port = match listen {
            Listen::Socket => PORT,
            Listen::Tcp | Listen::TcpTls => free_port(),
        };
        let cluster = Cluster { dir, port };
        let mut initdb = pg_command("initdb");
        initdb.arg("-D").arg(cluster.data()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(initdb);
        // fsync off: the tests check what the store does, not the disk;
        // a commit still reaches the OS before it returns, so a server
        // stopped abruptly keeps it, and a test's commits cost no fsync.
        let mut options = format!(
            "-p {port} -k {} -c max_connections=200 -c fsync=off",
            cluster.dir.path().display()
        );
        options += &cluster.listen_on(listen);
        let mut start = pg_command("pg_ctl");
        start
            .arg("-D")
            .arg(cluster.data())
            .args(["-o", &options, "-w", "-l"])
            .arg(cluster.dir.path().join("server.log"))
            .arg("start");
        run(start);
        if listen == Listen::TcpTls {
            let mut role = pg_command("psql");
            role.arg("-h")
                .arg(cluster.dir.path())
                .args(["-p", &port.to_string(), "-U", "postgres", "-c"])
                .arg(format!(
                    "CREATE ROLE {TLS_USER} LOGIN SUPERUSER PASSWORD '{TLS_PASSWORD}'"
                ));
            run(role);
        }
        cluster
    }

    /// The server options and files for listening as `listen` says: who
    /// may connect over TCP (pg_hba.conf), and TLS's certificate and key.
    fn listen_on(&self, listen: Listen) -> String {
        let hba = match listen {
            Listen::Socket => return " -c listen_addresses=''".to_owned(),
            Listen::Tcp => "local all all trust\nhost all all 127.0.0.1/32 trust\n".to_owned(),
            Listen::TcpTls => format!(
                "local all all trust\n\
                 hostssl all {TLS_USER} 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all 127.0.0.1/32 trust\n"
            ),
        };
        write_for_server(&self.data().join("pg_hba.conf"), &hba, false);
        let mut options = " -c listen_addresses=127.0.0.1".to_owned();
        if listen == Listen::TcpTls {
            let (ca, cert, key) = server_certificate();
            let dir = self.dir.path();
            write_for_server(&dir.join("ca.pem"), &ca, false);
            write_for_server(&dir.join("server.pem"), &cert, false);
            write_for_server(&dir.join("server.key"), &key, true);
            options += &format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            );
        }
        options
    }

    /// The connection string of database `name`, over the socket.
    fn url(&self, name: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={name}",
            self.dir.path().display(),
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = pg_command("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        // A server that did not stop would outlive the test run; say so.
        if let Err(e) = stop.status() {
            eprintln!(
                "cannot stop the test cluster in {}: {e}",
                self.dir.path().display()
            );
        }
    }
}

impl TestDb {
    /// A new, empty database in the shared cluster.
    pub async fn create() -> TestDb {
        Self::create_in(Listen::Socket).await
    }

    /// A new, empty database in the shared cluster that listens as
    /// `listen` says.
    pub async fn create_in(listen: Listen) -> TestDb {
        let cluster = tokio::task::spawn_blocking(move || Cluster::shared(listen))
            .await
            .expect("the cluster starts");
        let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::SeqCst));
        let (client, connection) =
            tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        drop(client);
        let _ = driver.await;
        TestDb {
            url: cluster.url(&name),
            name,
            cluster,
        }
    }
}

impl TestDb {
    /// Its connection string as a `postgres://` URL (the socket directory
    /// percent-encoded as the host), the form a coordinator's config takes.
    pub fn postgres_url(&self) -> String {
        let dir = self.cluster.dir.path().display().to_string();
        format!(
            "postgres://postgres@{}:{}/{}",
            dir.replace('/', "%2F"),
            self.cluster.port,
            self.name
        )
    }

    /// A `postgres://` URL of this database over TCP, to `host` (which
    /// must reach 127.0.0.1) as `user`, with `query` (e.g.
    /// `?sslmode=require`) appended.
    pub fn tcp_url(&self, user: &str, host: &str, query: &str) -> String {
        format!(
            "postgres://{user}@{host}:{}/{}{query}",
            self.cluster.port, self.name
        )
    }

    /// The PEM file of the CA that signed a [`Listen::TcpTls`] cluster's
    /// certificate.
    pub fn ca(&self) -> PathBuf {
        self.cluster.dir.path().join("ca.pem")
    }
}

impl TestDb {
    /// Restarts the server under this database (and every other of its
    /// cluster), dropping every connection as a database host's restart
    /// would; returns once it accepts connections again.
    pub fn restart_server(&self) {
        let cluster = &self.cluster;
        let mut restart = pg_command("pg_ctl");
        restart
            .arg("-D")
            .arg(cluster.data())
            .args(["-m", "fast", "-w", "-l"])
            .arg(cluster.dir.path().join("server.log"))
            .arg("restart");
        run(restart);
    }
}
