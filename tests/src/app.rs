//! The apps tests deploy: the sample Java service, with what a test changes.

use gantry_cli::sample;

/// An app a test deploys.
#[derive(Clone)]
pub struct TestApp {
    /// Its name; unique per test, so tests never touch each other's objects.
    pub name: String,
    /// Its build command (default: the sample's).
    pub build_command: String,
    /// Its health timeout.
    pub health_timeout_secs: u64,
    /// Its remote (default: the repository the harness creates).
    pub remote: Option<String>,
    /// Its build timeout.
    pub build_timeout_secs: u64,
    /// Its whole-job timeout.
    pub deploy_timeout_secs: u64,
    /// Images kept per environment.
    pub keep_releases: usize,
    /// The stable port served by Gantry's proxy, if any.
    pub public_port: Option<u16>,
    /// User name and token for an authenticated remote: the coordinator's
    /// own (push) credential.
    pub git_credentials: Option<(String, String)>,
    /// What agents fetch with: a user name and the name of a secret of
    /// each environment holding a read-only token.
    pub fetch_credentials: Option<(String, String)>,
    /// The repository's own Dockerfile, instead of the JRE base image.
    pub dockerfile: Option<String>,
}

impl TestApp {
    /// The sample app under `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            build_command: sample::BUILD_COMMAND.to_owned(),
            health_timeout_secs: 60,
            remote: None,
            build_timeout_secs: 600,
            deploy_timeout_secs: 900,
            keep_releases: 5,
            public_port: None,
            git_credentials: None,
            fetch_credentials: None,
            dockerfile: None,
        }
    }
}
