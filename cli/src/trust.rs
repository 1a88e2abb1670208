//! `gantry login`, `whoami`, `approve`, `reject`, `audit` and
//! `agent revoke`.

use crate::say;
use std::path::Path;

use gantry_shared::proto;
use serde_json::json;

use crate::{
    commands::{print_job, Client},
    login,
    output::{self, Format},
};

/// `gantry login`
pub async fn login(coordinator: &str, token: String, ca: Option<&Path>) -> anyhow::Result<()> {
    let me = login::login(coordinator, token, ca).await?;
    say!(
        "logged in to {coordinator} as {} ({}); saved in {}",
        me.name,
        roles(&me.roles),
        login::config_dir().join("credentials.toml").display()
    )?;
    Ok(())
}

fn roles(roles: &[String]) -> String {
    match roles.is_empty() {
        true => "no role".into(),
        false => format!("roles {}", roles.join(", ")),
    }
}

/// `gantry whoami`
pub async fn whoami(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let me = client.who_am_i(proto::WhoAmIRequest {}).await?.into_inner();
    match format {
        Format::Json => say!(
            "{}",
            json!({"name": me.name, "roles": me.roles, "deploy": me.deploy, "approve": me.approve})
        )?,
        Format::Table => {
            say!("{} ({})", me.name, roles(&me.roles))?;
            say!("  deploys to: {}", list(&me.deploy))?;
            say!("  approves:   {}", list(&me.approve))?;
        }
    }
    Ok(())
}

fn list(items: &[String]) -> String {
    match items.is_empty() {
        true => "-".into(),
        false => items.join(", "),
    }
}

/// `gantry approve JOB` / `gantry reject JOB`
pub async fn decide(
    client: &mut Client,
    job_id: u64,
    approve: bool,
    comment: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let request = proto::ApproveRequest {
        job_id,
        comment: comment.unwrap_or_default(),
    };
    let job = match approve {
        true => client.approve(request).await?,
        false => client.reject(request).await?,
    }
    .into_inner();
    match format {
        Format::Json => say!("{}", output::job_json(&job))?,
        Format::Table => print_job(&job)?,
    }
    Ok(())
}

/// `gantry audit`: the newest `limit` entries, read a page at a time (the
/// coordinator answers a few hundred per call, each page under the
/// message cap), then printed together.
pub async fn audit(client: &mut Client, limit: u32, format: Format) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut before_seq = 0;
    while (entries.len() as u64) < u64::from(limit) {
        let request = proto::ListAuditRequest {
            limit: limit - entries.len() as u32,
            before_seq,
        };
        let page = client.list_audit(request).await?.into_inner();
        let got = page.entries.len();
        entries.extend(page.entries);
        before_seq = page.next_before_seq;
        if before_seq == 0 || got == 0 {
            break;
        }
    }
    if format == Format::Json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| json!({"seq": e.seq, "at_ms": e.at_ms, "who": e.who, "peer": e.peer, "action": e.action, "target": e.target, "allowed": e.allowed, "detail": e.detail}))
            .collect();
        say!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                output::time(e.at_ms),
                e.who.clone(),
                e.peer.clone(),
                e.action.clone(),
                e.target.clone(),
                if e.allowed { "ok" } else { "REFUSED" }.to_owned(),
                e.detail.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "SEQ", "WHEN", "WHO", "FROM", "ACTION", "TARGET", "OUTCOME", "DETAIL",
        ],
        &rows,
    )?;
    Ok(())
}

/// `gantry agent revoke NAME`
pub async fn revoke(client: &mut Client, name: String) -> anyhow::Result<()> {
    let revoked = client
        .revoke_agent(proto::RevokeAgentRequest { name: name.clone() })
        .await?
        .into_inner();
    say!(
        "revoked agent {name}: certificates {}; it is disconnected and will be refused",
        revoked.serials.join(", ")
    )?;
    Ok(())
}
