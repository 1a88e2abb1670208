//! The stages of a job on the agent. A deploy fetches, checks out, builds
//! the artifact and the image, then starts it; a rollback starts a retained
//! image again and builds nothing. Either way the new container runs beside
//! the serving one until it is healthy, and only then replaces it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use gantry_shared::{git::Credentials, messages, Stage};
use tokio_util::sync::CancellationToken;

use crate::{
    build, docker,
    docker::{label, ContainerSpec, ImageSource},
    git,
    health::{self, Probe},
    job::{blocking, cancellable, short, workspace_dir, Job, Runtime, Stop},
    proxy::client::Proxy,
    report::{Deployed, Reporter},
};

/// Runs the job's stages; the deployed release on success.
pub(crate) async fn run(
    rt: &Runtime,
    job: &Job,
    report: &Reporter,
    cancel: &CancellationToken,
) -> Result<Deployed, Stop> {
    let tag = match &job.rollback_image {
        Some(image) => {
            report.stage(Stage::Deploy).await;
            check_retained(rt, job, image, report).await?;
            image.clone()
        }
        None => {
            let tag = build_release(rt, job, report, cancel).await?;
            report.stage(Stage::Deploy).await;
            tag
        }
    };
    start_release(rt, job, tag, report, cancel).await
}

/// A rollback's image must still be on this server and belong to this
/// (app, env): nothing is rebuilt.
async fn check_retained(
    rt: &Runtime,
    job: &Job,
    image: &str,
    report: &Reporter,
) -> Result<(), Stop> {
    let labels = docker::image_labels(&rt.docker, image).await?;
    let belongs = labels.as_ref().is_some_and(|l| {
        l.get(label::APP).map(String::as_str) == Some(job.app.as_str())
            && l.get(label::ENV).map(String::as_str) == Some(job.env.as_str())
    });
    if !belongs {
        return Err(Stop::Failed(format!(
            "image {image} of {} in {} is no longer on agent {}; deploy its branches again",
            job.app, job.env, rt.agent
        )));
    }
    let built_by = labels
        .and_then(|l| l.get(label::JOB).cloned())
        .unwrap_or_default();
    let why = if job.put_back {
        "the roll failed on a later server: putting this one back on"
    } else {
        "rolling back to"
    };
    report
        .system(format!(
            "{why} image {image} (built by job {built_by}); nothing is rebuilt"
        ))
        .await;
    Ok(())
}

