//! The CLI's view of environments as a platform: releases, rollback, what
//! an environment runs, how two differ, and the remote's branches.

use crate::say;
use gantry_shared::proto;
use serde_json::{json, Value};

use crate::{
    commands::{follow_job, Client},
    output::{self, Format},
};

/// A release as JSON.
pub fn release_json(r: &proto::Release) -> Value {
    json!({
        "app": r.app, "env": r.env, "number": r.number, "job": r.job,
        "kind": output::kind(r.kind), "rollback_of": r.rollback_of,
        "requested_by": r.requested_by, "created_ms": r.created_ms,
        "base": r.base.as_ref().map(|b| json!({"branch": b.branch, "commit": b.commit})),
        "branches": output::branches_json(&r.branches), "commit": r.commit,
        "image": r.image, "image_retained": r.image_retained,
        "servers": r.servers.iter().map(|s| json!({"agent": s.agent, "container": s.container, "url": s.url})).collect::<Vec<_>>(),
    })
}

fn branch_names(list: &[proto::BranchCommit]) -> String {
    let names: Vec<&str> = list.iter().map(|b| b.branch.as_str()).collect();
    names.join(", ")
}

/// `gantry releases --app APP --env ENV`
pub async fn releases(
    client: &mut Client,
    app: String,
    env: String,
    limit: u32,
    format: Format,
) -> anyhow::Result<()> {
    let request = proto::ListReleasesRequest { app, env, limit };
    let releases = client.list_releases(request).await?.into_inner().releases;
    if format == Format::Json {
        let list: Vec<_> = releases.iter().map(release_json).collect();
        say!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            let what = match r.rollback_of {
                0 => branch_names(&r.branches),
                n => format!("rollback to {n} ({})", branch_names(&r.branches)),
            };
            vec![
                r.number.to_string(),
                r.job.to_string(),
                what,
                output::short(&r.commit).to_owned(),
                r.image.clone(),
                if r.image_retained { "yes" } else { "pruned" }.to_owned(),
                r.requested_by.clone(),
                output::time(r.created_ms),
            ]
        })
        .collect();
    output::table(
        &[
            "RELEASE", "JOB", "BRANCHES", "COMMIT", "IMAGE", "KEPT", "BY", "RELEASED",
        ],
        &rows,
    )?;
    Ok(())
}

/// `gantry rollback --app APP --env ENV [--to N]`; returns whether it succeeded.
pub async fn rollback(
    client: &mut Client,
    app: String,
    env: String,
    to: Option<u64>,
    detach: bool,
    format: Format,
) -> anyhow::Result<bool> {
    let request = proto::RollbackRequest {
        app,
        env,
        to_release: to.unwrap_or(0),
    };
    let job = client.rollback(request).await?.into_inner();
    follow_job(client, job, detach, format).await
}

