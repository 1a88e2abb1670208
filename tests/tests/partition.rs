//! Partitions across real hosts: the coordinator and two agents each run in
//! their own container (an image of this workspace's binaries, built
//! locally) on a private Docker network; the agents drive the host's Docker
//! engine through its socket. One agent is cut off for 60 seconds in the
//! middle of a build; the other past its lease.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Context;
use bollard::{
    models::{
        ContainerCreateBody, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
        NetworkDisconnectRequest, PortBinding,
    },
    query_parameters::CreateContainerOptionsBuilder,
    Docker,
};
use gantry_agent::docker::{self, label};
use gantry_cli::{jre_image, sample};
use gantry_shared::{proto, JobState};
use gantry_tests::*;

const APP: &str = "e2e-partition";
const IMAGE: &str = "gantry-node:e2e-partition";
/// The lease is what separates the two cuts: a cut shorter than the lease
/// is waited out, a longer one loses the agent. A 60-second cut waited out
/// needs a lease over 60 seconds; the default (15 s) finds an agent gone for
/// good within 20 seconds, and a site whose network drops for a minute at a
/// time sets `agent_lease_secs` above that, as here.
const LEASE_SECS: u64 = 70;

/// Compiles the sample app with `greeting` into a jar, on this host.
fn build_jar(dir: &Path, greeting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("src/Main.java"), sample::main_java(greeting))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(sample::BUILD_COMMAND)
        .current_dir(dir)
        .status()?;
    anyhow::ensure!(status.success(), "javac failed");
    Ok(std::fs::read(dir.join("target/app.jar"))?)
}

/// Starts a container of the node image on `network`.
async fn node(
    engine: &Docker,
    name: &str,
    network: &str,
    cmd: Vec<String>,
    binds: Vec<String>,
    publish: Option<u16>,
) -> anyhow::Result<String> {
    let mut host = HostConfig {
        network_mode: Some(network.into()),
        binds: Some(binds),
        ..Default::default()
    };
    let mut exposed = None;
    if let Some(port) = publish {
        let key = format!("{port}/tcp");
        let binding = PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(String::new()),
        };
        host.port_bindings = Some(HashMap::from([(key.clone(), Some(vec![binding]))]));
        exposed = Some(vec![key]);
    }
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(cmd),
        env: Some(vec!["RUST_LOG=info".into()]),
        labels: Some(HashMap::from([
            (label::APP.to_owned(), APP.to_owned()),
            ("gantry.role".to_owned(), name.to_owned()),
        ])),
        exposed_ports: exposed,
        host_config: Some(host),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let id = engine.create_container(Some(options), body).await?.id;
    engine.start_container(&id, None).await?;
    Ok(id)
}

/// (IP on `network`, that network's gateway, published host port of 7700 if any).
async fn addresses(
    engine: &Docker,
    id: &str,
    network: &str,
) -> anyhow::Result<(String, String, Option<u16>)> {
    let settings = engine
        .inspect_container(id, None)
        .await?
        .network_settings
        .context("no network settings")?;
    let net = settings
        .networks
        .and_then(|mut n| n.remove(network))
        .context("not on the network")?;
    let port = settings
        .ports
        .and_then(|mut p| p.remove("7700/tcp").flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port?.parse().ok()));
    Ok((
        net.ip_address.unwrap_or_default(),
        net.gateway.unwrap_or_default(),
        port,
    ))
}

/// Removes the test's network even when the test fails.
struct NetworkGuard(String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let _ = remove_app_objects(APP).await;
                if let Ok(engine) = docker::connect().await {
                    let _ = engine.remove_network(&name).await;
                }
            });
        })
        .join();
    }
}

async fn job(client: &mut Client, id: u64) -> anyhow::Result<proto::Job> {
    Ok(client
        .get_job(proto::GetJobRequest { id })
        .await?
        .into_inner())
}

async fn all_lines(client: &mut Client, id: u64) -> anyhow::Result<Vec<proto::LogLine>> {
    let request = proto::StreamJobLogsRequest {
        job_id: id,
        from_seq: 1,
        follow: false,
    };
    let mut stream = client.stream_job_logs(request).await?.into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.message().await? {
        lines.push(line);
    }
    Ok(lines)
}

