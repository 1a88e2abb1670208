//! The steps that prepare a release before it starts: fetch the commit,
//! check it out (merging a branch set as the coordinator did), build the
//! artifact and the image; or, for a rollback or put-back, check that the
//! retained image is still here.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gantry_shared::{git::Credentials, messages};

use crate::{
    build, docker,
    docker::{label, ImageSource},
    git,
    runtime::{blocking, cancellable, Stop},
};

use super::ctx::Ctx;

/// A rollback's image must still be on this server and belong to this
/// (app, env): nothing is rebuilt.
pub(super) async fn check_retained(ctx: &Ctx<'_>) -> Result<(), Stop> {
    let (rt, job, image) = (ctx.rt, ctx.job, &ctx.tag);
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
    ctx.report
        .system(format!(
            "{why} image {image} (built by job {built_by}); nothing is rebuilt"
        ))
        .await;
    Ok(())
}

/// Where the app's commits are fetched from, and the mirror they go into.
fn source(ctx: &Ctx<'_>) -> Arc<git::Source> {
    let (rt, job) = (ctx.rt, ctx.job);
    Arc::new(git::Source {
        mirror: rt.work_dir.join("mirrors").join(format!("{}.git", job.app)),
        remote: job.spec.remote.clone(),
        credentials: Credentials {
            username: job.spec.fetch_username.clone(),
            token: job.spec.fetch_token.clone(),
            ssh_key: None,
        },
    })
}

/// Fetches the job's commit, or a branch set's heads and base, into the
/// app's mirror.
pub(super) async fn fetch(ctx: &Ctx<'_>) -> Result<(), Stop> {
    let job = ctx.job;
    let needed: Vec<String> = match &job.set {
        Some(set) => set
            .branches
            .iter()
            .chain(std::iter::once(&set.base))
            .map(|b| b.commit.clone())
            .collect(),
        None => vec![job.commit.clone()],
    };
    let from = source(ctx);
    let fetched = cancellable(ctx.cancel, blocking(move || git::fetch(&from, &needed))).await?;
    ctx.report
        .system(format!(
            "fetched {} new objects ({} bytes) into the mirror",
            fetched.received_objects, fetched.received_bytes
        ))
        .await;
    Ok(())
}

/// Merges a branch set as the coordinator did, checks the commit out into
/// the workspace, and hands it to the build user.
pub(super) async fn checkout(ctx: &Ctx<'_>) -> Result<(), Stop> {
    let (rt, job, workspace, cancel) = (ctx.rt, ctx.job, &ctx.workspace, ctx.cancel);
    let source = source(ctx);
    // Says, until the job ends, that the workspace is being written; an
    // agent that dies meanwhile removes the half-built tree when it starts.
    let marker = crate::leftovers::building_marker(workspace);
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
        ctx.report
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
    ctx.report
        .system(format!(
            "checked out {} \"{}\" by {} into {}",
            short(&job.commit),
            checked.subject,
            checked.author,
            checked.dir.display()
        ))
        .await;
    Ok(())
}

/// Runs the app's build command in the workspace; returns its artifact.
pub(super) async fn build(ctx: &Ctx<'_>) -> Result<PathBuf, Stop> {
    let (rt, job, workspace, report) = (ctx.rt, ctx.job, &ctx.workspace, ctx.report);
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
        workspace,
        &env,
        rt.build_user.as_ref(),
        (timeout, ctx.cancel),
        report,
    )
    .await
    {
        Ok(()) => {}
        Err(build::BuildError::Cancelled) => return Err(Stop::Cancelled),
        Err(e) => return Err(e.into()),
    }
    let artifact = build::find_artifact(workspace, &job.spec.artifact)?;
    let size = std::fs::metadata(&artifact).map(|m| m.len()).unwrap_or(0);
    report
        .system(format!(
            "artifact {} ({size} bytes)",
            artifact
                .strip_prefix(workspace)
                .unwrap_or(&artifact)
                .display()
        ))
        .await;
    Ok(artifact)
}

/// Builds the release's image, tagged [`Ctx::tag`], from `artifact` on the
/// app's base image or from its Dockerfile.
pub(super) async fn image(ctx: &Ctx<'_>, artifact: &Path) -> Result<(), Stop> {
    let (rt, job, tag, report) = (ctx.rt, ctx.job, &ctx.tag, ctx.report);
    let port = job.spec.container_port;
    let source = match &job.spec.image {
        messages::ImageSource::BaseImage(image) => ImageSource::Base {
            image,
            artifact,
            port,
        },
        messages::ImageSource::Dockerfile(path) => ImageSource::Dockerfile {
            workspace: &ctx.workspace,
            path,
        },
    };
    let labels = job.labels(&rt.agent, &rt.agent_id);
    cancellable(ctx.cancel, async {
        Ok(docker::build_image(&rt.docker, source, tag, &labels, report).await?)
    })
    .await?;
    report.system(format!("built image {tag}")).await;
    Ok(())
}

/// A commit's id as logs show it.
fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}
