//! Log runs: a simulated agent producing one job's log ([`Producer`]), and
//! one follower in this process measuring its rate and latency ([`logs`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use gantry_shared::proto;

use crate::{
    connected, percentile,
    sim::{self, Arrivals, Work},
    Coordinator,
};

/// What one log run with one follower measured.
pub struct LogRun {
    /// Lines per second at the follower (the producer's first line sent to
    /// the follower's last line received).
    pub rate: f64,
    /// Emit-to-receive latency at the follower, p50 and p99.
    pub p50: Duration,
    pub p99: Duration,
}

/// How followers read: `StreamJobLogs` (a message per line) or
/// `FollowJobLogs` (a message per run of lines).
#[derive(Clone, Copy, PartialEq)]
pub enum Api {
    Lines,
    Runs,
}

/// A simulated agent producing one job's log.
pub struct Producer {
    pub job: u64,
    /// When the agent received the job (or, held, was let go).
    pub start: Instant,
    arrivals: Arc<Arrivals>,
    sim: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Producer {
    /// Connects a simulated agent and deploys a job that prints `lines`
    /// lines of 100 bytes, `per_sec` a second (0: as fast as it can); with
    /// `held`, only once [`Producer::release`] is called.
    pub async fn start(
        coordinator: &Coordinator,
        lines: u64,
        per_sec: u64,
        held: bool,
    ) -> anyhow::Result<Self> {
        let arrivals = Arc::new(Arrivals::default());
        let work = Work::Lines {
            lines,
            bytes: 100,
            per_sec,
            held,
        };
        let sim = tokio::spawn(sim::agent(
            coordinator.agent_endpoint("bench", "sim-0").await?,
            "bench",
            "sim-0".into(),
            work,
            arrivals.clone(),
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
        Ok(Self {
            job,
            start,
            arrivals,
            sim,
        })
    }

    /// When the coordinator told the agent the job's end was stored (then
    /// every line is).
    pub async fn ended(&self) -> anyhow::Result<Instant> {
        tokio::time::timeout(Duration::from_secs(600), self.arrivals.stored(self.job))
            .await
            .map_err(|_| anyhow::anyhow!("job {} did not end within 10 minutes", self.job))
    }

    /// Lets a held job send its lines; its start is then.
    pub fn release(&mut self) {
        self.start = self.arrivals.release(self.job);
    }

    pub fn stop(self) {
        self.sim.abort();
    }
}

/// How long ago `line` was sent: its text starts with its send time, in µs
/// since the Unix epoch.
pub fn lag(line: &proto::LogLine) -> Option<Duration> {
    let sent: u128 = line.text.split(' ').next()?.parse().ok()?;
    Some(Duration::from_micros(
        sim::unix_micros().saturating_sub(sent) as u64,
    ))
}

/// One job streaming `lines` lines through the coordinator, `per_sec` a
/// second (0: as fast as the agent can), to one follower in this process.
pub async fn logs(lines: u64, per_sec: u64, api: Api) -> anyhow::Result<LogRun> {
    let coordinator = Coordinator::start().await?;
    let mut client = coordinator.client().await?;
    let producer = Producer::start(&coordinator, lines, per_sec, false).await?;
    let request = proto::StreamJobLogsRequest {
        job_id: producer.job,
        from_seq: 1,
        follow: true,
    };
    let mut latencies = Vec::new();
    let mut count = 0u64;
    let mut seen = |line: &proto::LogLine| {
        count += 1;
        if let Some(lag) = lag(line) {
            latencies.push(lag);
        }
    };
    match api {
        Api::Lines => {
            let mut stream = client.stream_job_logs(request).await?.into_inner();
            while let Some(line) = stream.message().await? {
                seen(&line);
            }
        }
        Api::Runs => {
            let mut stream = client.follow_job_logs(request).await?.into_inner();
            while let Some(batch) = stream.message().await? {
                batch.lines.iter().for_each(&mut seen);
            }
        }
    }
    let done = Instant::now();
    anyhow::ensure!(count >= lines, "the follower saw {count} of {lines} lines");
    latencies.sort();
    let (start, _) = (producer.start, producer.stop());
    coordinator.stop().await?;
    Ok(LogRun {
        rate: lines as f64 / (done - start).as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    })
}