async fn wait_for_line(client: &mut Client, id: u64, text: &str) -> anyhow::Result<()> {
    eventually(
        &format!("job {id} to print {text:?}"),
        DEPLOY_DEADLINE,
        || {
            let mut client = client.clone();
            async move {
                Ok(all_lines(&mut client, id)
                    .await?
                    .iter()
                    .any(|l| l.text == text)
                    .then_some(()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cut_off_from_the_coordinator_lose_nothing() -> anyhow::Result<()> {
    remove_app_objects(APP).await?;
    let engine = docker::connect().await?;
    jre_image::ensure(&engine).await?;
    gantry_tests::node_image::build(&engine, IMAGE, &format!("{}={APP}", label::APP)).await?;
    let network = format!("gantry-{APP}-{}", std::process::id());
    engine
        .create_network(NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(label::APP.to_owned(), APP.to_owned())])),
            ..Default::default()
        })
        .await?;
    let _guard = NetworkGuard(network.clone());

    // The app's repository holds prebuilt jars; the build waits at a gate
    // (printing a tick every half second) and then copies the jar in.
    let scratch = tempfile::tempdir()?;
    let root = scratch.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("prebuilt"))?;
    sample::create_repo(&repo, "unused")?;
    std::fs::write(
        repo.join("prebuilt/app.jar"),
        build_jar(&root.join("jar-v1"), "Release one")?,
    )?;
    let git = git2::Repository::open(&repo)?;
    sample::commit_all(&git, "release one")?;
    let gates = root.join("gates");
    std::fs::create_dir_all(&gates)?;
    let build = format!(
        "echo building; i=0; while [ ! -f {gates}/$GANTRY_ENV ]; do i=$((i+1)); echo tick $i; sleep 0.5; done; \
         mkdir -p target; cp prebuilt/app.jar target/app.jar",
        gates = gates.display()
    );
    let config_dir = root.join("config");
    std::fs::create_dir_all(&config_dir)?;
    // The coordinator listens on the network, so it speaks TLS: agents reach
    // it by its container name, the test by the published port.
    let tls_dir = config_dir.join("data").join("tls");
    gantry_coordinator::trust::ca::init(&tls_dir, &[format!("{APP}-coordinator")])?;
    let token = gantry_coordinator::trust::ca::new_api_token();
    std::fs::write(
        config_dir.join("coordinator.toml"),
        format!(
            "listen = \"0.0.0.0:7700\"\ndata_dir = \"data\"\nheartbeat_secs = 2\nagent_lease_secs = {LEASE_SECS}\n\
             [[environments]]\nname = \"dev\"\n[[environments]]\nname = \"test\"\n\
             [[apps]]\nname = \"{APP}\"\nremote = \"file://{}\"\nbuild_command = '''{build}'''\nartifact = \"target/app.jar\"\n\
             base_image = \"{}\"\ncontainer_port = {}\nhealth_path = \"/health\"\n\
             [[users]]\nname = \"tester\"\nroles = [\"ops\"]\ntoken_sha256 = \"{}\"\n",
            repo.display(),
            jre_image::JRE_IMAGE,
            sample::PORT,
            gantry_shared::tls::fingerprint(token.as_bytes()),
        ),
    )?;

    let coordinator = node(
        &engine,
        &format!("{APP}-coordinator"),
        &network,
        vec![
            "gantry-coordinator".into(),
            "--config".into(),
            "/config/coordinator.toml".into(),
        ],
        vec![
            format!("{}:/config", config_dir.display()),
            format!("{0}:{0}:ro", repo.display()),
        ],
        Some(7700),
    )
    .await?;
    let (_, gateway, port) = addresses(&engine, &coordinator, &network).await?;
    let url = format!(
        "https://127.0.0.1:{}",
        port.context("the coordinator's port is published")?
    );
    let ca_pem = std::fs::read_to_string(tls_dir.join("ca.pem"))?;
    let mut client = eventually("the coordinator to answer", Duration::from_secs(30), || {
        let (url, token, ca_pem) = (url.clone(), token.clone(), ca_pem.clone());
        async move {
            Ok(
                gantry_cli::commands::connect_with(&url, Some(token), Some(ca_pem))
                    .await
                    .ok(),
            )
        }
    })
    .await?;
    let authority = gantry_coordinator::trust::Authority::load(&tls_dir)?;
    let coordinator_url = format!("https://{APP}-coordinator:7700");
    let mut agents = HashMap::new();
    for (env, name) in [("dev", "dev-1"), ("test", "test-1")] {
        let work = root.join(name);
        std::fs::create_dir_all(&work)?;
        let join = authority.enroll(env.parse()?, name.parse()?, Duration::from_secs(600));
        gantry_agent::join::join(&url, &join.to_string(), &work.join("tls")).await?;
        let cmd = [
            "gantry-agent",
            "--coordinator",
            &coordinator_url,
            "--tls-dir",
            "/work/tls",
            "--env",
            env,
            "--name",
            name,
            "--work-dir",
            "/work",
            "--health-host",
            &gateway,
            "--public-host",
            "127.0.0.1",
        ];
        let binds = vec![
            "/var/run/docker.sock:/var/run/docker.sock".to_owned(),
            format!("{}:/work", work.display()),
            format!("{0}:{0}:ro", repo.display()),
            format!("{0}:{0}", gates.display()),
        ];
        let id = node(
            &engine,
            &format!("{APP}-{name}"),
            &network,
            cmd.iter().map(|s| s.to_string()).collect(),
            binds,
            None,
        )
        .await?;
        agents.insert(env, id);
    }

    // Release one serves in both environments.
    std::fs::write(gates.join("dev"), "")?;
    std::fs::write(gates.join("test"), "")?;
    let mut serving = HashMap::new();
    for env in ["dev", "test"] {
        let (_, done) = deploy(&mut client, APP, env, "main").await?;
        assert_eq!(state(&done), JobState::Succeeded, "{env}: {}", done.reason);
        serving.insert(env, done);
    }

    // Release two starts in both, and both builds are cut off mid-way.
    std::fs::remove_file(gates.join("dev"))?;
    std::fs::remove_file(gates.join("test"))?;
    std::fs::write(
        repo.join("prebuilt/app.jar"),
        build_jar(&root.join("jar-v2"), "Release two")?,
    )?;
    sample::commit_all(&git, "release two")?;
    let mut jobs = HashMap::new();
    for env in ["dev", "test"] {
        let request = proto::DeployRequest {
            app: APP.into(),
            env: env.into(),
            branch: "main".into(),
            ..Default::default()
        };
        jobs.insert(env, client.deploy(request).await?.into_inner().id);
    }
    for env in ["dev", "test"] {
        wait_for_line(&mut client, jobs[env], "tick 2").await?;
        let request = NetworkDisconnectRequest {
            container: agents[env].clone(),
            force: Some(true),
        };
        engine.disconnect_network(&network, request).await?;
    }
    let cut_at = tokio::time::Instant::now();

    // dev comes back after 60 seconds (within its lease): the build went on
    // all along, and once the gate opens the job completes with its whole log.
    tokio::time::sleep_until(cut_at + Duration::from_secs(60)).await;
    let mid = job(&mut client, jobs["dev"]).await?;
    assert_eq!(state(&mid), JobState::Running, "{}", mid.reason);
    engine
        .connect_network(
            &network,
            NetworkConnectRequest {
                container: agents["dev"].clone(),
                endpoint_config: None,
            },
        )
        .await?;
    let ticks_needed = 100; // 50 seconds of ticks were printed while cut off
    wait_for_line(&mut client, jobs["dev"], &format!("tick {ticks_needed}")).await?;
    std::fs::write(gates.join("dev"), "")?;
    let (lines, dev) = follow_to_end(&mut client, jobs["dev"]).await?;
    assert_eq!(state(&dev), JobState::Succeeded, "{}", dev.reason);
    assert_contiguous(&lines);
    let ticks: Vec<u32> = lines
        .iter()
        .filter_map(|l| l.text.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(ticks.len() >= ticks_needed, "{} ticks", ticks.len());
    assert_eq!(
        ticks,
        (1..=ticks.len() as u32).collect::<Vec<_>>(),
        "every tick, once, in order"
    );
    assert!(get(&dev.url, "/").await?.1.starts_with("Release two"));

    // test stays cut off past its lease: its job fails as lost, and the
    // release that was serving keeps serving.
    let lost =
        eventually(
            "the test job to fail as lost",
            Duration::from_secs(LEASE_SECS + 30),
            || {
                let mut client = client.clone();
                let id = jobs["test"];
                async move {
                    Ok(Some(job(&mut client, id).await?).filter(|j| state(j) == JobState::Failed))
                }
            },
        )
        .await?;
    assert!(
        lost.reason
            .starts_with("agent lost: test-1 was unreachable"),
        "{}",
        lost.reason
    );
    let lost_after = cut_at.elapsed();
    assert!(
        lost_after >= Duration::from_secs(LEASE_SECS - 5)
            && lost_after < Duration::from_secs(LEASE_SECS + 20),
        "failed as lost {lost_after:?} after the cut, with a lease of {LEASE_SECS}s"
    );
    assert!(get(&serving["test"].url, "/")
        .await?
        .1
        .starts_with("Release one"));

    // Cut off past its lease, the agent stops the job and removes what it
    // made; nothing of the job is left.
    engine
        .connect_network(
            &network,
            NetworkConnectRequest {
                container: agents["test"].clone(),
                endpoint_config: None,
            },
        )
        .await?;
    // It is told to stop the job once it has noticed its dead connection
    // and dialled again; failing that, it stops the job itself when twice
    // its lease has passed without a word (140 s after the cut).
    let workspace = root.join("test-1/workspaces/test").join(APP);
    eventually(
        "test-1 to remove the lost job's workspace",
        Duration::from_secs(2 * LEASE_SECS + 30),
        || {
            let gone = !workspace.exists();
            async move { Ok(gone.then_some(())) }
        },
    )
    .await?;
    let left = docker::containers(
        &engine,
        &[
            (label::APP, APP),
            (label::ENV, "test"),
            (label::JOB, &lost.id.to_string()),
        ],
    )
    .await?;
    assert!(left.is_empty(), "nothing of the lost job is left");
    assert!(get(&serving["test"].url, "/")
        .await?
        .1
        .starts_with("Release one"));
    // And it dials the coordinator again on its own.
    wait_connected(&client, "test-1", Duration::from_secs(90)).await?;
    Ok(())
}
