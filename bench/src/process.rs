//! Figures that need the coordinator in a process of its own: the memory
//! and CPU of an idle fleet, and the time to serve again after a restart
//! over a large store. The bench starts itself again as that process
//! (`gantry-bench --coordinator-process CONFIG`), so no other binary has to
//! be built first.

use std::{
    path::Path,
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use gantry_coordinator::{
    job::{JobKind, JobRecord},
    store::{sled::SledStore, Store},
};
use gantry_shared::{config::CoordinatorConfig, messages::LogLine, AppName, EnvName, JobState};

use crate::sim::{self, Arrivals, Work};

/// Runs a coordinator in this process until it is killed (the child side).
pub async fn serve(config: &Path) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(config)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    gantry_coordinator::serve(config, listener, Default::default()).await
}

/// A coordinator process; killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a config for a coordinator on a free port over `data`, returns
/// (config path, URL).
fn config(dir: &Path, data: &Path) -> anyhow::Result<(std::path::PathBuf, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let repo = dir.join("repo");
    if !repo.exists() {
        crate::coordinator::empty_repo(&repo)?;
    }
    let text = format!(
        "plaintext = true\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[[environments]]\nname = \"bench\"\n\
         [[apps]]\nname = \"app\"\nremote = \"{}\"\nbuild_command = \"true\"\nartifact = \"a.jar\"\n\
         base_image = \"none\"\ncontainer_port = 80\n",
        data.display(),
        repo.display()
    );
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, text)?;
    Ok((path, format!("http://127.0.0.1:{port}")))
}

fn spawn(config: &Path) -> anyhow::Result<Process> {
    let child = Command::new(std::env::current_exe()?)
        .arg("--coordinator-process")
        .arg(config)
        .env("RUST_LOG", "error")
        .spawn()
        .context("starting the coordinator process")?;
    Ok(Process(child))
}

/// Waits until the coordinator at `url` answers its health check; returns
/// when it did.
async fn serving(url: &str, deadline: Duration) -> anyhow::Result<Instant> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let request = tonic_health::pb::HealthCheckRequest::default();
            if let Ok(answer) = health.check(request).await {
                if answer.into_inner().status == 1 {
                    return Ok(Instant::now());
                }
            }
        }
        anyhow::ensure!(Instant::now() < until, "the coordinator did not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(ticks as f64 / per_sec))
}

/// Resident memory of the process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

/// `agents` idle agents connected: the coordinator's resident memory (MiB)
/// and CPU use (% of one core) over `window`.
pub async fn idle_fleet(agents: usize, window: Duration) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let (path, url) = config(dir.path(), &dir.path().join("data"))?;
    let process = spawn(&path)?;
    serving(&url, Duration::from_secs(30)).await?;
    let arrivals = Arc::new(Arrivals::default());
    let mut client = gantry_cli::commands::connect_with(&url, None, None).await?;
    let mut sims = Vec::new();
    for i in 0..agents {
        let (url, arrivals) = (url.clone(), arrivals.clone());
        sims.push(tokio::spawn(sim::agent(
            tonic::transport::Endpoint::from_shared(url)?,
            "bench",
            format!("sim-{i}"),
            Work::Nothing,
            arrivals,
        )));
        if (i + 1) % 50 == 0 || i + 1 == agents {
            crate::connected(&mut client, i + 1).await?;
        }
    }
    // Let connection set-up settle, then measure a quiet window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = process.0.id();
    let before = cpu_time(pid)?;
    tokio::time::sleep(window).await;
    let used = cpu_time(pid)? - before;
    let rss = rss_mib(pid)?;
    for sim in sims {
        sim.abort();
    }
    Ok((rss, used.as_secs_f64() / window.as_secs_f64() * 100.0))
}

/// A store of `jobs` ended jobs holding `lines` log lines in all, then the
/// time from starting the coordinator over it to its health check serving.
pub async fn restart(jobs: u64, lines: u64) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (path, url) = config(dir.path(), &data)?;
    fill(&data, jobs, lines).await?;
    let started = Instant::now();
    let _process = spawn(&path)?;
    let ready = serving(&url, Duration::from_secs(120)).await?;
    Ok(ready - started)
}

/// Writes `jobs` ended jobs and `lines` lines of 100 bytes into a store,
/// in the agents' batch size.
async fn fill(data: &Path, jobs: u64, lines: u64) -> anyhow::Result<()> {
    let store = SledStore::open(data)?;
    let per_job = lines / jobs;
    let text = "x".repeat(100);
    for _ in 0..jobs {
        let id = store.next_job_id().await?;
        let mut job = JobRecord::queued(
            id,
            AppName::new("app")?,
            EnvName::new("bench")?,
            JobKind::Deploy,
            Vec::new(),
            None,
            "0".repeat(40),
            "bench".into(),
            0,
        );
        job.state = JobState::Succeeded;
        drop(store.put_job(&job).await?);
        let mut seq = 0;
        while seq < per_job {
            let batch: Vec<LogLine> = (seq + 1..=(seq + 512).min(per_job))
                .map(|s| LogLine {
                    seq: s,
                    timestamp_ms: 0,
                    stage: None,
                    stream: None,
                    text: text.clone(),
                    opens_stage: false,
                })
                .collect();
            seq += batch.len() as u64;
            drop(store.append_logs(id, batch).await?);
        }
    }
    store.close().await?;
    Ok(())
}