/// `gantry env show --app APP --env ENV`
pub async fn env_show(
    client: &mut Client,
    app: String,
    env: String,
    format: Format,
) -> anyhow::Result<()> {
    let request = proto::GetEnvironmentStateRequest { app, env };
    let state = client.get_environment_state(request).await?.into_inner();
    if format == Format::Json {
        let doc = json!({
            "app": state.app, "env": state.env,
            "current": state.current.as_ref().map(release_json),
            "pending": state.pending.iter().map(output::job_json).collect::<Vec<_>>(),
        });
        say!("{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    match &state.current {
        None => say!("{} in {}: nothing released yet", state.app, state.env)?,
        Some(r) => {
            say!(
                "{} in {}: release {} (job {}, {} by {})",
                state.app,
                state.env,
                r.number,
                r.job,
                output::time(r.created_ms),
                r.requested_by
            )?;
            if let Some(base) = &r.base {
                say!("  base    {} {}", output::short(&base.commit), base.branch)?;
            }
            for b in &r.branches {
                say!("  branch  {} {}", output::short(&b.commit), b.branch)?;
            }
            say!("  commit  {}", r.commit)?;
            say!("  image   {}", r.image)?;
            for s in &r.servers {
                say!("  server  {} {} {}", s.agent, s.container, s.url)?;
            }
        }
    }
    for job in &state.pending {
        say!(
            "  pending job {} {}: {} ({})",
            job.id,
            output::state(job),
            job.branch,
            job.reason
        )?;
    }
    Ok(())
}

/// `gantry diff --app APP FROM TO`
pub async fn diff(
    client: &mut Client,
    app: String,
    from_env: String,
    to_env: String,
    format: Format,
) -> anyhow::Result<()> {
    let request = proto::DiffEnvironmentsRequest {
        app,
        from_env: from_env.clone(),
        to_env: to_env.clone(),
    };
    let branches = client
        .diff_environments(request)
        .await?
        .into_inner()
        .branches;
    if format == Format::Json {
        let list: Vec<_> = branches
            .iter()
            .map(|d| json!({"branch": d.branch, "from_commit": d.from_commit, "to_commit": d.to_commit}))
            .collect();
        say!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    if branches.is_empty() {
        say!("{from_env} and {to_env} run the same branches at the same commits")?;
        return Ok(());
    }
    let cell = |c: &str| {
        if c.is_empty() {
            "-".to_owned()
        } else {
            output::short(c).to_owned()
        }
    };
    let rows: Vec<Vec<String>> = branches
        .iter()
        .map(|d| vec![d.branch.clone(), cell(&d.from_commit), cell(&d.to_commit)])
        .collect();
    output::table(
        &["BRANCH", &from_env.to_uppercase(), &to_env.to_uppercase()],
        &rows,
    )?;
    Ok(())
}

/// `gantry logs --app APP --env ENV [-f]`: every server's container output,
/// each line marked with its server.
pub async fn app_logs(
    client: &mut Client,
    app: String,
    env: String,
    follow: bool,
    tail: u32,
    format: Format,
) -> anyhow::Result<()> {
    let request = proto::StreamAppLogsRequest {
        app,
        env,
        follow,
        tail,
    };
    let mut stream = client.stream_app_logs(request).await?.into_inner();
    while let Some(line) = stream.message().await? {
        match format {
            Format::Json => say!(
                "{}",
                json!({"server": line.server, "stream": output::stream_name(line.stream), "text": line.text})
            )?,
            Format::Table => say!("[{}] {}", line.server, output::printable(&line.text))?,
        }
    }
    Ok(())
}

fn branch_json(b: &proto::Branch) -> Value {
    json!({"name": b.name, "commit": b.commit, "author": b.author, "time_ms": b.time_ms, "subject": b.subject})
}

/// `gantry branches --app APP`
pub async fn branches(client: &mut Client, app: String, format: Format) -> anyhow::Result<()> {
    let request = proto::ListBranchesRequest { app };
    let branches = client.list_branches(request).await?.into_inner().branches;
    if format == Format::Json {
        let list: Vec<_> = branches.iter().map(branch_json).collect();
        say!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = branches
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                output::short(&b.commit).to_owned(),
                b.author.clone(),
                output::time(b.time_ms),
                b.subject.clone(),
            ]
        })
        .collect();
    output::table(&["BRANCH", "COMMIT", "AUTHOR", "TIME", "SUBJECT"], &rows)?;
    Ok(())
}

/// `gantry branch create --app APP --name NAME [--from REV]`
pub async fn create_branch(
    client: &mut Client,
    app: String,
    name: String,
    from: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let request = proto::CreateBranchRequest {
        app,
        name,
        from: from.unwrap_or_default(),
    };
    let branch = client.create_branch(request).await?.into_inner();
    match format {
        Format::Json => say!("{}", branch_json(&branch))?,
        Format::Table => say!(
            "created {} at {} \"{}\"",
            branch.name,
            output::short(&branch.commit),
            branch.subject
        )?,
    }
    Ok(())
}
