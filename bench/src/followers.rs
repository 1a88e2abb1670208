//! The fan-out figure's followers, in a process of their own: real followers
//! run on operators' machines, not beside the coordinator, so their decoding
//! must not be charged to the coordinator's process. The bench starts itself
//! again as that process (`gantry-bench --followers-process URL ...`): it
//! connects every client first, says `ready`, reads the job id from stdin,
//! follows the job, and prints `done LINES UNIX_MICROS`: the fewest lines a
//! normal follower received and when the last of them had them all.

use std::{
    io::{BufRead, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
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

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
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
    for (n, client) in clients.into_iter().enumerate() {
        let slow = n >= args.followers;
        tasks.push(tokio::spawn(follow(client, job, api, slow)));
    }
    let mut fewest = u64::MAX;
    let mut last = 0;
    for task in tasks.into_iter().take(args.followers) {
        let (count, done) = task.await??;
        fewest = fewest.min(count);
        last = last.max(done);
    }
    println!("done {fewest} {last}");
    std::io::stdout().flush()?;
    // The slow followers may take minutes; they held nobody up.
    std::process::exit(0);
}

/// Follows `job` to its end; returns the lines seen and when, in Unix µs.
async fn follow(mut client: Client, job: u64, api: Api, slow: bool) -> anyhow::Result<(u64, u128)> {
    let request = proto::StreamJobLogsRequest {
        job_id: job,
        from_seq: 1,
        follow: true,
    };
    // Every line once, in order: each seq is the one after the last.
    let mut count = 0u64;
    let mut seen = |line: &proto::LogLine| {
        anyhow::ensure!(
            line.seq == count + 1,
            "line {} arrived after line {count}",
            line.seq
        );
        count += 1;
        Ok(())
    };
    match api {
        Api::Lines => {
            let mut stream = client.stream_job_logs(request).await?.into_inner();
            while let Some(line) = stream.message().await? {
                seen(&line)?;
                if slow {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        Api::Runs => {
            let mut stream = client.follow_job_logs(request).await?.into_inner();
            while let Some(batch) = stream.message().await? {
                batch.lines.iter().try_for_each(&mut seen)?;
                if slow {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    Ok((count, unix_micros()))
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

    /// Starts following `job`.
    pub fn follow(&mut self, job: u64) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("followers already told")?;
        writeln!(stdin, "{job}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the normal followers: (fewest lines seen, when the last one
    /// had them all).
    pub fn finish(mut self) -> anyhow::Result<(u64, SystemTime)> {
        let line = tokio::task::block_in_place(|| self.read_line())?;
        let mut words = line.split(' ');
        anyhow::ensure!(words.next() == Some("done"), "the followers said {line:?}");
        let count = words.next().context("no count")?.parse()?;
        let micros: u64 = words.next().context("no time")?.parse()?;
        Ok((count, UNIX_EPOCH + Duration::from_micros(micros)))
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
    /// Lines per second at the slowest normal follower.
    pub slowest: f64,
}

/// One job of `lines` lines, as fast as the agent sends them, followed by
/// `followers` clients and one slow one in a process of their own (none when
/// `followers` is 0). The coordinator runs with TLS, as a fleet's does, so
/// agents' and operators' connections take their own lanes.
pub async fn fan_out(lines: u64, followers: usize, api: Api, idle: bool) -> anyhow::Result<FanOut> {
    let coordinator = crate::Coordinator::start_with(true).await?;
    let mut process = match followers {
        0 => None,
        n => Some(tokio::task::block_in_place(|| {
            Followers::start(&coordinator, n, 1, api, idle)
        })?),
    };
    let producer =
        crate::Producer::start(&coordinator, lines, 0, std::time::Instant::now()).await?;
    let start = SystemTime::now() - producer.start.elapsed();
    if let Some(process) = &mut process {
        process.follow(producer.job)?;
    }
    let ended = producer.ended().await?;
    let producer_rate = lines as f64 / (ended - producer.start).as_secs_f64();
    let slowest = match process {
        None => producer_rate,
        Some(process) => {
            let (count, done) = process.finish()?;
            anyhow::ensure!(count == lines, "a follower saw {count} of {lines} lines");
            lines as f64 / done.duration_since(start)?.as_secs_f64()
        }
    };
    producer.stop();
    coordinator.stop().await?;
    Ok(FanOut {
        producer: producer_rate,
        slowest,
    })
}
