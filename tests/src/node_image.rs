//! An image of Gantry's own binaries, built locally (nothing is pulled), so
//! tests can run the coordinator and agents as separate hosts on a private
//! Docker network and cut them off from it. It holds the binaries, the
//! shell and the few tools the build commands use, all taken from this
//! machine, and the shared libraries each of them links.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use bollard::{query_parameters::CreateImageOptionsBuilder, Docker};
use futures::StreamExt;

/// The host's tools the tests' build commands use, copied into the image's
/// `/bin` (`sh` is whatever the host's `/bin/sh` is: dash on Debian).
const TOOLS: &[&str] = &[
    "sh", "sleep", "mkdir", "cp", "cat", "ls", "rm", "seq", "sed", "test", "[",
];

/// Where a tool is looked for on the host, in this order.
const TOOL_DIRS: &[&str] = &["/bin", "/usr/bin"];

/// The directory of the workspace's built binaries (next to this test binary).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binaries live in target/<profile>/deps")?;
    for bin in ["gantry", "gantry-agent", "gantry-coordinator"] {
        if !dir.join(bin).exists() {
            bail!(
                "{} is not built; run the tests with `scripts/test` (or `cargo test --workspace`)",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir.to_owned())
}

/// Builds `tag` from the workspace's binaries, labelled `labels`.
pub async fn build(docker: &Docker, tag: &str, label: &str) -> anyhow::Result<()> {
    let bins = bin_dir()?;
    let root = tempfile::tempdir()?;
    let rootfs = {
        let root = root.path().to_owned();
        tokio::task::spawn_blocking(move || assemble(&root, &bins)).await??
    };
    let (repo, version) = tag.split_once(':').context("the tag names a version")?;
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(version)
        .changes(vec![
            format!("LABEL {label}"),
            "ENV PATH=/usr/local/bin:/bin".into(),
        ])
        .build();
    let mut progress =
        docker.create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
    while let Some(step) = progress.next().await {
        step.with_context(|| format!("cannot import {tag}"))?;
    }
    Ok(())
}

fn assemble(root: &Path, bins: &Path) -> anyhow::Result<Vec<u8>> {
    let local = root.join("usr/local/bin");
    std::fs::create_dir_all(&local)?;
    let mut libraries = BTreeSet::new();
    for bin in ["gantry-agent", "gantry-coordinator"] {
        let target = local.join(bin);
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(bins.join(bin))
            .arg(&target)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            std::fs::copy(bins.join(bin), &target)?;
        }
        linked_libraries(&target, &mut libraries)?;
    }
    std::fs::create_dir_all(root.join("bin"))?;
    for tool in TOOLS {
        let host = host_tool(tool)?;
        std::fs::copy(&host, root.join("bin").join(tool))
            .with_context(|| format!("cannot copy {}", host.display()))?;
        linked_libraries(&host, &mut libraries)?;
    }
    for lib in libraries {
        let target = root.join(lib.strip_prefix("/")?);
        std::fs::create_dir_all(target.parent().context("libraries sit in a directory")?)?;
        std::fs::copy(&lib, &target).with_context(|| format!("cannot copy {}", lib.display()))?;
    }
    for dir in ["tmp", "etc", "work"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", root)?;
    Ok(tar.into_inner()?)
}

/// Where this machine has `tool` (following symlinks, so `/bin/sh` gives
/// the shell itself).
fn host_tool(tool: &str) -> anyhow::Result<PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
        .with_context(|| format!("this machine has no {tool} in {TOOL_DIRS:?}"))?
        .canonicalize()
        .with_context(|| format!("cannot resolve {tool}"))
}

/// Adds the shared libraries `binary` links (as `ldd` names them, the
/// dynamic loader included) to `libraries`.
fn linked_libraries(binary: &Path, libraries: &mut BTreeSet<PathBuf>) -> anyhow::Result<()> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.insert(PathBuf::from(path));
        }
    }
    Ok(())
}
