//! `gantry-bench [--quick]`: starts the real coordinator in this process and
//! drives it with simulated agents and clients over loopback gRPC, then
//! prints each figure with the machine it ran on. `--quick` runs small sizes
//! so CI keeps the suite from rotting; docs/PERFORMANCE.md records full runs.

mod bare;
mod deploy;
mod process;
mod sim;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use gantry_shared::{config::CoordinatorConfig, proto};
use sim::{Arrivals, Work};
use tokio_util::sync::CancellationToken;

/// Gantry's benchmark suite.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// Small sizes, for CI.
    #[arg(long)]
    quick: bool,
    /// Internal: run a coordinator with this config (the bench starts
    /// itself this way for the figures that measure a coordinator process).
    #[arg(long, hide = true)]
    coordinator_process: Option<std::path::PathBuf>,
}

type Client = proto::operator_service_client::OperatorServiceClient<tonic::transport::Channel>;

/// A coordinator serving on loopback over a scratch data dir.
struct Coordinator {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Coordinator {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let repo = dir.path().join("repo");
        empty_repo(&repo)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let text = format!(
            "plaintext = true\nlisten = \"{}\"\n[[environments]]\nname = \"bench\"\n[[environments]]\nname = \"idle\"\n[[apps]]\nname = \"app\"\nremote = \"{}\"\n\
             build_command = \"true\"\nartifact = \"a.jar\"\nbase_image = \"none\"\ncontainer_port = 80\n",
            listener.local_addr()?,
            repo.display()
        );
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text)?;
        let config = CoordinatorConfig::load(&path)?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gantry_coordinator::serve(
            config,
            listener,
            shutdown.clone(),
        ));
        Ok(Self {
            url,
            shutdown,
            task,
            _dir: dir,
        })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.url.clone()).await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }
}

/// A repository with one empty commit on `main`: the bench app's remote.
fn empty_repo(path: &std::path::Path) -> anyhow::Result<()> {
    let git = git2::Repository::init_opts(
        path,
        git2::RepositoryInitOptions::new().initial_head("main"),
    )?;
    let tree = git.find_tree(git.index()?.write_tree()?)?;
    let sig = git2::Signature::now("bench", "bench@example.com")?;
    git.commit(Some("HEAD"), &sig, &sig, "empty", &tree, &[])?;
    Ok(())
}

