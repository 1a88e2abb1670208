//! The fan-out figure's followers, in a process of their own: real followers
//! run on operators' machines, not beside the coordinator, so their decoding
//! must not be charged to the coordinator's process. The bench starts itself
//! again as that process (`gantry-bench --followers-process URL ...`): it
//! connects every client first, says `ready`, reads the job id from stdin,
//! follows the job, and prints `done LINES P50_US P99_US`: the fewest lines a
//! normal follower received, and the normal followers' lag (a line's send
//! time to its arrival at a follower), over every line of every one.

use std::{
    io::{BufRead, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use gantry_shared::proto;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{Api, Client};

/// The environment variables that carry the API token and the CA
/// certificate (PEM) to the followers process.
const TOKEN_VAR: &str = "GANTRY_BENCH_TOKEN";
const CA_VAR: &str = "GANTRY_BENCH_CA";

/// What the parent tells the followers process.
#[derive(clap::Args, Debug)]
pub struct FollowerArgs {
    /// Normal followers: they read as fast as they can.
    #[arg(long, default_value_t = 100)]
    pub followers: usize,
    /// Slow followers: they read a line or a run per millisecond.
    #[arg(long, default_value_t = 1)]
    pub slow: usize,
    /// Follow with `FollowJobLogs` (runs of lines) instead of `StreamJobLogs`.
    #[arg(long)]
    pub runs: bool,
    /// Run under `SCHED_IDLE`.
    #[arg(long)]
    pub idle: bool,
}

/// The followers' lag histogram: buckets of 100 µs up to 100 ms (the
/// target is 50 ms), then of 10 ms up to 100 s; longer counts as 100 s.
const FINE: u128 = 100;
const FINE_BUCKETS: usize = 1_000;
const COARSE: u128 = 10_000;
const LAG_BUCKETS: usize = FINE_BUCKETS + 10_000;

/// How many lines arrived with each lag, one per follower and merged at
/// the end: a sorted list of every lag would hold 60 million of them.
#[derive(Clone)]
struct Lags(Vec<u64>);

impl Lags {
    fn new() -> Self {
        Self(vec![0; LAG_BUCKETS])
    }

    fn add(&mut self, lag: Duration) {
        let micros = lag.as_micros();
        let fine_span = FINE * FINE_BUCKETS as u128;
        let bucket = match micros < fine_span {
            true => (micros / FINE) as usize,
            false => FINE_BUCKETS + ((micros - fine_span) / COARSE) as usize,
        };
        self.0[bucket.min(LAG_BUCKETS - 1)] += 1;
    }

    fn merge(&mut self, other: &Lags) {
        self.0.iter_mut().zip(&other.0).for_each(|(a, b)| *a += b);
    }

    /// The lag under which a fraction `p` of the lines arrived (the upper
    /// edge of its bucket).
    fn percentile(&self, p: f64) -> Duration {
        let total: u64 = self.0.iter().sum();
        let wanted = ((total as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        let mut bucket = LAG_BUCKETS - 1;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= wanted {
                bucket = i;
                break;
            }
        }
        let upper = match bucket < FINE_BUCKETS {
            true => FINE * (bucket as u128 + 1),
            false => FINE * FINE_BUCKETS as u128 + COARSE * (bucket - FINE_BUCKETS + 1) as u128,
        };
        Duration::from_micros(upper as u64)
    }
}

/// Puts this process under `SCHED_IDLE` (before its runtime starts, so that
/// its threads inherit the policy): it then takes only the CPU that the
/// coordinator and the agent leave, as followers on operators' machines do.
pub fn idle_policy() -> std::io::Result<()> {
    // SAFETY: an all-zero sched_param is valid (priority 0, which
    // SCHED_IDLE requires).
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0
    // is the calling thread.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The followers process (the child side).
pub async fn serve(url: &str, args: &FollowerArgs) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    let token = std::env::var(TOKEN_VAR).ok();
    let ca = std::env::var(CA_VAR).ok();
    for _ in 0..args.followers + args.slow {
        clients.push(gantry_cli::commands::connect_with(url, token.clone(), ca.clone()).await?);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    let job: u64 = line.trim().parse().context("the job id on stdin")?;
    let api = if args.runs { Api::Runs } else { Api::Lines };
    let mut tasks = Vec::new();
    let opened = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len() + 1));
    for (n, client) in clients.into_iter().enumerate() {
        let slow = n >= args.followers;
        tasks.push(tokio::spawn(follow(client, job, api, slow, opened.clone())));
    }
    opened.wait().await;
    println!("following");
    std::io::stdout().flush()?;
    let mut fewest = u64::MAX;
    let mut lags = Lags::new();
    for task in tasks.into_iter().take(args.followers) {
        let (count, theirs) = task.await??;
        fewest = fewest.min(count);
        lags.merge(&theirs);
    }
    let [p50, p99] = [0.5, 0.99].map(|p| lags.percentile(p).as_micros());
    println!("done {fewest} {p50} {p99}");
    std::io::stdout().flush()?;
    // The slow followers may take minutes; they held nobody up.
    std::process::exit(0);
}

/// Follows `job` to its end; returns the lines seen and their lags.
/// `opened` is waited on once the stream is open.
async fn follow(
    mut client: Client,
    job: u64,
    api: Api,
    slow: bool,
    opened: std::sync::Arc<tokio::sync::Barrier>,
) -> anyhow::Result<(u64, Lags)> {
    let request = proto::StreamJobLogsRequest {
        job_id: job,
        from_seq: 1,
        follow: true,
    };
    // Every line once, in order: each seq is the one after the last.
    let mut count = 0u64;
    let mut lags = Lags::new();
    let mut seen = |line: &proto::LogLine| {
        anyhow::ensure!(
            line.seq == count + 1,
            "line {} arrived after line {count}",
            line.seq
        );
        count += 1;
        lags.add(crate::logs::lag(line).context("a line without its send time")?);
        Ok(())
    };
    match api {
        Api::Lines => {
            let mut stream = client.stream_job_logs(request).await?.into_inner();
            opened.wait().await;
            while let Some(line) = stream.message().await? {
                seen(&line)?;
                if slow {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        Api::Runs => {
            let mut stream = client.follow_job_logs(request).await?.into_inner();
            opened.wait().await;
            while let Some(batch) = stream.message().await? {
                batch.lines.iter().try_for_each(&mut seen)?;
                if slow {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    Ok((count, lags))
}

/// The followers process as the parent sees it; killed when dropped.
pub struct Followers {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: std::io::BufReader<ChildStdout>,
}

impl Followers {
    /// Starts the process and waits until every client is connected.
    pub fn start(
        coordinator: &crate::Coordinator,
        followers: usize,
        slow: usize,
        api: Api,
        idle: bool,
    ) -> anyhow::Result<Self> {
        // The process lowers its own priority (`--idle`): setting it here,
        // between fork and exec, would make Command fork this process,
        // which hosts the coordinator, and every page the coordinator then
        // writes to would fault once, copy-on-write, during the run.
        let mut command = Command::new(std::env::current_exe()?);
        if idle {
            command.arg("--idle");
        }
        if let Some((token, ca)) = &coordinator.trust {
            command.env(TOKEN_VAR, token).env(CA_VAR, ca);
        }
        command
            .arg("--followers-process")
            .arg(&coordinator.url)
            .arg("--followers")
            .arg(followers.to_string())
            .arg("--slow")
            .arg(slow.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if api == Api::Runs {
            command.arg("--runs");
        }
        let mut child = command.spawn().context("starting the followers process")?;
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().context("followers' stdout")?);
        let mut followers = Self {
            child,
            stdin,
            stdout,
        };
        let ready = followers.read_line()?;
        anyhow::ensure!(ready == "ready", "the followers process said {ready:?}");
        Ok(followers)
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        anyhow::ensure!(!line.is_empty(), "the followers process ended early");
        Ok(line.trim().to_owned())
    }

    /// Starts following `job`; returns once every follower's stream is open.
    pub fn follow(&mut self, job: u64) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("followers already told")?;
        writeln!(stdin, "{job}")?;
        stdin.flush()?;
        let said = tokio::task::block_in_place(|| self.read_line())?;
        anyhow::ensure!(said == "following", "the followers process said {said:?}");
        Ok(())
    }

    /// Waits for the normal followers: (fewest lines seen, lag p50, p99).
    pub fn finish(mut self) -> anyhow::Result<(u64, Duration, Duration)> {
        let line = tokio::task::block_in_place(|| self.read_line())?;
        let mut words = line.split(' ');
        anyhow::ensure!(words.next() == Some("done"), "the followers said {line:?}");
        let count = words.next().context("no count")?.parse()?;
        let mut lag = || -> anyhow::Result<Duration> {
            Ok(Duration::from_micros(
                words.next().context("no lag")?.parse()?,
            ))
        };
        let (p50, p99) = (lag()?, lag()?);
        Ok((count, p50, p99))
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one fan-out run measured.
pub struct FanOut {
    /// Lines per second the coordinator took in (the producer's first line
    /// sent to the job's end stored).
    pub producer: f64,
    /// The normal followers' lag over every line, p50 and p99 (zero when
    /// none follow).
    pub p50: Duration,
    pub p99: Duration,
}

/// One job of `lines` lines, `per_sec` a second, followed by `followers`
/// clients and one slow one in a process of their own (none when
/// `followers` is 0). The coordinator runs with TLS, as a fleet's does.
/// Fails if a follower misses a line or sees one out of order.
pub async fn fan_out(
    lines: u64,
    per_sec: u64,
    followers: usize,
    api: Api,
    idle: bool,
) -> anyhow::Result<FanOut> {
    let coordinator = crate::Coordinator::start_with(true).await?;
    let mut process = match followers {
        0 => None,
        n => Some(tokio::task::block_in_place(|| {
            Followers::start(&coordinator, n, 1, api, idle)
        })?),
    };
    // The followers are following before the first line: the figure is
    // live lag, not a late joiner's catch-up.
    let mut producer = crate::Producer::start(&coordinator, lines, per_sec, true).await?;
    if let Some(process) = &mut process {
        process.follow(producer.job)?;
    }
    producer.release();
    let ended = producer.ended().await?;
    let producer_rate = lines as f64 / (ended - producer.start).as_secs_f64();
    let (p50, p99) = match process {
        None => (Duration::ZERO, Duration::ZERO),
        Some(process) => {
            let (count, p50, p99) = process.finish()?;
            anyhow::ensure!(count == lines, "a follower saw {count} of {lines} lines");
            (p50, p99)
        }
    };
    producer.stop();
    coordinator.stop().await?;
    Ok(FanOut {
        producer: producer_rate,
        p50,
        p99,
    })
}
