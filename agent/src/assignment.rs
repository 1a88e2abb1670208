//! A job as this agent runs it: the coordinator's [`Assignment`], checked
//! at the edge, with the names, labels and `GANTRY_*` variables the job's
//! objects carry, and the workspace it builds in.
//!
//! The stages read a [`Job`]; [`crate::job`] runs one to its end.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use gantry_shared::{
    messages::{AppSpec, Assignment, BranchSet},
    AgentName, AppName, EnvName, JobId,
};

use crate::{docker::label, runtime::Runtime};

/// A job as the agent runs it, from an [`Assignment`] checked at the edge.
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// The branches requested, comma-separated (for labels and logs).
    pub branch: String,
    /// The commit to build.
    pub commit: String,
    /// The app's configuration.
    pub spec: AppSpec,
    /// The environment's variables.
    pub env_vars: BTreeMap<String, String>,
    /// The environment's secrets, given to the build and the container.
    pub secrets: BTreeMap<String, String>,
    /// The release number it becomes.
    pub release: u64,
    /// For a rollback: the retained image to run instead of building.
    pub rollback_image: Option<String>,
    /// Images of this (app, env) to keep besides the one deployed.
    pub keep_images: Vec<String>,
    /// For a branch set: what to merge onto what.
    pub set: Option<BranchSet>,
    /// This assignment puts the server back on the release before.
    pub put_back: bool,
}

impl From<Assignment> for Job {
    fn from(a: Assignment) -> Self {
        Self {
            id: a.job,
            branch: a.branch_list(),
            app: a.app.name.clone(),
            env: a.env,
            commit: a.commit,
            spec: a.app,
            env_vars: a.env_vars,
            secrets: a.secrets,
            release: a.release,
            rollback_image: a.image,
            keep_images: a.keep_images,
            set: a.set,
            put_back: a.put_back,
        }
    }
}

impl Job {
    /// What this assignment's Docker objects are labelled and named with:
    /// the job id, set apart for a put-back, so cleaning up a failed
    /// put-back never removes what the job deployed before.
    pub(crate) fn object_id(&self) -> String {
        if self.put_back {
            format!("{}-put-back", self.id)
        } else {
            self.id.to_string()
        }
    }

    /// The labels on this job's image and container: who made them, for
    /// clean-up by label, and the proxy's ports when the app has one.
    pub(crate) fn labels(&self, agent: &AgentName, agent_id: &str) -> HashMap<String, String> {
        let mut labels = self.identity_labels(agent, agent_id);
        if let Some(public) = self.spec.public_port {
            let ports = format!("{public}:{}", self.spec.container_port);
            labels.insert(label::PROXY.to_owned(), ports);
        }
        labels
    }

    fn identity_labels(&self, agent: &AgentName, agent_id: &str) -> HashMap<String, String> {
        HashMap::from([
            (label::APP.to_owned(), self.app.to_string()),
            (label::ENV.to_owned(), self.env.to_string()),
            (label::JOB.to_owned(), self.object_id()),
            (label::COMMIT.to_owned(), self.commit.clone()),
            (label::BRANCH.to_owned(), self.branch.clone()),
            (label::RELEASE.to_owned(), self.release.to_string()),
            (label::AGENT.to_owned(), agent.to_string()),
            (label::AGENT_ID.to_owned(), agent_id.to_owned()),
        ])
    }

    /// `GANTRY_*` variables describing this release, for the build and the container.
    pub(crate) fn identity(&self) -> [(String, String); 6] {
        [
            ("GANTRY_APP".into(), self.app.to_string()),
            ("GANTRY_ENV".into(), self.env.to_string()),
            ("GANTRY_RELEASE".into(), self.release.to_string()),
            ("GANTRY_JOB".into(), self.id.to_string()),
            ("GANTRY_BRANCH".into(), self.branch.clone()),
            ("GANTRY_COMMIT".into(), self.commit.clone()),
        ]
    }
}

/// The workspace of the job's (app, env) on this agent.
pub(crate) fn workspace_dir(rt: &Runtime, job: &Job) -> PathBuf {
    rt.work_dir
        .join("workspaces")
        .join(job.env.as_str())
        .join(job.app.as_str())
}
