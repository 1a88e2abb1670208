//! The steps that put a release in service: start its container beside the
//! serving one, wait until it is healthy, confirm with the coordinator,
//! route traffic to it, drain and retire what it replaces; and, if the job
//! stops after the route, route traffic back to the release serving before.

use std::time::Duration;

use tracing::{info, warn};

use crate::{
    docker,
    docker::{label, ContainerSpec},
    health::{self, Probe},
    proxy::client::{Proxy, ProxyError},
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

/// The app's port, pointed at the new container by [`route`].
pub(super) struct Switched {
    /// The proxy that owns the port.
    proxy: Proxy,
    /// The app's stable port.
    port: u16,
    /// The new container's address, routed to now.
    upstream: String,
    /// What the port routed to before: the serving release, unless this
    /// is the app's first.
    previous: Option<String>,
}

impl Switched {
    /// The release this switch took the port from, if another.
    fn replaced(&self) -> Option<&str> {
        self.previous.as_deref().filter(|old| *old != self.upstream)
    }
}

/// Sends the app's traffic to the new container; returns where the release
/// answers, and the switch when there was one. Without a public port there
/// is nothing to switch: it answers on its published port.
pub(super) async fn route(
    ctx: &Ctx<'_>,
    started: &Started,
) -> Result<(String, Option<Switched>), Stop> {
    let rt = ctx.rt;
    let host_port = started.host_port;
    Ok(match ctx.job.spec.public_port {
        Some(port) => {
            let upstream = format!("{}:{host_port}", rt.health_host);
            let switched = switch_traffic(ctx, port, upstream).await?;
            (format!("http://{}:{port}", rt.public_host), Some(switched))
        }
        None => (format!("http://{}:{host_port}", rt.public_host), None),
    })
}

/// The proxy of the job's (env, app) on `port`: the running one, or a new
/// one if it is gone.
async fn proxy(ctx: &Ctx<'_>, port: u16) -> Result<Proxy, ProxyError> {
    let (rt, job) = (ctx.rt, ctx.job);
    Proxy::ensure(
        &rt.proxy_program,
        &rt.work_dir,
        job.env.as_str(),
        job.app.as_str(),
        &rt.publish_ip,
        port,
    )
    .await
}

/// Points the app's proxy on `port` at `upstream` (the new, healthy
/// container).
async fn switch_traffic(ctx: &Ctx<'_>, port: u16, upstream: String) -> Result<Switched, Stop> {
    let proxy = proxy(ctx, port).await?;
    let previous = proxy.route_now().await?;
    proxy.route(&upstream).await?;
    ctx.report
        .system(format!("port {port} now serves this release ({upstream})"))
        .await;
    Ok(Switched {
        proxy,
        port,
        upstream,
        previous,
    })
}

/// Waits for the requests still running on the previous release to
/// finish, so that stopping it drops none.
pub(super) async fn drain(ctx: &Ctx<'_>, switched: Option<&Switched>) -> Result<(), Stop> {
    let Some((switched, old)) = switched.and_then(|s| Some((s, s.replaced()?))) else {
        return Ok(());
    };
    let (job, report) = (ctx.job, ctx.report);
    let grace = job.spec.drain_timeout;
    match switched.proxy.drain(old, grace).await? {
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
    Ok(())
}

/// Points the app's port back at the release it served before
/// [`switch_traffic`], once a later step failed or the job was cancelled:
/// the job's clean-up is about to remove the new container, and the
/// serving release must not be left running without its traffic. The
/// proxy may be what failed, so one that is gone is started again. Reports
/// what it did; never fails.
pub(super) async fn route_back(ctx: &Ctx<'_>, switched: &Switched) {
    let (rt, job, report) = (ctx.rt, ctx.job, ctx.report);
    let (port, new) = (switched.port, &switched.upstream);
    let Some(old) = switched.replaced() else {
        report
            .system(format!(
                "warning: no earlier release served port {port}; it serves none once this \
                 job's container is removed"
            ))
            .await;
        return;
    };
    let routed = async {
        let proxy = proxy(ctx, port).await?;
        proxy.route(old).await?;
        Ok::<_, ProxyError>(proxy)
    };
    let proxy = match routed.await {
        Ok(proxy) => proxy,
        Err(e) => {
            warn!(
                job = %job.id, app = %job.app, env = %job.env, agent = %rt.agent, %old, error = %e,
                "cannot route traffic back to the previous release"
            );
            report
                .system(format!(
                    "warning: cannot point port {port} back at the previous release ({old}): \
                     {e}; restarting the agent routes it to the release still running"
                ))
                .await;
            return;
        }
    };
    info!(
        job = %job.id, app = %job.app, env = %job.env, agent = %rt.agent, %old,
        "traffic routed back to the previous release"
    );
    report
        .system(format!(
            "port {port} serves the previous release again ({old})"
        ))
        .await;
    // The requests the new container took finish before the clean-up
    // removes it.
    let grace = job.spec.drain_timeout;
    match proxy.drain(new, grace).await {
        Ok(0) => {}
        Ok(left) => {
            report
                .system(format!(
                    "warning: {left} request(s) of this job's container ({new}) were still \
                     running after {}s",
                    grace.as_secs()
                ))
                .await
        }
        Err(e) => report.system(format!("warning: {e}")).await,
    }
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
