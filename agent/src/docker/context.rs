//! The build context of a repo's own Dockerfile: the checkout, less what
//! its `.dockerignore` leaves out, packed as a tar on a blocking thread and
//! streamed to the engine in chunks, so a large checkout is never held
//! whole in memory. Symlinks are sent as links, never followed: a link in a
//! repo cannot pull a file of the agent's host into an image.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use tokio::sync::mpsc;

/// The file whose patterns leave paths out of the context.
pub const IGNORE_FILE: &str = ".dockerignore";

/// Bytes per chunk sent to the engine.
const CHUNK: usize = 64 * 1024;

/// Chunks in flight between the packer and the engine (1 MiB): the packer
/// waits for the engine rather than running ahead into memory.
const CHUNKS_IN_FLIGHT: usize = 16;

/// `.dockerignore` patterns, in order; the last one matching a path
/// decides, and a `!` pattern puts a path back.
#[derive(Debug, Default)]
pub struct Ignore {
    rules: Vec<(glob::Pattern, bool)>,
}

impl Ignore {
    /// Parses `.dockerignore` text: one pattern per line, `#` comments,
    /// blank lines skipped, leading `/` and `./` dropped.
    pub fn parse(text: &str) -> Result<Self, glob::PatternError> {
        let mut rules = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keep, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
            let pattern = pattern.trim_end_matches('/');
            if pattern.is_empty() {
                continue;
            }
            rules.push((glob::Pattern::new(pattern)?, !keep));
        }
        Ok(Self { rules })
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out:
    /// a pattern matches a path or any directory above it.
    pub fn excludes(&self, path: &Path) -> bool {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut excluded = false;
        for (pattern, excludes) in &self.rules {
            let matched = path
                .ancestors()
                .filter(|p| !p.as_os_str().is_empty())
                .any(|p| pattern.matches_path_with(p, options));
            if matched {
                excluded = *excludes;
            }
        }
        excluded
    }

    /// Whether some `!` pattern could put back a path under an excluded
    /// directory, so the directory must still be walked.
    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, excludes)| !excludes)
    }
}

/// Writes the checkout at `root` into `tar`, less what `ignore` excludes,
/// with symlinks as links.
pub fn append_checkout<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    ignore: &Ignore,
) -> std::io::Result<()> {
    tar.follow_symlinks(false);
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&dir))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = dir.join(entry.file_name());
            let kind = entry.file_type()?;
            let excluded = ignore.excludes(&rel);
            if kind.is_dir() {
                if !excluded {
                    tar.append_dir(&rel, entry.path())?;
                }
                if !excluded || ignore.has_exceptions() {
                    dirs.push(rel);
                }
            } else if !excluded {
                tar.append_path_with_name(entry.path(), &rel)?;
            }
        }
    }
    Ok(())
}

/// Runs `pack` on a blocking thread, writing into a tar whose bytes come
/// out of the returned stream as they are made; an error ends the stream
/// with that error.
pub fn stream_tar<F>(pack: F) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send
where
    F: FnOnce(&mut tar::Builder<ChunkWriter>) -> std::io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut tar = tar::Builder::new(ChunkWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        });
        // Links go in as links, as Docker's own context does: a link the
        // build made (`target/app.jar -> /etc/shadow`) must not bring in
        // what the build user cannot read.
        tar.follow_symlinks(false);
        let packed = pack(&mut tar).and_then(|()| tar.into_inner()?.flush());
        if let Err(e) = packed {
            let _ = tx.blocking_send(Err(e));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A writer that sends what it is given in chunks down a channel; a closed
/// channel (the build was abandoned) is a broken pipe, which stops the
/// packer.
pub struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(rules: &str, path: &str) -> bool {
        Ignore::parse(rules).unwrap().excludes(Path::new(path))
    }

    #[test]
    fn patterns_follow_dockerignore() {
        let rules =
            "# build output\ntarget\n/.git\n*.log\n**/secret.txt\ndocs/*.md\n!docs/README.md\n";
        assert!(excluded(rules, "target"));
        assert!(
            excluded(rules, "target/app.jar"),
            "under an excluded directory"
        );
        assert!(excluded(rules, ".git/config"));
        assert!(excluded(rules, "build.log"));
        assert!(!excluded(rules, "logs/build.log"), "* does not cross a /");
        assert!(excluded(rules, "a/b/secret.txt"));
        assert!(excluded(rules, "secret.txt"));
        assert!(excluded(rules, "docs/guide.md"));
        assert!(!excluded(rules, "docs/README.md"), "put back by !");
        assert!(!excluded(rules, "src/Main.java"));
        assert!(!excluded("", "anything"));
    }

    #[test]
    fn the_context_leaves_out_what_is_ignored_and_keeps_links_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("target/classes")).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("target/classes/A.class"), "x").unwrap();
        std::fs::write(root.join("target/keep.jar"), "jar").unwrap();
        std::fs::write(root.join("src/Main.java"), "class Main {}").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("src/host")).unwrap();
        let ignore = Ignore::parse("target\n!target/keep.jar\n").unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        append_checkout(&mut tar, root, &ignore).unwrap();
        let bytes = tar.into_inner().unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let kind = entry.header().entry_type();
            seen.push((
                entry.path().unwrap().display().to_string(),
                kind.is_symlink(),
            ));
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                ("src".to_owned(), false),
                ("src/Main.java".to_owned(), false),
                ("src/host".to_owned(), true),
                ("target/keep.jar".to_owned(), false),
            ]
        );
    }

    #[tokio::test]
    async fn a_streamed_tar_arrives_whole_in_chunks() {
        use futures::StreamExt;
        let big = vec![7u8; 3 * CHUNK + 5];
        let stream = stream_tar(move |tar| {
            let mut header = tar::Header::new_gnu();
            header.set_size(big.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, "big", big.as_slice())
        });
        let chunks: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        let whole: Vec<u8> = chunks.concat();
        let mut archive = tar::Archive::new(whole.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        assert_eq!(data.len(), 3 * CHUNK + 5);
    }
}