/// Waits until `n` agents are connected.
async fn connected(client: &mut Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = client
            .list_agents(proto::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        let up = list.iter().filter(|a| a.connected).count();
        if up == n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {up} of {n} simulated agents connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Deploy accepted -> assignment received by an agent, with `agents` connected.
async fn dispatch(agents: usize, deploys: usize) -> anyhow::Result<(Duration, Duration)> {
    let coordinator = Coordinator::start().await?;
    let arrivals = Arc::new(Arrivals::default());
    let epoch = Instant::now();
    let mut sims = Vec::new();
    let mut client = coordinator.client().await?;
    // Connect in waves: a thousand simultaneous handshakes overflow the
    // listen backlog on a small machine, which measures nothing useful.
    // One agent serves the deployed environment; the rest are the fleet of
    // other environments (a deploy rolls over every server of its own).
    for i in 0..agents {
        let (url, arrivals) = (coordinator.url.clone(), arrivals.clone());
        let name = format!("sim-{i}");
        sims.push(tokio::spawn(sim::agent(
            url,
            if i == 0 { "bench" } else { "idle" },
            name,
            Work::Nothing,
            arrivals,
            epoch,
        )));
        if (i + 1) % 50 == 0 || i + 1 == agents {
            connected(&mut client, i + 1).await?;
        }
    }
    let mut latencies = Vec::with_capacity(deploys);
    for _ in 0..deploys {
        let request = proto::DeployRequest {
            app: "app".into(),
            env: "bench".into(),
            branch: "main".into(),
            ..Default::default()
        };
        let sent = Instant::now();
        let job = client.deploy(request).await?.into_inner();
        let arrived = arrivals.wait(job.id).await;
        latencies.push(arrived - sent);
        // The simulated agent finishes at once; wait for it so the next deploy is not queued behind it.
        loop {
            let state = client
                .get_job(proto::GetJobRequest { id: job.id })
                .await?
                .into_inner()
                .state;
            if state == proto::JobState::Succeeded as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    latencies.sort();
    coordinator.stop().await?;
    for sim in sims {
        sim.abort();
    }
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
}

/// What one log run measured.
struct LogRun {
    /// Lines per second the coordinator took in from the producer (first
    /// line sent to the job's end stored).
    producer: f64,
    /// Lines per second at the slowest (normal) follower.
    slowest: f64,
    /// Emit-to-receive latency at the followers, p50 and p99.
    p50: Duration,
    p99: Duration,
}

/// One job streaming `lines` lines through the coordinator to `followers`
/// clients, plus `slow` followers that read a line per millisecond.
/// How followers read: `StreamJobLogs` (a message per line) or
/// `FollowJobLogs` (a message per run of lines).
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Lines,
    Runs,
}

async fn logs(
    lines: u64,
    per_sec: u64,
    followers: usize,
    slow: usize,
    api: Api,
) -> anyhow::Result<LogRun> {
    let coordinator = Coordinator::start().await?;
    let arrivals = Arc::new(Arrivals::default());
    let epoch = Instant::now();
    let work = Work::Lines {
        lines,
        bytes: 100,
        per_sec,
    };
    let sim = tokio::spawn(sim::agent(
        coordinator.url.clone(),
        "bench",
        "sim-0".into(),
        work,
        arrivals.clone(),
        epoch,
    ));
    let mut client = coordinator.client().await?;
    connected(&mut client, 1).await?;
    let request = proto::DeployRequest {
        app: "app".into(),
        env: "bench".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let job = client.deploy(request).await?.into_inner().id;
    let start = arrivals.wait(job).await;
    let mut tasks = Vec::new();
    for n in 0..followers + slow {
        let mut client = coordinator.client().await?;
        let slow = n >= followers;
        tasks.push(tokio::spawn(async move {
            let request = proto::StreamJobLogsRequest {
                job_id: job,
                from_seq: 1,
                follow: true,
            };
            let mut latencies = Vec::new();
            let mut count = 0u64;
            let seen = |line: &proto::LogLine, latencies: &mut Vec<Duration>| {
                if let Some(sent) = line
                    .text
                    .split(' ')
                    .next()
                    .and_then(|t| t.parse::<u128>().ok())
                {
                    latencies.push(Duration::from_micros(
                        (epoch.elapsed().as_micros() - sent) as u64,
                    ));
                }
            };
            match api {
                Api::Lines => {
                    let mut stream = client.stream_job_logs(request).await?.into_inner();
                    while let Some(line) = stream.message().await? {
                        count += 1;
                        if slow {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                        seen(&line, &mut latencies);
                    }
                }
                Api::Runs => {
                    let mut stream = client.follow_job_logs(request).await?.into_inner();
                    while let Some(batch) = stream.message().await? {
                        count += batch.lines.len() as u64;
                        if slow {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                        for line in &batch.lines {
                            seen(line, &mut latencies);
                        }
                    }
                }
            }
            anyhow::Ok((count, Instant::now(), latencies))
        }));
    }
    // The producer's side: when the job's end is stored, every line is.
    let ended = loop {
        let state = client
            .get_job(proto::GetJobRequest { id: job })
            .await?
            .into_inner()
            .state;
        if state == proto::JobState::Succeeded as i32 {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let mut slowest = start;
    let mut all = Vec::new();
    for (n, task) in tasks.into_iter().enumerate() {
        if n >= followers {
            // A slow reader may take minutes; it must not have held anyone up.
            task.abort();
            continue;
        }
        let (count, done, latencies) = task.await??;
        anyhow::ensure!(count >= lines, "a follower saw {count} of {lines} lines");
        slowest = slowest.max(done);
        all.extend(latencies);
    }
    all.sort();
    sim.abort();
    coordinator.stop().await?;
    let p = |q| {
        if all.is_empty() {
            Duration::ZERO
        } else {
            percentile(&all, q)
        }
    };
    Ok(LogRun {
        producer: lines as f64 / (ended - start).as_secs_f64(),
        slowest: lines as f64 / (slowest - start).as_secs_f64(),
        p50: p(0.5),
        p99: p(0.99),
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!(
        "{cpu}, {cores} cores, {mem} GiB; {} build",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(config) = args.coordinator_process {
        return process::serve(&config).await;
    }
    let (sizes, lines, tail_lines, fan, fan_lines) = if args.quick {
        (vec![1, 10], 20_000, 2_000, 10, 5_000)
    } else {
        (vec![1, 100, 1000], 1_000_000, 50_000, 100, 100_000)
    };
    println!("machine: {}", machine());

    for agents in sizes {
        let (p50, p99) = dispatch(agents, if args.quick { 50 } else { 500 })
            .await
            .context("dispatch")?;
        println!(
            "dispatch latency, {agents:>4} agents: p50 {}  p99 {}  (target p99 < 5 ms)",
            ms(p50),
            ms(p99)
        );
    }

    let bare = bare::throughput(lines).await.context("bare stream")?;
    for (api, name) in [(Api::Lines, "StreamJobLogs"), (Api::Runs, "FollowJobLogs")] {
        let run = logs(lines, 0, 1, 0, api).await.context("log throughput")?;
        println!(
            "log throughput, {lines} lines of 100 B, persisted, 1 follower on {name}: {:.0} lines/s; bare tonic stream: {bare:.0} lines/s; ratio {:.2} (targets >= 500000 lines/s and >= 0.5)",
            run.slowest,
            run.slowest / bare
        );
    }

    let run = logs(tail_lines, 10_000, 1, 0, Api::Lines)
        .await
        .context("live tail")?;
    println!(
        "live-tail latency at 10000 lines/s: p50 {}  p99 {}  (target p99 < 20 ms)",
        ms(run.p50),
        ms(run.p99)
    );

    let alone = logs(fan_lines, 0, 0, 0, Api::Runs)
        .await
        .context("fan-out baseline")?;
    for (api, name) in [(Api::Lines, "StreamJobLogs"), (Api::Runs, "FollowJobLogs")] {
        let fanned = logs(fan_lines, 0, fan, 1, api).await.context("fan-out")?;
        println!(
            "fan-out, {fan_lines} lines to {fan} followers on {name} and 1 slow one: producer {:.0} lines/s vs {:.0} with none: {:.0}% (target >= 80%); slowest normal follower {:.0} lines/s",
            fanned.producer,
            alone.producer,
            fanned.producer / alone.producer * 100.0,
            fanned.slowest
        );
    }

    let (fleet, window) = if args.quick { (100, 2) } else { (1000, 10) };
    let (rss, cpu) = process::idle_fleet(fleet, Duration::from_secs(window))
        .await
        .context("idle fleet")?;
    println!(
        "fleet, {fleet} idle agents connected: coordinator RSS {rss:.1} MiB, CPU {cpu:.2}% of one core over {window} s (targets < 150 MiB, < 2%)"
    );

    let (first, second) = deploy::overhead().await.context("deploy overhead")?;
    for (which, run) in [("first", &first), ("second", &second)] {
        println!(
            "deploy overhead, sample app, {which} deploy: {} in all, {} of it the app's own work (build, image, start, health, old one's stop): Gantry's share {} (target < 500 ms); fetched {} objects",
            ms(run.total),
            ms(run.own_work),
            ms(run.total.saturating_sub(run.own_work)),
            run.fetched
        );
    }

    let (jobs, stored) = if args.quick {
        (100, 100_000)
    } else {
        (10_000, 10_000_000)
    };
    let took = process::restart(jobs, stored).await.context("restart")?;
    println!(
        "restart over {jobs} jobs and {stored} log lines: serving after {} (target < 1 s)",
        ms(took)
    );
    Ok(())
}
