//! The steps that put a release in service: start its container beside the
//! serving one, wait until it is healthy, confirm with the coordinator,
//! route traffic to it, and retire what it replaces.

use std::time::Duration;

use crate::{
    docker,
    docker::{label, ContainerSpec},
    health::{self, Probe},
    proxy::client::Proxy,
    runtime::{cancellable, Stop},
};

use super::ctx::Ctx;

/// The new container, as the later steps need it.
pub(super) struct Started {
    /// Its Docker id.
    container: String,
    /// The host port its container port is published on.
    host_port: u16,
}

/// Starts [`Ctx::tag`] as [`Ctx::name`] beside the serving release, with
/// no restart policy until it is released.
pub(super) async fn start(ctx: &Ctx<'_>) -> Result<Started, Stop> {
    let (rt, job, name) = (ctx.rt, ctx.job, &ctx.name);
    let port = job.spec.container_port;
    let labels = job.labels(&rt.agent, &rt.agent_id);
    let mut vars: Vec<String> = job
        .env_vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.extend(job.secrets.iter().map(|(k, v)| format!("{k}={v}")));
    vars.extend(job.identity().iter().map(|(k, v)| format!("{k}={v}")));
    vars.push(format!("GANTRY_SERVER={}", rt.agent));
    let spec = ContainerSpec {
        name,
        image: &ctx.tag,
        env: vars,
        labels,
        port,
        publish_ip: &rt.publish_ip,
    };
    let (container, host_port) = cancellable(ctx.cancel, async {
        Ok(docker::run_container(&rt.docker, spec).await?)
    })
    .await?;
    ctx.report
        .system(format!(
            "started container {name} with port {port} published on {host_port}"
        ))
        .await;
    Ok(Started {
        container,
        host_port,
    })
}

/// Waits until the new container answers its health path with 200.
pub(super) async fn health(ctx: &Ctx<'_>, started: &Started) -> Result<(), Stop> {
    let (rt, job) = (ctx.rt, ctx.job);
    let probe = Probe {
        host: &rt.health_host,
        port: started.host_port,
        path: &job.spec.health_path,
        timeout: job.spec.health_timeout.max(Duration::from_secs(1)),
    };
    cancellable(ctx.cancel, async {
        health::wait_healthy(&rt.docker, &started.container, probe, ctx.report)
            .await
            .map_err(Stop::Failed)
    })
    .await?;
    ctx.report
        .system(format!(
            "healthy: GET {} answered 200",
            job.spec.health_path
        ))
        .await;
    Ok(())
}

/// Makes sure the coordinator still holds the job, then lets the container
/// restart on its own: the last point a cancel stops the job at.
pub(super) async fn confirm(ctx: &Ctx<'_>, started: &Started) -> Result<(), Stop> {
    let (rt, cancel) = (ctx.rt, ctx.cancel);
    // What follows cannot be taken back: only with a word from the
    // coordinator, given after this point, that it still holds the job.
    cancellable(cancel, async { Ok(rt.lease.confirm().await?) }).await?;
    if cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    docker::keep_running(&rt.docker, &started.container).await?;
    Ok(())
}

/// Sends the app's traffic to the new container; returns where the release
/// answers. Without a public port there is nothing to switch: it answers on
/// its published port.
pub(super) async fn route(ctx: &Ctx<'_>, started: &Started) -> Result<String, Stop> {
    let rt = ctx.rt;
    let host_port = started.host_port;
    Ok(match ctx.job.spec.public_port {
        Some(port) => {
            let upstream = format!("{}:{host_port}", rt.health_host);
            switch_traffic(ctx, port, &upstream).await?;
            format!("http://{}:{port}", rt.public_host)
        }
        None => format!("http://{}:{host_port}", rt.public_host),
    })
}

/// Points the app's proxy on `port` at `upstream` (the new, healthy
/// container) and waits for the requests still running on the old one to
/// finish, so that stopping it drops none.
async fn switch_traffic(ctx: &Ctx<'_>, port: u16, upstream: &str) -> Result<(), Stop> {
    let (rt, job, report) = (ctx.rt, ctx.job, ctx.report);
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
pub(super) async fn retire(ctx: &Ctx<'_>, started: &Started) {
    let (rt, job, report) = (ctx.rt, ctx.job, ctx.report);
    let (current, image) = (&started.container, &ctx.tag);
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
