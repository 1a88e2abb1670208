//! Everything the agent asks of the Docker engine, through bollard: building
//! a release's image from a tar context, running its container, reading its
//! logs, and removing what a job created. Every object carries the labels
//! `gantry.app`, `gantry.env`, `gantry.job`, `gantry.commit` and
//! `gantry.agent`, so cleanup finds it by label.

use std::{collections::HashMap, path::Path};

use bollard::{
    models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum},
    query_parameters::{
        BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
        ListImagesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
        RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
    },
    Docker,
};
use futures::StreamExt;

use crate::report::{Reporter, Tail};

/// Label keys on every object Gantry creates.
pub mod label {
    /// The app.
    pub const APP: &str = "gantry.app";
    /// The environment.
    pub const ENV: &str = "gantry.env";
    /// The job that created it.
    pub const JOB: &str = "gantry.job";
    /// The commit it was built from.
    pub const COMMIT: &str = "gantry.commit";
    /// The branch requested.
    pub const BRANCH: &str = "gantry.branch";
    /// The agent that created it.
    pub const AGENT: &str = "gantry.agent";
    /// The release number the job becomes on success.
    pub const RELEASE: &str = "gantry.release";
    /// The app's stable port (served by the proxy) and its port in the
    /// container, as "public:container", when the app has a stable port.
    pub const PROXY: &str = "gantry.proxy";
    /// The installation of that agent (its work dir's identity), so agents
    /// of the same name on one Docker host never touch each other's objects.
    pub const AGENT_ID: &str = "gantry.agent-id";
}

/// Seconds a replaced container gets to finish in-flight requests on stop.
const STOP_GRACE_SECS: i32 = 10;

/// Docker failures, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine refused or failed.
    #[error("{doing}: {source}")]
    Engine {
        /// What was being done.
        doing: String,
        /// What Docker said.
        source: bollard::errors::Error,
    },
    /// The image build reported an error.
    #[error("image build failed: {0}")]
    Build(String),
    /// The build context could not be packed.
    #[error("cannot pack the build context: {0}")]
    Context(std::io::Error),
    /// The container did not publish its port.
    #[error("container {0} has no published host port for the app's port")]
    NoPort(String),
}

fn engine(doing: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let doing = doing.into();
    move |source| DockerError::Engine { doing, source }
}

/// Connects to the local engine, negotiating the API version (engines here
/// may be older than bollard's default).
pub async fn connect() -> Result<Docker, DockerError> {
    let docker =
        Docker::connect_with_local_defaults().map_err(engine("connecting to the Docker engine"))?;
    docker
        .negotiate_version()
        .await
        .map_err(engine("negotiating the Docker API version"))
}

/// How the image is made.
pub enum ImageSource<'a> {
    /// A generated Dockerfile: `FROM base`, the jar copied in, run with `java -jar`.
    Base {
        /// The base image.
        image: &'a str,
        /// The built jar.
        artifact: &'a Path,
        /// The app's port, for EXPOSE.
        port: u16,
    },
    /// The repo's own Dockerfile, built with the whole workspace as context.
    Dockerfile {
        /// The workspace.
        workspace: &'a Path,
        /// The Dockerfile's path in it.
        path: &'a str,
    },
}

/// The generated Dockerfile for [`ImageSource::Base`].
pub fn generated_dockerfile(base: &str, port: u16) -> String {
    format!(
        "FROM {base}\nWORKDIR /app\nCOPY app.jar /app/app.jar\nEXPOSE {port}\n\
         ENTRYPOINT [\"java\", \"-jar\", \"/app/app.jar\"]\n"
    )
}

fn context_tar(source: &ImageSource<'_>) -> std::io::Result<(Vec<u8>, String)> {
    let mut tar = tar::Builder::new(Vec::new());
    // Links go in as links, as Docker's own context does: a link the build
    // made (`target/app.jar -> /etc/shadow`) must not bring in what the
    // build user cannot read.
    tar.follow_symlinks(false);
    let dockerfile = match source {
        ImageSource::Base {
            image,
            artifact,
            port,
        } => {
            let text = generated_dockerfile(image, *port);
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, "Dockerfile", text.as_bytes())?;
            tar.append_path_with_name(artifact, "app.jar")?;
            "Dockerfile".to_owned()
        }
        ImageSource::Dockerfile { workspace, path } => {
            tar.append_dir_all(".", workspace)?;
            (*path).to_owned()
        }
    };
    Ok((tar.into_inner()?, dockerfile))
}