/// Fetches, checks out, builds the artifact and the image; returns the
/// image's tag.
async fn build_release(
    rt: &Runtime,
    job: &Job,
    report: &Reporter,
    cancel: &CancellationToken,
) -> Result<String, Stop> {
    let workspace = workspace_dir(rt, job);
    let source = Arc::new(git::Source {
        mirror: rt.work_dir.join("mirrors").join(format!("{}.git", job.app)),
        remote: job.spec.remote.clone(),
        credentials: Credentials {
            username: job.spec.fetch_username.clone(),
            token: job.spec.fetch_token.clone(),
            ssh_key: None,
        },
    });

    report.stage(Stage::Fetch).await;
    let needed: Vec<String> = match &job.set {
        Some(set) => set
            .branches
            .iter()
            .chain(std::iter::once(&set.base))
            .map(|b| b.commit.clone())
            .collect(),
        None => vec![job.commit.clone()],
    };
    let from = source.clone();
    let fetched = cancellable(cancel, blocking(move || git::fetch(&from, &needed))).await?;
    report
        .system(format!(
            "fetched {} new objects ({} bytes) into the mirror",
            fetched.received_objects, fetched.received_bytes
        ))
        .await;

    report.stage(Stage::Checkout).await;
    // Says, until the job ends, that the workspace is being written; an
    // agent that dies meanwhile removes the half-built tree when it starts.
    let marker = crate::leftovers::building_marker(&workspace);
    if let Some(parent) = marker.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&marker, job.id.to_string())?;
    if let Some(set) = job.set.clone() {
        let (from, expected) = (source.clone(), job.commit.clone());
        let merged = cancellable(
            cancel,
            blocking(move || git::integrate_set(&from, &set, &expected)),
        )
        .await?;
        let base = job.set.as_ref().map(|s| &s.base);
        report
            .system(format!(
                "merged {merged} branches onto {} into {}, as the coordinator did",
                base.map_or("", |b| b.branch.as_str()),
                short(&job.commit)
            ))
            .await;
    }
    let (commit, dir) = (job.commit.clone(), workspace.clone());
    let checked = cancellable(
        cancel,
        blocking(move || git::checkout(&source, &commit, &dir)),
    )
    .await?;
    if let Some(user) = rt.build_user.clone() {
        let dir = workspace.clone();
        tokio::task::spawn_blocking(move || crate::build_user::hand_over(&dir, &user))
            .await
            .map_err(|e| Stop::Failed(format!("handing the workspace over failed: {e}")))?
            .map_err(|e| {
                Stop::Failed(format!("cannot hand the workspace to the build user: {e}"))
            })?;
    }
    report
        .system(format!(
            "checked out {} \"{}\" by {} into {}",
            short(&job.commit),
            checked.subject,
            checked.author,
            checked.dir.display()
        ))
        .await;

    report.stage(Stage::Build).await;
    // Secrets first, so no name of Gantry's own can be shadowed by one.
    let mut env: BTreeMap<String, String> = job.secrets.clone();
    env.extend(job.identity());
    env.insert("GANTRY_SERVER".into(), rt.agent.to_string());
    env.insert(crate::leftovers::BUILD_MARK.into(), rt.agent_id.clone());
    env.insert("PATH".into(), rt.build_path.clone());
    let home = match &rt.build_user {
        Some(user) => user.home.display().to_string(),
        None => std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
    };
    env.insert("HOME".into(), home);
    env.insert("LANG".into(), "C.UTF-8".into());
    if let Ok(java_home) = std::env::var("JAVA_HOME") {
        env.insert("JAVA_HOME".into(), java_home);
    }
    report.system(format!("$ {}", job.spec.build_command)).await;
    let timeout = job.spec.build_timeout.max(Duration::from_secs(1));
    match build::run(
        &job.spec.build_command,
        &workspace,
        &env,
        rt.build_user.as_ref(),
        (timeout, cancel),
        report,
    )
    .await
    {
        Ok(()) => {}
        Err(build::BuildError::Cancelled) => return Err(Stop::Cancelled),
        Err(e) => return Err(e.into()),
    }
    let artifact = build::find_artifact(&workspace, &job.spec.artifact)?;
    let size = std::fs::metadata(&artifact).map(|m| m.len()).unwrap_or(0);
    report
        .system(format!(
            "artifact {} ({size} bytes)",
            artifact
                .strip_prefix(&workspace)
                .unwrap_or(&artifact)
                .display()
        ))
        .await;

    report.stage(Stage::Image).await;
    // Per server: agents sharing a Docker host never retag each other's.
    let tag = format!("{}:{}-{}-{}", job.app, job.env, job.id, rt.agent);
    let port = job.spec.container_port;
    let source = match &job.spec.image {
        messages::ImageSource::BaseImage(image) => ImageSource::Base {
            image,
            artifact: &artifact,
            port,
        },
        messages::ImageSource::Dockerfile(path) => ImageSource::Dockerfile {
            workspace: &workspace,
            path,
        },
    };
    let labels = job.labels(&rt.agent, &rt.agent_id);
    cancellable(cancel, async {
        Ok(docker::build_image(&rt.docker, source, &tag, &labels, report).await?)
    })
    .await?;
    report.system(format!("built image {tag}")).await;
    Ok(tag)
}

