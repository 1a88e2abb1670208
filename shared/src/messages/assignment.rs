//! A job pushed to an agent: everything it needs to run one deploy, checked
//! when it arrives so the agent's stages never check again.

use std::{collections::BTreeMap, time::Duration};

use super::MessageError;
use crate::{proto, AppName, BranchName, EnvName, JobId, Redactor};

/// Everything an agent needs to run one deploy (`gantry.v1.JobSpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The app, as configured on the coordinator.
    pub app: AppSpec,
    /// The environment deployed to.
    pub env: EnvName,
    /// The environment's variables, given to the container.
    pub env_vars: BTreeMap<String, String>,
    /// The environment's secrets, given like `env_vars` and replaced by
    /// `***` in every line the agent sends.
    pub secrets: BTreeMap<String, String>,
    /// The branches requested (several for a branch set), for labels and logs.
    pub branches: Vec<BranchName>,
    /// The commit to deploy: 40 hex digits.
    pub commit: String,
    /// The release number this job becomes on success.
    pub release: u64,
    /// For a rollback or a put-back: the retained image to run.
    pub image: Option<String>,
    /// Images of this (app, env) to keep besides the one deployed.
    pub keep_images: Vec<String>,
    /// For a branch set: what to merge onto what.
    pub set: Option<BranchSet>,
    /// Seq of this assignment's first log line, at least 1: a job rolled
    /// over several servers has one log, which each continues.
    pub first_seq: u64,
    /// This assignment puts the server back on the release before.
    pub put_back: bool,
}

impl Assignment {
    /// The branches joined by ",", as labels and `GANTRY_BRANCH` show them.
    pub fn branch_list(&self) -> String {
        let names: Vec<&str> = self.branches.iter().map(BranchName::as_str).collect();
        names.join(",")
    }
}

/// What the generated Dockerfile starts from, or the repository's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A base image for a generated Dockerfile.
    BaseImage(String),
    /// The path of the repository's Dockerfile, inside the workspace.
    Dockerfile(String),
}

/// An app as configured on the coordinator (`gantry.v1.AppSpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// Its name.
    pub name: AppName,
    /// The git remote to fetch (no password in it).
    pub remote: String,
    /// The shell command that builds the artifact.
    pub build_command: String,
    /// Path or glob, in the workspace, matching exactly one file.
    pub artifact: String,
    /// What the image is built from.
    pub image: ImageSource,
    /// The port the app listens on in its container (never 0).
    pub container_port: u16,
    /// The HTTP path that answers 200 when the app is healthy.
    pub health_path: String,
    /// How long a new container may take to become healthy.
    pub health_timeout: Duration,
    /// How long the build command may run.
    pub build_timeout: Duration,
    /// How long the whole job may run.
    pub deploy_timeout: Duration,
    /// How long a replaced release may finish its requests.
    pub drain_timeout: Duration,
    /// User name for `fetch_token`.
    pub fetch_username: Option<String>,
    /// A read-only token for the remote; kept in memory, never logged.
    pub fetch_token: Option<String>,
    /// The app's stable port on each server, served by the agent's proxy.
    pub public_port: Option<u16>,
}

/// Branches merged, in order, onto the app's default branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchSet {
    /// The default branch and its commit.
    pub base: BranchCommit,
    /// The branches merged, in order.
    pub branches: Vec<BranchCommit>,
    /// Time of the integration commits, in seconds since the Unix epoch.
    pub time_secs: i64,
}

/// A branch and the commit it pointed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchCommit {
    /// The branch.
    pub branch: BranchName,
    /// Its commit.
    pub commit: String,
}

fn nonempty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn port(field: &'static str, value: u32) -> Result<u16, MessageError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| MessageError::invalid(field, format!("{value} is not a port")))
}

fn check_commit(commit: String) -> Result<String, MessageError> {
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(MessageError::invalid(
            "commit",
            format!("{commit:?} is not a 40-digit commit id"),
        ));
    }
    Ok(commit)
}

impl TryFrom<proto::AppSpec> for AppSpec {
    type Error = MessageError;