/// Builds `tag` from `source`, streaming the builder's output to `report`.
pub async fn build_image(
    docker: &Docker,
    source: ImageSource<'_>,
    tag: &str,
    labels: &HashMap<String, String>,
    report: &Reporter,
) -> Result<(), DockerError> {
    let (tar, dockerfile) = context_tar(&source).map_err(DockerError::Context)?;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile)
        .t(tag)
        .labels(labels)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(tar.into())));
    let mut tail = Tail::default();
    while let Some(item) = stream.next().await {
        let info =
            item.map_err(|e| DockerError::Build(format!("{e}; last lines:\n{}", tail.joined())))?;
        if let Some(text) = info.stream {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                tail.push(line);
                report.system(line.to_owned()).await;
            }
        }
        if let Some(detail) = info.error_detail {
            return Err(DockerError::Build(detail.message.unwrap_or_default()));
        }
    }
    Ok(())
}

/// What a new container needs.
pub struct ContainerSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its image.
    pub image: &'a str,
    /// Its environment variables.
    pub env: Vec<String>,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// The app's port inside it.
    pub port: u16,
    /// Host address the port is published on.
    pub publish_ip: &'a str,
}

/// Creates and starts a container; returns its id and published host port.
pub async fn run_container(
    docker: &Docker,
    spec: ContainerSpec<'_>,
) -> Result<(String, u16), DockerError> {
    let port_key = format!("{}/tcp", spec.port);
    let binding = PortBinding {
        host_ip: Some(spec.publish_ip.to_owned()),
        host_port: Some(String::new()),
    };
    let body = ContainerCreateBody {
        image: Some(spec.image.to_owned()),
        env: Some(spec.env),
        labels: Some(spec.labels),
        exposed_ports: Some(vec![port_key.clone()]),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(port_key.clone(), Some(vec![binding]))])),
            // No restart policy until it is healthy: a crash must show as a
            // crash, not as a restart loop. See [`keep_running`].
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default()
        .name(spec.name)
        .build();
    let created = docker
        .create_container(Some(options), body)
        .await
        .map_err(engine(format!("creating container {}", spec.name)))?;
    docker
        .start_container(&created.id, None)
        .await
        .map_err(engine(format!("starting container {}", spec.name)))?;
    let port = published_port(docker, &created.id, spec.port)
        .await?
        .ok_or_else(|| DockerError::NoPort(spec.name.to_owned()))?;
    Ok((created.id, port))
}

/// The host port a running container publishes its `port` on.
pub async fn published_port(
    docker: &Docker,
    id: &str,
    port: u16,
) -> Result<Option<u16>, DockerError> {
    let inspect = docker
        .inspect_container(id, None)
        .await
        .map_err(engine(format!("inspecting container {id}")))?;
    Ok(inspect
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|mut ports| ports.remove(&format!("{port}/tcp")).flatten())
        .and_then(|bindings| {
            bindings
                .into_iter()
                .find_map(|b| b.host_port?.parse::<u16>().ok())
        }))
}

/// Restarts a released container whenever it stops (host reboots, crashes),
/// unless an operator stops it.
pub async fn keep_running(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let policy = RestartPolicy {
        name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
        maximum_retry_count: None,
    };
    let body = bollard::models::ContainerUpdateBody {
        restart_policy: Some(policy),
        ..Default::default()
    };
    docker
        .update_container(id, body)
        .await
        .map_err(engine("setting the restart policy"))
}

/// Whether the container still runs, and its exit code if not.
pub async fn container_exit(docker: &Docker, id: &str) -> Result<Option<i64>, DockerError> {
    let inspect = docker
        .inspect_container(id, None)
        .await
        .map_err(engine("inspecting the new container"))?;
    let state = inspect.state.unwrap_or_default();
    Ok(match state.running {
        Some(true) => None,
        _ => Some(state.exit_code.unwrap_or(-1)),
    })
}

/// A stream of the container's output lines, from its start, following.
pub fn follow_logs(
    docker: &Docker,
    id: &str,
) -> impl futures::Stream<Item = (bool, String)> + Send + 'static {
    container_logs(docker, id, true, None)
}

/// The container's output as (from stderr, text) chunks: the last `tail`
/// lines (all when `None`), then, with `follow`, new output as it comes.
pub fn container_logs(
    docker: &Docker,
    id: &str,
    follow: bool,
    tail: Option<u32>,
) -> impl futures::Stream<Item = (bool, String)> + Send + 'static {
    let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
    let options = LogsOptionsBuilder::default()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .tail(&tail)
        .build();
    docker
        .logs(id, Some(options))
        .filter_map(|item| async move {
            match item.ok()? {
                bollard::container::LogOutput::StdErr { message } => Some((
                    true,
                    String::from_utf8_lossy(&message).trim_end().to_owned(),
                )),
                other => Some((
                    false,
                    String::from_utf8_lossy(&other.into_bytes())
                        .trim_end()
                        .to_owned(),
                )),
            }
        })
}

