//! The sample Java service used by `gantry demo` (and by the tests): a small
//! HTTP server on the JDK's own `com.sun.net.httpserver`, built with `javac`
//! and `jar`, so it needs no network.

use std::path::Path;

use anyhow::Context;

/// The build command of the sample app.
pub const BUILD_COMMAND: &str =
    "mkdir -p out target && javac -d out src/Main.java && jar cfe target/app.jar Main -C out .";

/// The artifact of the sample app.
pub const ARTIFACT: &str = "target/*.jar";

/// The port the sample app listens on.
pub const PORT: u16 = 8080;

/// The health path of the sample app.
pub const HEALTH_PATH: &str = "/health";

/// The sample app's source. `/` answers the greeting, `/health` 200, and
/// `/env/NAME` the value of the environment variable NAME.
pub fn main_java(greeting: &str) -> String {
    format!(
        r#"import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;

public class Main {{
    static final String GREETING = "{greeting}";

    public static void main(String[] args) throws Exception {{
        HttpServer server = HttpServer.create(new InetSocketAddress({PORT}), 0);
        server.createContext("/health", ex -> reply(ex, 200, "ok"));
        server.createContext("/env/", ex -> {{
            String name = ex.getRequestURI().getPath().substring("/env/".length());
            String value = System.getenv(name);
            reply(ex, value == null ? 404 : 200, value == null ? "unset" : value);
        }});
        server.createContext("/", ex -> reply(ex, 200, GREETING + " from " + System.getenv("GANTRY_APP")
            + " in " + System.getenv("GANTRY_ENV") + " at " + System.getenv("GANTRY_COMMIT")));
        server.start();
        System.out.println("listening on port {PORT}");
    }}

    static void reply(HttpExchange ex, int status, String body) throws java.io.IOException {{
        byte[] bytes = (body + "\n").getBytes(StandardCharsets.UTF_8);
        ex.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {{
            out.write(bytes);
        }}
    }}
}}
"#
    )
}

/// Creates a git repository at `dir` holding the sample app on `main`, with
/// one commit; returns that commit's id.
pub fn create_repo(dir: &Path, greeting: &str) -> anyhow::Result<String> {
    let repo =
        git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main"))
            .with_context(|| format!("cannot create a git repository in {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("src/Main.java"), main_java(greeting))?;
    std::fs::write(dir.join(".gitignore"), "out/\ntarget/\n")?;
    commit_all(&repo, "Sample service")
}

/// Commits every file of the work tree on the current branch; returns the commit id.
pub fn commit_all(repo: &git2::Repository, message: &str) -> anyhow::Result<String> {
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("Gantry Demo", "demo@gantry.invalid")?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
    Ok(oid.to_string())
}

/// Pushes `branch` of `repo` to the bare repository at `remote` (created if
/// missing), replacing what it had: the sample's "server" side, which Gantry
/// fetches from and pushes new branches to.
pub fn push_to_bare(repo: &git2::Repository, remote: &Path, branch: &str) -> anyhow::Result<()> {
    if !remote.exists() {
        git2::Repository::init_bare(remote)
            .with_context(|| format!("cannot create a bare repository in {}", remote.display()))?;
    }
    let mut target = repo.remote_anonymous(&format!("file://{}", remote.display()))?;
    target
        .push(&[format!("+refs/heads/{branch}:refs/heads/{branch}")], None)
        .with_context(|| format!("cannot push {branch} to {}", remote.display()))?;
    Ok(())
}