    fn try_from(app: proto::AppSpec) -> Result<Self, MessageError> {
        let image = match (nonempty(app.dockerfile), nonempty(app.base_image)) {
            (Some(path), _) => ImageSource::Dockerfile(path),
            (None, Some(image)) => ImageSource::BaseImage(image),
            (None, None) => {
                return Err(MessageError::Missing("the app's base_image or dockerfile"))
            }
        };
        Ok(Self {
            name: AppName::new(app.name)?,
            remote: app.remote,
            build_command: app.build_command,
            artifact: app.artifact,
            image,
            container_port: port("container_port", app.container_port)?,
            health_path: app.health_path,
            health_timeout: Duration::from_secs(app.health_timeout_secs),
            build_timeout: Duration::from_secs(app.build_timeout_secs),
            deploy_timeout: Duration::from_secs(app.deploy_timeout_secs),
            drain_timeout: Duration::from_secs(app.drain_timeout_secs),
            fetch_username: nonempty(app.fetch_username),
            fetch_token: nonempty(app.fetch_token),
            public_port: match app.public_port {
                0 => None,
                p => Some(port("public_port", p)?),
            },
        })
    }
}

impl From<AppSpec> for proto::AppSpec {
    fn from(app: AppSpec) -> Self {
        let (base_image, dockerfile) = match app.image {
            ImageSource::BaseImage(image) => (image, String::new()),
            ImageSource::Dockerfile(path) => (String::new(), path),
        };
        Self {
            name: app.name.into(),
            remote: app.remote,
            build_command: app.build_command,
            artifact: app.artifact,
            base_image,
            dockerfile,
            container_port: app.container_port.into(),
            health_path: app.health_path,
            health_timeout_secs: app.health_timeout.as_secs(),
            build_timeout_secs: app.build_timeout.as_secs(),
            deploy_timeout_secs: app.deploy_timeout.as_secs(),
            fetch_username: app.fetch_username.unwrap_or_default(),
            fetch_token: app.fetch_token.unwrap_or_default(),
            public_port: app.public_port.map_or(0, u32::from),
            drain_timeout_secs: app.drain_timeout.as_secs(),
        }
    }
}

impl TryFrom<proto::BranchCommit> for BranchCommit {
    type Error = MessageError;

    fn try_from(b: proto::BranchCommit) -> Result<Self, MessageError> {
        Ok(Self {
            branch: BranchName::new(b.branch)?,
            commit: b.commit,
        })
    }
}

impl From<BranchCommit> for proto::BranchCommit {
    fn from(b: BranchCommit) -> Self {
        Self {
            branch: b.branch.into(),
            commit: b.commit,
        }
    }
}

impl TryFrom<proto::BranchSet> for BranchSet {
    type Error = MessageError;

    fn try_from(set: proto::BranchSet) -> Result<Self, MessageError> {
        let base = set
            .base
            .ok_or(MessageError::Missing("the set's base branch"))?;
        Ok(Self {
            base: base.try_into()?,
            branches: set
                .branches
                .into_iter()
                .map(BranchCommit::try_from)
                .collect::<Result<_, _>>()?,
            time_secs: set.time_secs,
        })
    }
}

impl From<BranchSet> for proto::BranchSet {
    fn from(set: BranchSet) -> Self {
        Self {
            base: Some(set.base.into()),
            branches: set.branches.into_iter().map(Into::into).collect(),
            time_secs: set.time_secs,
        }
    }
}

/// The checks of [`Assignment`]'s `TryFrom`, on everything but its id.
fn assignment(job: JobId, spec: proto::JobSpec) -> Result<Assignment, MessageError> {
    let app = spec.app.ok_or(MessageError::Missing("the job's app"))?;
    let branches = spec
        .branch
        .split(',')
        .map(BranchName::new)
        .collect::<Result<_, _>>()?;
    Ok(Assignment {
        job,
        app: app.try_into()?,
        env: EnvName::new(spec.env)?,
        env_vars: spec.env_vars.into_iter().collect(),
        secrets: spec.secrets.into_iter().collect(),
        branches,
        commit: check_commit(spec.commit)?,
        release: spec.release,
        image: nonempty(spec.image),
        keep_images: spec.keep_images,
        set: spec.set.map(BranchSet::try_from).transpose()?,
        first_seq: spec.first_seq.max(1),
        put_back: spec.put_back,
    })
}

