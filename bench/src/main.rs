//! `gantry-bench [--quick]`: starts the real coordinator in this process and
//! drives it with simulated agents and clients over loopback gRPC, then
//! prints each figure with the machine it ran on. `--quick` runs small sizes
//! so CI keeps the suite from rotting; docs/PERFORMANCE.md records full runs.

mod bare;
mod coordinator;
mod deploy;
mod followers;
mod logs;
mod process;
mod sim;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use coordinator::Coordinator;
use gantry_shared::proto;
use logs::{logs, Api, Producer};
use sim::{Arrivals, Work};

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
    /// Internal: follow a job from a process of their own, for the fan-out
    /// figure, at the coordinator at this URL.
    #[arg(long, hide = true)]
    followers_process: Option<String>,
    #[command(flatten)]
    follower_args: followers::FollowerArgs,
    /// Run only these figures (1-7, as numbered in docs/PERFORMANCE.md).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=7))]
    figure: Vec<u8>,
    /// Runs of each fan-out series (figure 4) instead of the size's own.
    #[arg(long)]
    repeats: Option<usize>,
    /// Followers in the fan-out figure instead of the size's own (to find
    /// how many a machine keeps up with).
    #[arg(long)]
    fan_followers: Option<usize>,
}

type Client = gantry_cli::commands::Client;

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

