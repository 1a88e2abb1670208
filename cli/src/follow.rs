//! `gantry logs JOB [-f]`: a job's log, printed once and in order. A
//! follower that loses the coordinator (a restart, a dropped connection)
//! reconnects and resumes after the last line it printed, so the person
//! watching a deploy sees every line exactly once.

use std::time::{Duration, Instant};

use gantry_shared::proto;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{
    commands::Client,
    output::{self, Format},
    say, tell,
};

/// How long a follower keeps trying to get the coordinator back before it
/// gives up: long enough for a restart or a standby taking over, short
/// enough that a coordinator that is gone for good is reported.
pub const RECONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// The first pause between attempts, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest pause between attempts: a restarted coordinator is found
/// within this of its coming back.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Prints job `id`'s log (following it to the job's end when `follow`) and
/// returns the job's record as it stands after the last line.
pub async fn logs(
    client: &mut Client,
    id: u64,
    follow: bool,
    format: Format,
) -> anyhow::Result<proto::Job> {
    let mut next_seq = 1;
    let mut away = Away::default();
    loop {
        match print_from(client, id, follow, format, &mut next_seq, &mut away).await {
            Ok(()) => break,
            Err(Lost::Output(e)) => return Err(e.into()),
            Err(Lost::Refused(status)) => return Err(status.into()),
            Err(Lost::Coordinator(status)) => away.wait(status, id, next_seq).await?,
        }
    }
    loop {
        match client.get_job(proto::GetJobRequest { id }).await {
            Ok(job) => return Ok(job.into_inner()),
            Err(status) if retryable(&status) => away.wait(status, id, next_seq).await?,
            Err(status) => return Err(status.into()),
        }
    }
}

/// Time without the coordinator, and the pause before the next attempt.
#[derive(Default)]
struct Away {
    /// When it was lost; `None` while it answers.
    since: Option<Instant>,
    backoff: Duration,
}

impl Away {
    /// Waits before the next attempt, or gives up past [`RECONNECT_PATIENCE`].
    async fn wait(&mut self, status: tonic::Status, id: u64, next_seq: u64) -> anyhow::Result<()> {
        let since = *self.since.get_or_insert_with(|| {
            tell!(
                "lost the coordinator ({}); reconnecting, then resuming at line {next_seq}",
                status.message()
            );
            Instant::now()
        });
        if since.elapsed() >= RECONNECT_PATIENCE {
            return Err(anyhow::Error::new(status).context(format!(
                "the coordinator did not come back within {}s; follow again with `gantry logs {id} -f`",
                RECONNECT_PATIENCE.as_secs()
            )));
        }
        self.backoff = (self.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        tokio::time::sleep(self.backoff).await;
        Ok(())
    }

    /// The coordinator answers again: the next loss gets its full patience.
    fn back(&mut self, next_seq: u64) {
        if self.since.take().is_some() {
            tell!("reconnected; resuming at line {next_seq}");
        }
        self.backoff = Duration::ZERO;
    }
}

/// Why printing stopped before the log's end.
enum Lost {
    /// Standard output failed (a closed pipe): nothing more to do.
    Output(std::io::Error),
    /// The coordinator went away; worth trying again.
    Coordinator(tonic::Status),
    /// The coordinator said no (not found, not allowed): final.
    Refused(tonic::Status),
}

/// Prints lines from `next_seq` on, advancing it past each line printed;
/// `away` learns the coordinator is back once it accepts the request.
async fn print_from(
    client: &mut Client,
    id: u64,
    follow: bool,
    format: Format,
    next_seq: &mut u64,
    away: &mut Away,
) -> Result<(), Lost> {
    let classify = |status: tonic::Status| match retryable(&status) {
        true => Lost::Coordinator(status),
        false => Lost::Refused(status),
    };
    let request = proto::StreamJobLogsRequest {
        job_id: id,
        from_seq: *next_seq,
        follow,
    };
    let mut stream = client
        .follow_job_logs(request)
        .await
        .map_err(classify)?
        .into_inner();
    away.back(*next_seq);
    while let Some(batch) = stream.next().await {
        for line in batch.map_err(classify)?.lines {
            // A resumed stream never repeats a line already printed.
            if line.seq < *next_seq {
                continue;
            }
            match format {
                Format::Json => say!("{}", output::line_json(&line)),
                Format::Table => say!("{}", output::printable(&line.text)),
            }
            .map_err(Lost::Output)?;
            *next_seq = line.seq + 1;
        }
    }
    Ok(())
}

/// Whether `status` says the coordinator is away (restarting, unreachable,
/// the connection cut) rather than refusing the request.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}
