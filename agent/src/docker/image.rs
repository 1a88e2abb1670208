//! Building an app's image: the generated Dockerfile (or the repo's own)
//! and Gantry's labels, packed into a build context and handed to the
//! engine, with the builder's output streamed into the job's log.

use std::{collections::HashMap, path::Path};

use bollard::{query_parameters::BuildImageOptionsBuilder, Docker};
use futures::StreamExt;

use super::{
    context::{self, ChunkWriter},
    DockerError,
};
use crate::report::{Reporter, Tail};

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

/// The name, in the build context, of the Dockerfile Gantry hands the
/// builder: the generated one, or a copy of the repo's own with Gantry's
/// labels added. Unlikely to clash with a file of the repo.
const CONTEXT_DOCKERFILE: &str = ".gantry.Dockerfile";

/// One `LABEL` instruction carrying every label, sorted: the classic
/// builder makes one step (and one container commit, about a second each)
/// per `LABEL` instruction and per label passed as a build option, so nine
/// labels as options cost about 9 s where this line costs one step.
pub fn label_instruction(labels: &HashMap<String, String>) -> String {
    let quote = |text: &str| {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', " ");
        format!("\"{escaped}\"")
    };
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    let pairs: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
        .collect();
    format!("LABEL {}\n", pairs.join(" "))
}

/// The Dockerfile handed to the builder: the generated one or the repo's
/// own, with `labels` on one line at the end (so on the final stage of a
/// multi-stage Dockerfile).
fn dockerfile_text(
    source: &ImageSource<'_>,
    labels: &HashMap<String, String>,
) -> std::io::Result<String> {
    let mut text = match source {
        ImageSource::Base { image, port, .. } => generated_dockerfile(image, *port),
        ImageSource::Dockerfile { workspace, path } => {
            let mut own = std::fs::read_to_string(workspace.join(path)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot read the app's Dockerfile {path} in the checkout: {e}"),
                )
            })?;
            if !own.ends_with('\n') {
                own.push('\n');
            }
            own
        }
    };
    if !labels.is_empty() {
        text += &label_instruction(labels);
    }
    Ok(text)
}

/// What goes into the build context, owned, for the packing thread.
type Packer = Box<dyn FnOnce(&mut tar::Builder<ChunkWriter>) -> std::io::Result<()> + Send>;

/// How to pack the context of `source` with `dockerfile` in it: the jar
/// alone for a generated Dockerfile; the checkout less its `.dockerignore`
/// for the repo's own.
fn packer(source: &ImageSource<'_>, dockerfile: String) -> std::io::Result<Packer> {
    let add_dockerfile = move |tar: &mut tar::Builder<ChunkWriter>| {
        let mut header = tar::Header::new_gnu();
        header.set_size(dockerfile.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, CONTEXT_DOCKERFILE, dockerfile.as_bytes())
    };
    Ok(match source {
        ImageSource::Base { artifact, .. } => {
            let artifact = artifact.to_path_buf();
            Box::new(move |tar| {
                tar.append_path_with_name(&artifact, "app.jar")?;
                add_dockerfile(tar)
            })
        }
        ImageSource::Dockerfile { workspace, .. } => {
            let ignore = match std::fs::read_to_string(workspace.join(context::IGNORE_FILE)) {
                Ok(text) => context::Ignore::parse(&text).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the checkout's {}: {e}", context::IGNORE_FILE),
                    )
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => context::Ignore::default(),
                Err(e) => return Err(e),
            };
            let workspace = workspace.to_path_buf();
            Box::new(move |tar| {
                context::append_checkout(tar, &workspace, &ignore)?;
                add_dockerfile(tar)
            })
        }
    })
}

/// Builds `tag` from `source`, streaming the builder's output to `report`.
pub async fn build_image(
    docker: &Docker,
    source: ImageSource<'_>,
    tag: &str,
    labels: &HashMap<String, String>,
    report: &Reporter,
) -> Result<(), DockerError> {
    let mut lost_layer = false;
    loop {
        match build_once(docker, &source, tag, labels, report).await {
            Err(DockerError::Build(why)) if !lost_layer && why.contains(LOST_PARENT) => {
                lost_layer = true;
                report
                    .system(
                        "the engine removed a cached layer this build stood on \
                         (another image's removal, at the same time); building again"
                            .to_owned(),
                    )
                    .await;
            }
            built => return built,
        }
    }
}

/// What the engine answers when a layer the build cached was removed under
/// it: the classic builder reuses the layers images share, and removing
/// one image removes its parent layers that no other image holds, also
/// while another build is standing on them. Building again makes the
/// layer anew, so one retry is enough.
const LOST_PARENT: &str = "unknown parent image ID";

/// One build of `source` as `tag`.
async fn build_once(
    docker: &Docker,
    source: &ImageSource<'_>,
    tag: &str,
    labels: &HashMap<String, String>,
    report: &Reporter,
) -> Result<(), DockerError> {
    let pack = dockerfile_text(source, labels)
        .and_then(|text| packer(source, text))
        .map_err(DockerError::Context)?;
    let body = bollard::body_try_stream(context::stream_tar(pack));
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(CONTEXT_DOCKERFILE)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(body));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_goes_on_one_line_quoted() {
        let labels = HashMap::from([
            ("gantry.job".to_owned(), "7".to_owned()),
            ("gantry.app".to_owned(), "shop".to_owned()),
            ("odd".to_owned(), "a \"quoted\" \\ value\nnext".to_owned()),
        ]);
        assert_eq!(
            label_instruction(&labels),
            "LABEL \"gantry.app\"=\"shop\" \"gantry.job\"=\"7\" \"odd\"=\"a \\\"quoted\\\" \\\\ value next\"\n"
        );
    }

    #[test]
    fn the_labels_come_last_in_a_repos_own_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM a AS build\nFROM b").unwrap();
        let source = ImageSource::Dockerfile {
            workspace: dir.path(),
            path: "Dockerfile",
        };
        let labels = HashMap::from([("gantry.app".to_owned(), "shop".to_owned())]);
        assert_eq!(
            dockerfile_text(&source, &labels).unwrap(),
            "FROM a AS build\nFROM b\nLABEL \"gantry.app\"=\"shop\"\n"
        );
        let missing = ImageSource::Dockerfile {
            workspace: dir.path(),
            path: "docker/Dockerfile",
        };
        let err = dockerfile_text(&missing, &labels).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read the app's Dockerfile docker/Dockerfile"),
            "{err}"
        );
    }
}