/// Waits, polling every `every`, until `job` has succeeded; returns when
/// that was seen.
async fn succeeded(client: &mut Client, job: u64, every: Duration) -> anyhow::Result<Instant> {
    loop {
        let state = client
            .get_job(proto::GetJobRequest { id: job })
            .await?
            .into_inner()
            .state;
        if state == proto::JobState::Succeeded as i32 {
            return Ok(Instant::now());
        }
        tokio::time::sleep(every).await;
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
    let mut sims = Vec::new();
    let mut client = coordinator.client().await?;
    // Connect in waves: a thousand simultaneous handshakes overflow the
    // listen backlog on a small machine, which measures nothing useful.
    // One agent serves the deployed environment; the rest are the fleet of
    // other environments (a deploy rolls over every server of its own).
    for i in 0..agents {
        let arrivals = arrivals.clone();
        let name = format!("sim-{i}");
        let env = if i == 0 { "bench" } else { "idle" };
        sims.push(tokio::spawn(sim::agent(
            coordinator.agent_endpoint(env, &name).await?,
            env,
            name,
            Work::Nothing,
            arrivals,
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
        succeeded(&mut client, job.id, Duration::from_micros(200)).await?;
    }
    latencies.sort();
    coordinator.stop().await?;
    for sim in sims {
        sim.abort();
    }
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
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

/// The sizes of one run of the suite.
struct Sizes {
    agents: Vec<usize>,
    deploys: usize,
    lines: u64,
    tail_lines: u64,
    fan: usize,
    fan_lines: u64,
    fan_rate: u64,
    fan_repeats: usize,
    fleet: usize,
    window: u64,
    jobs: u64,
    stored: u64,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                agents: vec![1, 10],
                deploys: 50,
                lines: 20_000,
                tail_lines: 2_000,
                fan: 10,
                fan_lines: 5_000,
                fan_rate: 200_000,
                fan_repeats: 1,
                fleet: 100,
                window: 2,
                jobs: 100,
                stored: 100_000,
            }
        } else {
            Self {
                agents: vec![1, 100, 1000],
                deploys: 500,
                lines: 1_000_000,
                tail_lines: 50_000,
                fan: 100,
                fan_lines: 600_000,
                fan_rate: 200_000,
                fan_repeats: 5,
                fleet: 1000,
                window: 10,
                jobs: 10_000,
                stored: 10_000_000,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.followers_process.is_some() && args.follower_args.idle {
        // Before the runtime starts, so that its threads inherit the policy.
        followers::idle_policy().context("SCHED_IDLE for the followers")?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(config) = args.coordinator_process {
        return process::serve(&config).await;
    }
    if let Some(url) = &args.followers_process {
        return followers::serve(url, &args.follower_args).await;
    }
    let mut sizes = Sizes::new(args.quick);
    if let Some(repeats) = args.repeats {
        sizes.fan_repeats = repeats.max(1);
    }
    if let Some(followers) = args.fan_followers {
        sizes.fan = followers.max(1);
    }
    println!("machine: {}", machine());
    let wanted = |figure: u8| args.figure.is_empty() || args.figure.contains(&figure);
    if wanted(1) {
        figure_dispatch(&sizes).await?;
    }
    if wanted(2) {
        figure_throughput(&sizes).await?;
    }
    if wanted(3) {
        figure_tail(&sizes).await?;
    }
    if wanted(4) {
        figure_fan_out(&sizes).await?;
    }
    if wanted(5) {
        figure_fleet(&sizes).await?;
    }
    if wanted(7) {
        figure_deploy().await?;
    }
    if wanted(6) {
        figure_restart(&sizes).await?;
    }
    Ok(())
}

async fn figure_dispatch(sizes: &Sizes) -> anyhow::Result<()> {
    for &agents in &sizes.agents {
        let (p50, p99) = dispatch(agents, sizes.deploys).await.context("dispatch")?;
        println!(
            "dispatch latency, {agents:>4} agents: p50 {}  p99 {}  (target p99 < 5 ms)",
            ms(p50),
            ms(p99)
        );
    }
    Ok(())
}

async fn figure_throughput(sizes: &Sizes) -> anyhow::Result<()> {
    let lines = sizes.lines;
    let bare = bare::throughput(lines).await.context("bare stream")?;
    for (api, name) in [(Api::Lines, "StreamJobLogs"), (Api::Runs, "FollowJobLogs")] {
        let run = logs(lines, 0, api).await.context("log throughput")?;
        println!(
            "log throughput, {lines} lines of 100 B, persisted, 1 follower on {name}: {:.0} lines/s; bare tonic stream: {bare:.0} lines/s; ratio {:.2} (targets >= 500000 lines/s and >= 0.5)",
            run.rate,
            run.rate / bare
        );
    }
    Ok(())
}

async fn figure_tail(sizes: &Sizes) -> anyhow::Result<()> {
    let run = logs(sizes.tail_lines, 10_000, Api::Lines)
        .await
        .context("live tail")?;
    println!(
        "live-tail latency at 10000 lines/s: p50 {}  p99 {}  (target p99 < 20 ms)",
        ms(run.p50),
        ms(run.p99)
    );
    Ok(())
}

async fn figure_fan_out(sizes: &Sizes) -> anyhow::Result<()> {
    let (fan, lines, rate) = (sizes.fan, sizes.fan_lines, sizes.fan_rate);
    // Real followers run on operators' machines; on this one their process
    // runs under SCHED_IDLE, taking only the CPU the coordinator and the
    // agent leave. The last series lets them compete at normal priority, as
    // if operators tailed from the coordinator's own machine.
    let series = [
        (Api::Lines, "StreamJobLogs", true),
        (Api::Runs, "FollowJobLogs", true),
        (
            Api::Runs,
            "FollowJobLogs, followers at normal priority (their decoding competes for this machine's cores)",
            false,
        ),
    ];
    // A run of a few seconds is at the mercy of the machine's noise:
    // repeat, interleaved, and compare medians.
    let mut alone = Vec::new();
    let mut fanned = series.map(|_| Vec::new());
    for _ in 0..sizes.fan_repeats {
        let run = followers::fan_out(lines, rate, 0, Api::Runs, true)
            .await
            .context("fan-out baseline")?;
        alone.push(run.producer);
        for (runs, (api, name, idle)) in fanned.iter_mut().zip(series) {
            let run = followers::fan_out(lines, rate, fan, api, idle)
                .await
                .context("fan-out")?;
            // Each run as it ends: a series takes minutes on a busy machine.
            println!(
                "  fan-out run, {name}: producer {:.0} lines/s (alone {:.0}); lag p50 {:.1} ms, p99 {:.1} ms",
                run.producer,
                alone.last().copied().unwrap_or(0.0),
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
            );
            runs.push(run);
        }
    }
    let alone = median(alone);
    for (runs, (_, name, _)) in fanned.into_iter().zip(series) {
        let rates: Vec<f64> = runs.iter().map(|r| r.producer).collect();
        let (low, high) = rates
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let producer = median(rates);
        let p99s: Vec<f64> = runs.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect();
        let p99_range = p99s
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let p50 = median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect());
        println!(
            "fan-out, {lines} lines at {rate} lines/s to {fan} followers on {name} and 1 slow one (TLS, median of {}): every line once and in order; producer {producer:.0} lines/s vs {alone:.0} with none: {:.1}% (runs: {:.1}-{:.1}%; target >= 95%); followers' lag p50 {p50:.1} ms, p99 {:.1} ms (runs: {:.1}-{:.1} ms; target p99 < 50 ms)",
            sizes.fan_repeats,
            producer / alone * 100.0,
            low / alone * 100.0,
            high / alone * 100.0,
            median(p99s),
            p99_range.0,
            p99_range.1,
        );
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

async fn figure_fleet(sizes: &Sizes) -> anyhow::Result<()> {
    let (fleet, window) = (sizes.fleet, sizes.window);
    let (rss, cpu) = process::idle_fleet(fleet, Duration::from_secs(window))
        .await
        .context("idle fleet")?;
    println!(
        "fleet, {fleet} idle agents connected: coordinator RSS {rss:.1} MiB, CPU {cpu:.2}% of one core over {window} s (targets < 150 MiB, < 2%)"
    );
    Ok(())
}

async fn figure_deploy() -> anyhow::Result<()> {
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
    Ok(())
}

async fn figure_restart(sizes: &Sizes) -> anyhow::Result<()> {
    let (jobs, stored) = (sizes.jobs, sizes.stored);
    let took = process::restart(jobs, stored).await.context("restart")?;
    println!(
        "restart over {jobs} jobs and {stored} log lines: serving after {} (target < 1 s)",
        ms(took)
    );
    Ok(())
}
