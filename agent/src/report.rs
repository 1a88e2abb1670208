//! What a running job tells the coordinator: its log, numbered in the job's
//! one sequence. A stage change is the line that opens the stage, and the
//! job's end rides its summary line. Lines go into the agent's spool,
//! which the connection drains; when the coordinator is away the spool
//! fills and the job waits (back-pressure) instead of dropping lines.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use gantry_shared::{
    limits::{cap_log_line, cap_text, MAX_FIELD_BYTES, MAX_SUMMARY_BYTES},
    messages::{Finished, LogLine},
    now_ms, JobId, JobState, Redactor, Stage,
};

use crate::spool::Spool;

/// Lines kept for a failure summary: enough to show a compiler error or a
/// stack trace's head, short enough to read in `gantry job`.
pub const SUMMARY_LINES: usize = 20;

/// Which output a line came from.
pub use gantry_shared::messages::LogStream as Stream;

/// A job's reporter; cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    job: JobId,
    spool: Spool,
    stage: Arc<Mutex<Option<Stage>>>,
    /// The job's secrets, replaced by `***` in every line and summary.
    redactor: Redactor,
}

impl Reporter {
    /// A reporter for `job` writing into `spool`; its lines are numbered
    /// on from the last one the spool holds for the job (a restarted agent
    /// continues the log, it does not start it again).
    pub fn new(job: JobId, spool: Spool) -> Self {
        Self::starting_at(job, spool, 1)
    }

    /// A reporter whose first log line is `first_seq` at the earliest: a
    /// job rolled over several servers has one log, which each continues.
    pub fn starting_at(job: JobId, spool: Spool, first_seq: u64) -> Self {
        if let Err(e) = spool.begin(job, first_seq) {
            tracing::error!(job = %job, error = %e, "cannot write to the spool");
        }
        Self {
            job,
            spool,
            stage: Arc::new(Mutex::new(None)),
            redactor: Redactor::default(),
        }
    }

    /// The same reporter, replacing `redactor`'s secrets in what it sends.
    pub fn redacting(self, redactor: Redactor) -> Self {
        Self { redactor, ..self }
    }

    /// Spools a line of the job's log (numbered by the spool, in the order
    /// lines are spooled), ending the job's part here if `finished`.
    async fn send(
        &self,
        stream: Stream,
        text: String,
        opens_stage: bool,
        finished: Option<Finished>,
    ) {
        let line = LogLine {
            seq: 0,
            timestamp_ms: now_ms(),
            stage: *self.stage.lock().expect("stage lock"),
            stream: Some(stream),
            text: cap_log_line(self.redactor.redact(text)),
            opens_stage,
        };
        if let Err(e) = self.spool.push(self.job, line, finished).await {
            tracing::error!(job = %self.job, error = %e, "cannot write to the spool; the line is lost");
        }
    }

    /// Enters a new stage, with the line that says so.
    pub async fn stage(&self, stage: Stage) {
        *self.stage.lock().expect("stage lock") = Some(stage);
        let text = format!("==> {}", stage.as_str());
        self.send(Stream::System, text, true, None).await;
    }

    /// Sends one line of output.
    pub async fn line(&self, stream: Stream, text: impl Into<String>) {
        self.send(stream, text.into(), false, None).await;
    }

    /// Sends a line written by Gantry itself.
    pub async fn system(&self, text: impl Into<String>) {
        self.line(Stream::System, text).await;
    }

    /// Ends the job; nothing may follow.
    pub async fn finish(&self, state: JobState, summary: String, deployed: Option<Deployed>) {
        let deployed = deployed.unwrap_or_default();
        let summary = cap_text(self.redactor.redact(summary), MAX_SUMMARY_BYTES);
        let text = format!("==> {}: {summary}", state.as_str());
        // Capped so the event always fits a message (see `crate::batch`).
        let done = Finished {
            state,
            summary,
            url: cap_text(deployed.url, MAX_FIELD_BYTES),
            image: cap_text(deployed.image, MAX_FIELD_BYTES),
            container: cap_text(deployed.container, MAX_FIELD_BYTES),
        };
        self.send(Stream::System, text, false, Some(done)).await;
    }
}

/// What a successful deploy left running.
#[derive(Debug, Default, Clone)]
pub struct Deployed {
    /// Where it answers.
    pub url: String,
    /// Its image.
    pub image: String,
    /// Its container.
    pub container: String,
}

/// The last lines of some output, for a failure summary.
#[derive(Debug, Default)]
pub struct Tail(VecDeque<String>);

impl Tail {
    /// Remembers `line`, forgetting the oldest beyond [`SUMMARY_LINES`].
    pub fn push(&mut self, line: &str) {
        if self.0.len() == SUMMARY_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line.to_owned());
    }

    /// The lines kept, one per line.
    pub fn joined(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}
