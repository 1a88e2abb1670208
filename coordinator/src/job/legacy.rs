//! Job records written before the job machine kept no `life`: their phase
//! is read from the side fields they had (`step`, `putting_back`,
//! `cancel_requested`), so a coordinator upgraded with jobs in flight
//! carries on with them.

use gantry_shared::JobState;
use serde::Deserialize;

use super::{
    machine::{Job, Outcome, Phase, Server},
    Approval, JobRecord, RollStep,
};

/// What an older record said of where its job stood.
#[derive(Deserialize)]
struct Legacy {
    state: JobState,
    #[serde(default)]
    stage: Option<gantry_shared::Stage>,
    #[serde(default)]
    step: usize,
    #[serde(default)]
    putting_back: Option<(JobState, String)>,
    #[serde(default)]
    cancel_requested: bool,
    #[serde(default)]
    approval: Approval,
    #[serde(default)]
    roll: Vec<RollStep>,
}

/// Decodes a stored job record, of this version or an older one.
pub fn decode(bytes: &[u8]) -> serde_json::Result<JobRecord> {
    match serde_json::from_slice(bytes) {
        Ok(job) => Ok(job),
        Err(e) if e.to_string().contains("missing field `life`") => {
            let legacy: Legacy = serde_json::from_slice(bytes)?;
            let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
            let (life, stopped) = legacy.life();
            value["life"] = serde_json::to_value(life)?;
            value["stopped"] = serde_json::to_value(stopped)?;
            serde_json::from_value(value)
        }
        Err(e) => Err(e),
    }
}

impl Legacy {
    fn life(self) -> (Job, Option<String>) {
        let outcome = |state| match state {
            JobState::Succeeded => Outcome::Succeeded,
            JobState::Cancelled => Outcome::Cancelled,
            JobState::Superseded => Outcome::Superseded,
            _ => Outcome::Failed,
        };
        let servers: Vec<Server> = self
            .roll
            .iter()
            .map(|s| match (&s.switched, &s.put_back) {
                (Some(_), Some(what)) if what.starts_with("put back") => Server::PutBack,
                (Some(_), Some(_)) => Server::NotPutBack,
                (None, Some(_)) => Server::Failed,
                (Some(_), None) => Server::Switched,
                (None, None) => Server::Pending,
            })
            .collect();
        // Whether a server ran the release before was not kept: assume so,
        // so a put-back is tried (and noted as impossible if it was not).
        let ran_before = vec![true; servers.len()];
        let (phase, stopped) = match (self.state, self.putting_back) {
            (state, _) if state.is_terminal() => (Phase::Ended(outcome(state)), None),
            (JobState::Queued, _) if matches!(self.approval, Approval::Waiting { .. }) => {
                (Phase::AwaitingApproval, None)
            }
            (JobState::Queued, _) => (Phase::Queued, None),
            (_, Some((state, why))) => (
                Phase::PuttingBack {
                    at: self.step,
                    outcome: outcome(state),
                },
                Some(why),
            ),
            (_, None) => (
                Phase::Rolling {
                    at: self.step,
                    stage: self.stage,
                },
                None,
            ),
        };
        let queued = matches!(phase, Phase::Queued | Phase::AwaitingApproval);
        let job = Job {
            phase,
            servers: if queued { Vec::new() } else { servers },
            ran_before: if queued { Vec::new() } else { ran_before },
            cancel_requested: self.cancel_requested,
        };
        (job, stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_before_the_machine_is_read_where_it_stood() {
        let running = r#"{"id":7,"app":"shop","env":"prod","kind":"Deploy","branches":[],
            "base":null,"commit":"abc","requested_by":"ann","release":3,"state":"Running",
            "stage":"Build","reason":"build on agent prod-2","agent":"prod-2","created_ms":1,
            "updated_ms":2,"url":"","image":"","container":"","cancel_requested":true,
            "superseded_by":null,"roll":[
              {"agent":"prod-1","switched":{"agent":"prod-1","container":"c","url":"u","image":"i"},"put_back":null},
              {"agent":"prod-2","switched":null,"put_back":null}],
            "step":1,"putting_back":null,"approval":"NotNeeded"}"#;
        let job = decode(running.as_bytes()).unwrap();
        assert_eq!(
            job.life.phase,
            Phase::Rolling {
                at: 1,
                stage: Some(gantry_shared::Stage::Build)
            }
        );
        assert_eq!(job.life.servers, vec![Server::Switched, Server::Pending]);
        assert!(job.life.cancel_requested);
        assert_eq!(job.life.state(), JobState::Running);

        let putting_back = running
            .replace(
                r#""putting_back":null"#,
                r#""putting_back":["Failed","prod-2 failed"]"#,
            )
            .replace(r#""step":1"#, r#""step":0"#);
        let job = decode(putting_back.as_bytes()).unwrap();
        assert_eq!(
            job.life.phase,
            Phase::PuttingBack {
                at: 0,
                outcome: Outcome::Failed
            }
        );
        assert_eq!(job.stopped.as_deref(), Some("prod-2 failed"));

        let ended = running.replace(r#""state":"Running""#, r#""state":"Cancelled""#);
        let job = decode(ended.as_bytes()).unwrap();
        assert_eq!(job.life.phase, Phase::Ended(Outcome::Cancelled));
    }
}
