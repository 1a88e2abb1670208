//! Releases: every successful deploy or rollback of an (app, env), numbered
//! 1, 2, 3, ... per (app, env), with what went into it and where it runs. The
//! newest release is what the environment serves; the images of the newest
//! few are kept on the servers so a rollback needs no build.

use gantry_shared::{proto, AgentName, AppName, EnvName, JobId};
use serde::{Deserialize, Serialize};

pub use crate::job::ServerRelease;
use crate::job::{BranchCommit, JobKind, JobRecord};

/// A successful deploy or rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// Its number within (app, env).
    pub number: u64,
    /// The job that made it.
    pub job: JobId,
    /// Deploy or rollback.
    pub kind: JobKind,
    /// Who asked for it.
    pub requested_by: String,
    /// When it started serving, ms since the epoch.
    pub created_ms: i64,
    /// For a set: the default branch it was merged onto.
    pub base: Option<BranchCommit>,
    /// The branches in it, in merge order.
    pub branches: Vec<BranchCommit>,
    /// The commit built.
    pub commit: String,
    /// The image that runs it.
    pub image: String,
    /// The servers running it.
    pub servers: Vec<ServerRelease>,
}

impl ReleaseRecord {
    /// The release `job` became; `servers` are where it now runs.
    pub fn from_job(job: &JobRecord, number: u64, servers: Vec<ServerRelease>) -> Self {
        Self {
            app: job.app.clone(),
            env: job.env.clone(),
            number,
            job: job.id,
            kind: job.kind,
            requested_by: job.requested_by.clone(),
            created_ms: gantry_shared::now_ms(),
            base: job.base.clone(),
            branches: job.branches.clone(),
            commit: job.commit.clone(),
            image: job.image.clone(),
            servers,
        }
    }

    /// The image `agent` runs for this release (each server builds its own),
    /// or the first server's when `agent` had no part in it.
    pub fn image_on(&self, agent: &AgentName) -> &str {
        self.servers
            .iter()
            .find(|s| &s.agent == agent && !s.image.is_empty())
            .map_or(&self.image, |s| &s.image)
    }

    /// The wire form; `retained` says whether its image is still kept.
    pub fn to_proto(&self, retained: bool) -> proto::Release {
        proto::Release {
            app: self.app.to_string(),
            env: self.env.to_string(),
            number: self.number,
            job: self.job.get(),
            kind: self.kind.to_proto() as i32,
            rollback_of: self.kind.rollback_to().unwrap_or(0),
            requested_by: self.requested_by.clone(),
            created_ms: self.created_ms,
            base: self.base.as_ref().map(BranchCommit::to_proto),
            branches: self.branches.iter().map(BranchCommit::to_proto).collect(),
            commit: self.commit.clone(),
            image: self.image.clone(),
            image_retained: retained,
            servers: self
                .servers
                .iter()
                .map(|s| proto::ServerRelease {
                    agent: s.agent.to_string(),
                    container: s.container.clone(),
                    url: s.url.clone(),
                    image: s.image.clone(),
                })
                .collect(),
        }
    }
}

/// The images kept for (app, env), given its releases newest first: every
/// server's image of the newest `keep` releases, a release that reuses an
/// earlier image (a rollback) counting once.
pub fn retained_images(releases: &[ReleaseRecord], keep: usize) -> Vec<String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    for release in releases {
        if seen.len() == keep {
            break;
        }
        if seen.contains(&release.image.as_str()) {
            continue;
        }
        seen.push(&release.image);
        let servers = release.servers.iter().map(|s| &s.image);
        for image in std::iter::once(&release.image).chain(servers) {
            if !image.is_empty() && !images.contains(image) {
                images.push(image.clone());
            }
        }
    }
    images
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(number: u64, image: &str) -> ReleaseRecord {
        ReleaseRecord {
            app: AppName::new("shop").unwrap(),
            env: EnvName::new("prod").unwrap(),
            number,
            job: JobId::new(number).unwrap(),
            kind: JobKind::Deploy,
            requested_by: "ann".into(),
            created_ms: 0,
            base: None,
            branches: Vec::new(),
            commit: String::new(),
            image: image.into(),
            servers: Vec::new(),
        }
    }

    #[test]
    fn a_rolled_back_image_counts_once() {
        // Newest first: 5 rolled back to 3's image.
        let releases = [
            release(5, "shop:prod-3"),
            release(4, "shop:prod-4"),
            release(3, "shop:prod-3"),
            release(2, "shop:prod-2"),
            release(1, "shop:prod-1"),
        ];
        assert_eq!(
            retained_images(&releases, 3),
            ["shop:prod-3", "shop:prod-4", "shop:prod-2"]
        );
        assert_eq!(retained_images(&releases, 10).len(), 4);
    }
}
