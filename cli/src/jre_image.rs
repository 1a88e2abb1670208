//! Builds a Java runtime base image locally, for machines whose Docker engine
//! reaches no registry (air-gapped servers, CI sandboxes, the demo): a
//! `jlink` runtime of the machine's JDK plus the shared libraries it links,
//! imported as an image through the Docker API.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use bollard::{query_parameters::CreateImageOptionsBuilder, Docker};
use futures::StreamExt;

/// The image the demo and the tests deploy onto.
pub const JRE_IMAGE: &str = "gantry-jre:17";

/// Modules of the runtime: enough for an HTTP service on the JDK's own
/// server. Real apps use a full base image such as `eclipse-temurin:17-jre`.
const MODULES: &str = "java.base,jdk.httpserver,java.logging";

/// Builds [`JRE_IMAGE`] unless the engine already has it.
pub async fn ensure(docker: &Docker) -> anyhow::Result<()> {
    if docker.inspect_image(JRE_IMAGE).await.is_ok() {
        return Ok(());
    }
    let root = tempfile::tempdir().context("cannot create a temporary directory")?;
    let rootfs = tokio::task::spawn_blocking({
        let root = root.path().to_owned();
        move || assemble(&root)
    })
    .await??;
    let (repo, tag) = JRE_IMAGE.split_once(':').expect("the image name has a tag");
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .build();
    let mut progress =
        docker.create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
    while let Some(step) = progress.next().await {
        step.with_context(|| format!("cannot import {JRE_IMAGE} into Docker"))?;
    }
    docker
        .inspect_image(JRE_IMAGE)
        .await
        .with_context(|| format!("{JRE_IMAGE} is missing after its import"))?;
    Ok(())
}

/// Lays out the root filesystem under `root` and returns it as a tar.
fn assemble(root: &Path) -> anyhow::Result<Vec<u8>> {
    let jre = root.join("opt/jre");
    let status = Command::new("jlink")
        .args([
            "--add-modules",
            MODULES,
            "--strip-debug",
            "--no-man-pages",
            "--no-header-files",
            "--output",
        ])
        .arg(&jre)
        .status()
        .context("cannot run jlink: install a JDK 17 (it provides jlink)")?;
    if !status.success() {
        bail!("jlink failed with {status}");
    }
    let mut binaries = vec![jre.join("bin/java")];
    collect_so(&jre.join("lib"), &mut binaries)?;
    let mut libraries = BTreeSet::new();
    for binary in &binaries {
        libraries.extend(linked_libraries(binary)?);
    }
    for lib in libraries.iter().filter(|l| !l.starts_with(root)) {
        let target = root.join(lib.strip_prefix("/").unwrap_or(lib));
        std::fs::create_dir_all(target.parent().expect("library paths have a parent"))?;
        std::fs::copy(lib, &target).with_context(|| format!("cannot copy {}", lib.display()))?;
    }
    std::fs::create_dir_all(root.join("usr/bin"))?;
    std::os::unix::fs::symlink("/opt/jre/bin/java", root.join("usr/bin/java"))?;
    std::fs::create_dir_all(root.join("tmp"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;

    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", root)?;
    Ok(tar.into_inner()?)
}

fn collect_so(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_so(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "so") {
            out.push(path);
        }
    }
    Ok(())
}

/// The absolute paths `ldd` names for `binary`.
fn linked_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
