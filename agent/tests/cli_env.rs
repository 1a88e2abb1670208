//! The `gantry-agent` binary with its documented variables set: each
//! subcommand still parses and reaches its own work, whichever variables
//! are set (one at a time, all at once, or none), and the foreground agent
//! takes its settings from the variables as from the flags.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The binary under test.
const AGENT: &str = env!("CARGO_BIN_EXE_gantry-agent");

/// Longest a proxy may take to answer on its control socket.
const PROXY_START: Duration = Duration::from_secs(10);

/// Every variable the agent documents, with a value of the right shape.
fn documented(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("GANTRY_COORDINATOR", "http://127.0.0.1:9".into()),
        ("GANTRY_ENV", "dev".into()),
        ("GANTRY_AGENT_NAME", "ae-cli-1".into()),
        ("GANTRY_WORK_DIR", dir.join("work").display().to_string()),
        ("GANTRY_TLS_DIR", dir.join("tls").display().to_string()),
        ("GANTRY_JOIN_TOKEN", "not-a-token".into()),
    ]
}

/// The sets tried: none, each variable alone, all of them, and all with a
/// malformed environment name (which only the foreground agent reads).
fn variable_sets(dir: &Path) -> Vec<Vec<(&'static str, String)>> {
    let all = documented(dir);
    let mut sets = vec![Vec::new()];
    sets.extend(all.iter().cloned().map(|one| vec![one]));
    sets.push(all.clone());
    let mut malformed = all;
    malformed[1].1 = "Not An Env".into();
    sets.push(malformed);
    sets
}

/// The binary with exactly `vars` (and PATH) as its environment.
fn agent(vars: &[(&str, String)]) -> Command {
    let mut command = Command::new(AGENT);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k, v)));
    command
}

fn run(vars: &[(&str, String)], args: &[&str]) -> Output {
    agent(vars)
        .args(args)
        .output()
        .expect("the agent binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Sends one control command to a proxy and reads its answer.
fn ask(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(PROXY_START))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim().to_owned())
}