/// Starts `tag` beside the serving release (the caller has reported the
/// deploy stage), waits for its health check, and retires what it replaces.
async fn start_release(
    rt: &Runtime,
    job: &Job,
    tag: String,
    report: &Reporter,
    cancel: &CancellationToken,
) -> Result<Deployed, Stop> {
    let port = job.spec.container_port;
    let labels = job.labels(&rt.agent, &rt.agent_id);
    let name = format!(
        "gantry-{}-{}-{}-{}",
        job.app,
        job.env,
        job.object_id(),
        rt.agent
    );
    let mut vars: Vec<String> = job
        .env_vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.extend(job.secrets.iter().map(|(k, v)| format!("{k}={v}")));
    vars.extend(job.identity().iter().map(|(k, v)| format!("{k}={v}")));
    vars.push(format!("GANTRY_SERVER={}", rt.agent));
    let spec = ContainerSpec {
        name: &name,
        image: &tag,
        env: vars,
        labels,
        port,
        publish_ip: &rt.publish_ip,
    };
    let (container, host_port) = cancellable(cancel, async {
        Ok(docker::run_container(&rt.docker, spec).await?)
    })
    .await?;
    report
        .system(format!(
            "started container {name} with port {port} published on {host_port}"
        ))
        .await;

    report.stage(Stage::Health).await;
    let probe = Probe {
        host: &rt.health_host,
        port: host_port,
        path: &job.spec.health_path,
        timeout: job.spec.health_timeout.max(Duration::from_secs(1)),
    };
    cancellable(cancel, async {
        health::wait_healthy(&rt.docker, &container, probe, report)
            .await
            .map_err(Stop::Failed)
    })
    .await?;
    report
        .system(format!(
            "healthy: GET {} answered 200",
            job.spec.health_path
        ))
        .await;
    // What follows cannot be taken back: only with a word from the
    // coordinator, given after this point, that it still holds the job.
    cancellable(cancel, async { Ok(rt.lease.confirm().await?) }).await?;
    if cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    docker::keep_running(&rt.docker, &container).await?;

    let url = match job.spec.public_port {
        Some(port) => {
            let upstream = format!("{}:{host_port}", rt.health_host);
            switch_traffic(rt, job, port, &upstream, report).await?;
            format!("http://{}:{port}", rt.public_host)
        }
        None => format!("http://{}:{host_port}", rt.public_host),
    };
    retire_previous(rt, job, &container, &tag, report).await;
    Ok(Deployed {
        url,
        image: tag,
        container: name,
    })
}

/// Points the app's proxy on `port` at `upstream` (the new, healthy
/// container) and waits for the requests still running on the old one to
/// finish, so that stopping it drops none.
async fn switch_traffic(
    rt: &Runtime,
    job: &Job,
    port: u16,
    upstream: &str,
    report: &Reporter,
) -> Result<(), Stop> {
    let proxy = Proxy::ensure(
        &rt.proxy_program,
        &rt.work_dir,
        job.env.as_str(),
        job.app.as_str(),
        &rt.publish_ip,
        port,
    )
    .await?;
    let previous = proxy.route_now().await?;
    proxy.route(upstream).await?;
    report
        .system(format!("port {port} now serves this release ({upstream})"))
        .await;
    if let Some(old) = previous.filter(|old| old != upstream) {
        let grace = job.spec.drain_timeout;
        match proxy.drain(&old, grace).await? {
            0 => {
                report
                    .system(format!("drained the previous release ({old})"))
                    .await
            }
            left => {
                report
                    .system(format!(
                        "warning: {left} request(s) of the previous release ({old}) were still \
                         running after {}s; raise drain_timeout_secs if they need longer",
                        grace.as_secs()
                    ))
                    .await
            }
        }
    }
    Ok(())
}

/// Removes the containers of earlier releases of this (app, env), and the
/// images the coordinator no longer keeps for rollback. Failures here are reported, not fatal:
/// the new release already serves.
async fn retire_previous(rt: &Runtime, job: &Job, current: &str, image: &str, report: &Reporter) {
    // Scoped to this installation's objects of this (app, env): pruning in
    // one environment can never touch another's rollback images.
    let scope = [
        (label::APP, job.app.as_str()),
        (label::ENV, job.env.as_str()),
        (label::AGENT_ID, rt.agent_id.as_str()),
    ];
    match docker::containers(&rt.docker, &scope).await {
        Ok(list) => {
            for (id, labels) in list.into_iter().filter(|(id, _)| id != current) {
                let old_job = labels.get(label::JOB).cloned().unwrap_or_default();
                report
                    .system(format!("stopping the container of job {old_job}"))
                    .await;
                match docker::retire_container(&rt.docker, &id).await {
                    Ok(()) => {
                        report
                            .system(format!("removed the container of job {old_job}"))
                            .await
                    }
                    Err(e) => report.system(format!("warning: {e}")).await,
                }
            }
        }
        Err(e) => report.system(format!("warning: {e}")).await,
    }
    // Keep the image now serving and those the coordinator still lists as
    // rollback targets; remove the rest.
    let Ok(images) = docker::image_tags(&rt.docker, &scope).await else {
        return;
    };
    for (id, tags) in images {
        let kept = tags
            .iter()
            .any(|t| t == image || job.keep_images.contains(t));
        if !kept {
            match docker::remove_image(&rt.docker, &id).await {
                Ok(()) => {
                    report
                        .system(format!("pruned image {}", tags.join(", ")))
                        .await
                }
                Err(e) => report.system(format!("warning: {e}")).await,
            }
        }
    }
}
