//! A Postgres cluster owned by the test run: `initdb` into a temporary
//! directory, the server started on a Unix socket in that directory (so
//! no port is shared with anything else on the host), a database for each
//! test, and the server stopped when the last test using it lets go.

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

/// The port in the socket's name; the socket lives in the cluster's own
/// directory and no TCP port is opened, so any number is free.
const PORT: u16 = 5432;

/// The cluster the tests running now share.
static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

/// Numbers the databases of this test process.
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A running server and its data directory.
pub(crate) struct Cluster {
    dir: TempDir,
}

/// One test's database in the shared cluster.
pub(crate) struct TestDb {
    /// Its connection string.
    pub(crate) url: String,
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
    /// The cluster tests share, started if none is running.
    fn shared() -> Arc<Cluster> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(Cluster::start());
        *shared = Arc::downgrade(&cluster);
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// initdb, then start the server and wait until it accepts connections.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let postgres = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .expect("id runs");
            let uid: u32 = String::from_utf8_lossy(&postgres.stdout)
                .trim()
                .parse()
                .expect("a user named postgres exists");
            std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown the cluster dir");
        }
        let cluster = Cluster { dir };
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
        let options = format!(
            "-p {PORT} -k {} -c listen_addresses='' -c max_connections=200 -c fsync=off",
            cluster.dir.path().display()
        );
        let mut start = pg_command("pg_ctl");
        start
            .arg("-D")
            .arg(cluster.data())
            .args(["-o", &options, "-w", "-l"])
            .arg(cluster.dir.path().join("server.log"))
            .arg("start");
        run(start);
        cluster
    }

    /// The connection string of database `name`.
    fn url(&self, name: &str) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={name}",
            self.dir.path().display()
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
    pub(crate) async fn create() -> TestDb {
        let cluster = tokio::task::spawn_blocking(Cluster::shared)
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
    pub(crate) fn postgres_url(&self) -> String {
        let dir = self.cluster.dir.path().display().to_string();
        format!(
            "postgres://postgres@{}:{PORT}/{}",
            dir.replace('/', "%2F"),
            self.name
        )
    }
}