/// `proxy ...` starts, answers on its control socket and stops when told.
fn proxy_serves(vars: &[(&str, String)], dir: &Path) -> Result<(), String> {
    let socket = dir.join("p.sock");
    let mut child = agent(vars)
        .args(["proxy", "--listen", "127.0.0.1:0", "--control"])
        .arg(&socket)
        .arg("--state")
        .arg(dir.join("p.route"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent binary runs");
    let until = Instant::now() + PROXY_START;
    let answered = loop {
        if let Ok(answer) = ask(&socket, "status") {
            break Ok(answer);
        }
        if let Ok(Some(_)) = child.try_wait() {
            break Err("it exited".to_owned());
        }
        if Instant::now() > until {
            break Err("it did not answer".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let outcome = match answered {
        Ok(answer) if answer == "route none" => ask(&socket, "stop")
            .map_err(|e| e.to_string())
            .and_then(|stopped| match child.wait() {
                Ok(status) if status.success() && stopped == "ok" => Ok(()),
                other => Err(format!("stop answered {stopped:?}, exit {other:?}")),
            }),
        Ok(answer) => Err(format!("status answered {answer:?}")),
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("the proxy is reaped");
    outcome.map_err(|e| format!("{e}; stderr: {}", String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn every_subcommand_parses_and_runs_whatever_variables_are_set() {
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (n, vars) in variable_sets(scratch.path()).iter().enumerate() {
        let dir: PathBuf = scratch.path().join(format!("set-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<&str> = vars.iter().map(|(k, _)| *k).collect();
        let mut check = |what: &str, ok: bool, detail: String| {
            if !ok {
                failures.push(format!("{what} with {names:?}:\n{detail}"));
            }
        };

        let config = dir.join("agent.toml");
        let missing = dir.join("missing.toml");
        let out = run(vars, &["run", "--config", path(&missing)]);
        check(
            "run",
            text(&out).contains("cannot read config file"),
            text(&out),
        );

        let out = run(
            vars,
            &[
                "join",
                "--coordinator",
                "http://127.0.0.1:9",
                "--token",
                "bad",
            ],
        );
        check(
            "join",
            text(&out).contains("malformed join token"),
            text(&out),
        );

        let (unit_dir, config_arg) = (dir.join("units"), path(&config).to_owned());
        let target = [
            "--no-systemctl",
            "--unit-dir",
            path(&unit_dir),
            "--config",
            &config_arg,
        ];
        let mut install = vec!["install", "--env", "dev", "--name", "ae-cli-1"];
        install.extend(target);
        let out = run(vars, &install);
        check(
            "install",
            out.status.success()
                && config.exists()
                && unit_dir.join("gantry-agent.service").exists(),
            text(&out),
        );
        let mut uninstall = vec!["uninstall"];
        uninstall.extend(target);
        let out = run(vars, &uninstall);
        check(
            "uninstall",
            out.status.success() && !config.exists(),
            text(&out),
        );

        if let Err(e) = proxy_serves(vars, &dir) {
            check("proxy", false, e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_foreground_agent_takes_its_settings_from_variables_or_flags() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("no-certificate-here");
    let work = dir.path().join("work");
    // An https coordinator needs the certificate `join` writes: the agent
    // says where it looked before it does anything else, which shows the
    // settings it was given.
    let expected = format!("cannot read {}", tls.join("agent.pem").display());
    let from_variables = run(
        &[
            ("GANTRY_COORDINATOR", "https://127.0.0.1:9".into()),
            ("GANTRY_ENV", "dev".into()),
            ("GANTRY_AGENT_NAME", "ae-cli-2".into()),
            ("GANTRY_WORK_DIR", path(&work).into()),
            ("GANTRY_TLS_DIR", path(&tls).into()),
        ],
        &[],
    );
    assert!(
        text(&from_variables).contains(&expected),
        "{}",
        text(&from_variables)
    );
    assert!(work.exists(), "the work dir came from GANTRY_WORK_DIR");

    let from_flags = run(
        &[("GANTRY_COORDINATOR", "http://127.0.0.1:9".into())],
        &[
            "--coordinator",
            "https://127.0.0.1:9",
            "--env",
            "dev",
            "--name",
            "ae-cli-2",
            "--work-dir",
            path(&work),
            "--tls-dir",
            path(&tls),
        ],
    );
    assert!(
        text(&from_flags).contains(&expected),
        "{}",
        text(&from_flags)
    );

    let unnamed = run(&[("GANTRY_COORDINATOR", "http://127.0.0.1:9".into())], &[]);
    assert!(
        !unnamed.status.success()
            && text(&unnamed)
                .contains("give --env and --name (or GANTRY_ENV and GANTRY_AGENT_NAME)"),
        "{}",
        text(&unnamed)
    );
    let malformed = run(
        &[
            ("GANTRY_ENV", "Not An Env".into()),
            ("GANTRY_AGENT_NAME", "ae-cli-2".into()),
        ],
        &[],
    );
    assert!(
        text(&malformed).contains("--env (GANTRY_ENV)"),
        "{}",
        text(&malformed)
    );
    // Flags typed before a subcommand are still an error, not ignored.
    let mixed = run(&[], &["--env", "dev", "run", "--config", "x.toml"]);
    assert!(
        text(&mixed).contains("cannot be used with"),
        "{}",
        text(&mixed)
    );
}

/// `--coordinator` takes several URLs separated by commas: a bad one is
/// named with its place before anything is done, and `install` writes the
/// whole list into the config the service runs with.
#[test]
fn a_list_of_coordinators_is_checked_and_installed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let bad = run(
        &[],
        &[
            "--coordinator",
            "http://127.0.0.1:9,127.0.0.1:10",
            "--env",
            "dev",
            "--name",
            "ae-cli-3",
            "--work-dir",
            path(&work),
        ],
    );
    let said = text(&bad);
    assert!(!bad.status.success(), "{said}");
    assert!(
        said.contains("--coordinator (GANTRY_COORDINATOR)")
            && said.contains("coordinator 2 of the list")
            && said.contains("\"127.0.0.1:10\" must start with https://"),
        "{said}"
    );
    assert!(!work.exists(), "nothing was done: {said}");

    let config = dir.path().join("agent.toml");
    let installed = run(
        &[],
        &[
            "install",
            "--coordinator",
            "http://127.0.0.1:9, http://127.0.0.1:10",
            "--env",
            "dev",
            "--name",
            "ae-cli-3",
            "--config",
            path(&config),
            "--unit-dir",
            path(&dir.path().join("units")),
            "--no-systemctl",
        ],
    );
    assert!(installed.status.success(), "{}", text(&installed));
    let written = gantry_shared::config::agent::AgentConfig::load(&config).unwrap();
    assert_eq!(
        written.coordinator,
        "http://127.0.0.1:9, http://127.0.0.1:10"
    );
}