impl TryFrom<proto::JobSpec> for Assignment {
    type Error = MessageError;

    /// Checks a job pushed by the coordinator. A spec with a job id but a
    /// bad value is [`MessageError::Assignment`], so the job can be
    /// reported failed.
    fn try_from(spec: proto::JobSpec) -> Result<Self, MessageError> {
        let job = JobId::new(spec.job_id)?;
        let first_seq = spec.first_seq.max(1);
        let redactor = Redactor::new(spec.secrets.values().cloned());
        assignment(job, spec).map_err(|e| MessageError::Assignment {
            job,
            first_seq,
            why: redactor.redact(e.to_string()),
        })
    }
}

impl From<Assignment> for proto::JobSpec {
    fn from(a: Assignment) -> Self {
        let branch = a.branch_list();
        Self {
            job_id: a.job.get(),
            app: Some(a.app.into()),
            env: a.env.into(),
            env_vars: a.env_vars.into_iter().collect(),
            branch,
            commit: a.commit,
            release: a.release,
            image: a.image.unwrap_or_default(),
            keep_images: a.keep_images,
            set: a.set.map(Into::into),
            first_seq: a.first_seq,
            secrets: a.secrets.into_iter().collect(),
            put_back: a.put_back,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> proto::JobSpec {
        proto::JobSpec {
            job_id: 7,
            app: Some(proto::AppSpec {
                name: "shop".into(),
                remote: "file:///srv/shop.git".into(),
                build_command: "make".into(),
                artifact: "out/*.jar".into(),
                base_image: "jre".into(),
                container_port: 8080,
                health_timeout_secs: 30,
                public_port: 9000,
                ..Default::default()
            }),
            env: "dev".into(),
            branch: "main,feature/x".into(),
            commit: "a".repeat(40),
            release: 3,
            set: Some(proto::BranchSet {
                base: Some(proto::BranchCommit {
                    branch: "main".into(),
                    commit: "b".repeat(40),
                }),
                branches: vec![proto::BranchCommit {
                    branch: "feature/x".into(),
                    commit: "c".repeat(40),
                }],
                time_secs: 1_700_000_000,
            }),
            first_seq: 0,
            secrets: [("TOKEN".to_owned(), "hunter2".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_spec_goes_and_comes_back_unchanged() {
        let assignment = Assignment::try_from(spec()).unwrap();
        assert_eq!(assignment.branch_list(), "main,feature/x");
        assert_eq!(assignment.first_seq, 1, "the log starts at line 1");
        assert_eq!(assignment.app.public_port, Some(9000));
        assert_eq!(assignment.app.image, ImageSource::BaseImage("jre".into()));
        let back = Assignment::try_from(proto::JobSpec::from(assignment.clone())).unwrap();
        assert_eq!(back, assignment);
    }

    #[test]
    fn a_bad_job_spec_names_its_job_and_never_its_secrets() {
        let bad: [fn(&mut proto::JobSpec); 6] = [
            |s| s.commit = "hunter2".into(),
            |s| s.app = None,
            |s| s.app.as_mut().unwrap().container_port = 70_000,
            |s| s.branch = "main,-x".into(),
            |s| s.env = "Dev".into(),
            |s| s.set.as_mut().unwrap().base = None,
        ];
        for change in bad {
            let mut spec = spec();
            spec.first_seq = 40;
            change(&mut spec);
            let err = Assignment::try_from(spec).unwrap_err();
            let MessageError::Assignment {
                job,
                first_seq,
                why,
            } = &err
            else {
                panic!("{err:?}");
            };
            assert_eq!((job.get(), *first_seq), (7, 40));
            assert!(!why.contains("hunter2"), "{why}");
        }
        let mut nameless = spec();
        nameless.job_id = 0;
        assert!(matches!(
            Assignment::try_from(nameless),
            Err(MessageError::Name(_))
        ));
    }
}