fn filters(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

/// Containers (running or not) carrying all the given labels: (id, labels).
pub async fn containers(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<(String, HashMap<String, String>)>, DockerError> {
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters(labels))
        .build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(engine("listing containers"))?;
    Ok(list
        .into_iter()
        .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
        .collect())
}

/// Stops a retired release with a grace period for its in-flight requests,
/// then removes it.
pub async fn retire_container(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let stop = StopContainerOptionsBuilder::default()
        .t(STOP_GRACE_SECS)
        .build();
    let _ = docker.stop_container(id, Some(stop)).await;
    remove_container(docker, id).await
}

/// Removes a container at once (killing it if it runs): for containers that
/// never served, such as a failed or cancelled job's.
pub async fn remove_container(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(engine(format!("removing container {id}"))(e)),
    }
}

/// Images carrying all the given labels.
async fn list_images(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<bollard::models::ImageSummary>, DockerError> {
    let options = ListImagesOptionsBuilder::default()
        .filters(&filters(labels))
        .build();
    docker
        .list_images(Some(options))
        .await
        .map_err(engine("listing images"))
}

/// Images carrying all the given labels: (id, labels).
pub async fn images(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<(String, HashMap<String, String>)>, DockerError> {
    let list = list_images(docker, labels).await?;
    Ok(list.into_iter().map(|i| (i.id, i.labels)).collect())
}

/// Images carrying all the given labels: (id, tags).
pub async fn image_tags(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<(String, Vec<String>)>, DockerError> {
    let list = list_images(docker, labels).await?;
    Ok(list.into_iter().map(|i| (i.id, i.repo_tags)).collect())
}

/// The labels of image `tag`, or `None` when there is no such image.
pub async fn image_labels(
    docker: &Docker,
    tag: &str,
) -> Result<Option<HashMap<String, String>>, DockerError> {
    match docker.inspect_image(tag).await {
        Ok(image) => Ok(Some(
            image.config.and_then(|c| c.labels).unwrap_or_default(),
        )),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(engine(format!("inspecting image {tag}"))(e)),
    }
}

/// Removes an image (and its tags).
pub async fn remove_image(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = RemoveImageOptionsBuilder::default().force(true).build();
    match docker.remove_image(id, Some(options), None).await {
        Ok(_)
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(engine(format!("removing image {id}"))(e)),
    }
}

/// Removes every container and image labelled with `app`, in any
/// environment: for tools that own an app outright (the demo, the bench,
/// tests), never for an agent's own cleanup.
pub async fn remove_app_objects(docker: &Docker, app: &str) -> Result<(), DockerError> {
    let scope = [(label::APP, app)];
    for (id, _) in containers(docker, &scope).await? {
        remove_container(docker, &id).await?;
    }
    for (id, _) in images(docker, &scope).await? {
        remove_image(docker, &id).await?;
    }
    Ok(())
}

/// Removes every container and image of `job` of `app` in `env`.
pub async fn remove_job_objects(
    docker: &Docker,
    app: &str,
    env: &str,
    job: &str,
) -> Result<(), DockerError> {
    let labels = [(label::APP, app), (label::ENV, env), (label::JOB, job)];
    for (id, _) in containers(docker, &labels).await? {
        remove_container(docker, &id).await?;
    }
    for (id, _) in images(docker, &labels).await? {
        remove_image(docker, &id).await?;
    }
    Ok(())
}

/// Removes the containers (and their images) this agent created for jobs
/// that never released: they lack the restart policy [`keep_running`] sets.
/// Called when the agent starts, before it takes work. Returns how many.
pub async fn remove_unreleased(docker: &Docker, agent_id: &str) -> Result<usize, DockerError> {
    let mut removed = 0;
    for (id, labels) in containers(docker, &[(label::AGENT_ID, agent_id)]).await? {
        let inspect = docker
            .inspect_container(&id, None)
            .await
            .map_err(engine("inspecting a container"))?;
        let policy = inspect
            .host_config
            .and_then(|h| h.restart_policy)
            .and_then(|p| p.name);
        if policy == Some(RestartPolicyNameEnum::UNLESS_STOPPED) {
            continue;
        }
        match (
            labels.get(label::APP),
            labels.get(label::ENV),
            labels.get(label::JOB),
        ) {
            (Some(app), Some(env), Some(job)) => remove_job_objects(docker, app, env, job).await?,
            _ => remove_container(docker, &id).await?,
        }
        removed += 1;
    }
    Ok(removed)
}
