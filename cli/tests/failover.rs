//! `gantry --coordinator A,B`: each command goes to the coordinator that
//! leads, past standbys and coordinators that are down; `gantry logs -f`
//! follows a job across a change of leader, every line once.
//!
//! The leader is a real coordinator in this process where the test needs
//! real data. Standbys are real tonic servers of the operator service
//! that refuse as `gantry_shared::leader` says a standby does (the
//! coordinator's own standby mode is not written yet); for the followed
//! log, both coordinators are such servers, scripted to hand over.

use std::{
    path::Path,
    pin::Pin,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use gantry_shared::{leader::standby_refusal, log_batch::LogBatch, proto};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const BIN: &str = env!("CARGO_BIN_EXE_gantry");

/// Runs `gantry ARGS` against `coordinators` with no saved login; returns
/// (exit code, stdout, stderr).
async fn gantry(coordinators: &str, args: &[&str]) -> (i32, String, String) {
    let config = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env("GANTRY_COORDINATOR", coordinators)
        .env("GANTRY_CONFIG_DIR", config.path())
        .env_remove("GANTRY_TOKEN")
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("gantry runs"))
        .await
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// A real plaintext coordinator with environment `dev` and app `app`,
/// serving until `stop`; returns its URL.
async fn leader(dir: &Path, stop: CancellationToken) -> String {
    let repo = dir.join("repo");
    let git = git2::Repository::init_opts(
        &repo,
        git2::RepositoryInitOptions::new().initial_head("main"),
    )
    .unwrap();
    std::fs::write(repo.join("README"), "test\n").unwrap();
    let mut index = git.index().unwrap();
    index.add_path(Path::new("README")).unwrap();
    let tree = git.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@example.com").unwrap();
    git.commit(Some("HEAD"), &sig, &sig, "one", &tree, &[])
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.join("coordinator.toml");
    std::fs::write(
        &path,
        format!(
            "plaintext = true\ndata_dir = \"data\"\nlisten = \"{addr}\"\n[[environments]]\nname = \"dev\"\n\
             [[apps]]\nname = \"app\"\nremote = \"{}\"\nbuild_command = \"true\"\nartifact = \"a.jar\"\n\
             base_image = \"none\"\ncontainer_port = 80\n",
            repo.display()
        ),
    )
    .unwrap();
    let config = gantry_shared::config::CoordinatorConfig::load(&path).unwrap();
    tokio::spawn(gantry_coordinator::serve(config, listener, stop));
    format!("http://{addr}")
}

/// A URL where nothing answers: a port that was free a moment ago.
fn dead() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// A coordinator scripted for one job (id 1) whose log has `lines` lines:
/// a standby while `standby` says so; as a leader it serves the log (and
/// with `hand_over_after`, breaks the stream after that line and becomes a
/// standby naming `successor`).
#[derive(Default)]
struct Scripted {
    /// `Some(leader)`: refuse everything as a standby naming `leader`.
    standby: Mutex<Option<Option<String>>>,
    /// Lines in the job's log.
    lines: u64,
    /// Break the followed stream after this line, then turn standby.
    hand_over_after: Option<u64>,
    /// The leader named once handed over.
    successor: Option<String>,
    /// Where each follow asked to start.
    asked_from: Mutex<Vec<u64>>,
    /// Calls refused as a standby.
    refused: AtomicUsize,
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

impl Scripted {
    fn refusal(&self) -> Result<(), Status> {
        match &*self.standby.lock().unwrap() {
            Some(leader) => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                Err(standby_refusal(leader.as_deref()))
            }
            None => Ok(()),
        }
    }
}

/// The service impl, with the methods a scripted coordinator does not
/// serve (a standby refuses them, a leader says they are not scripted)
/// written out here: `async_trait` must see them expanded.
macro_rules! operator_service {
    ($($name:ident($request:ty) -> $response:ty;)* { $($served:tt)* }) => {
        #[tonic::async_trait]
        impl proto::operator_service_server::OperatorService for Scripted {
            type StreamJobLogsStream = Stream<proto::LogLine>;
            type FollowJobLogsStream = Stream<LogBatch>;
            type StreamAppLogsStream = Stream<proto::AppLogLine>;
            $(
                async fn $name(&self, _: Request<$request>) -> Result<Response<$response>, Status> {
                    self.refusal()?;
                    Err(Status::unimplemented("not scripted"))
                }
            )*
            $($served)*
        }
    };
}

operator_service! {
        list_apps(proto::ListAppsRequest) -> proto::ListAppsResponse;
        list_environments(proto::ListEnvironmentsRequest) -> proto::ListEnvironmentsResponse;
        list_agents(proto::ListAgentsRequest) -> proto::ListAgentsResponse;
        deploy(proto::DeployRequest) -> proto::Job;
        list_jobs(proto::ListJobsRequest) -> proto::ListJobsResponse;
        cancel_job(proto::CancelJobRequest) -> proto::Job;
        stream_job_logs(proto::StreamJobLogsRequest) -> Stream<proto::LogLine>;
        rollback(proto::RollbackRequest) -> proto::Job;
        list_releases(proto::ListReleasesRequest) -> proto::ListReleasesResponse;
        get_environment_state(proto::GetEnvironmentStateRequest) -> proto::EnvironmentState;
        diff_environments(proto::DiffEnvironmentsRequest) -> proto::DiffEnvironmentsResponse;
        list_branches(proto::ListBranchesRequest) -> proto::ListBranchesResponse;
        create_branch(proto::CreateBranchRequest) -> proto::Branch;
        stream_app_logs(proto::StreamAppLogsRequest) -> Stream<proto::AppLogLine>;
        approve(proto::ApproveRequest) -> proto::Job;
        reject(proto::ApproveRequest) -> proto::Job;
        revoke_agent(proto::RevokeAgentRequest) -> proto::RevokeAgentResponse;
        list_audit(proto::ListAuditRequest) -> proto::ListAuditResponse;
        who_am_i(proto::WhoAmIRequest) -> proto::WhoAmIResponse;
    {
    async fn get_job(
        &self,
        _: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        self.refusal()?;
        Ok(Response::new(proto::Job {
            id: 1,
            app: "app".into(),
            env: "dev".into(),
            state: proto::JobState::Succeeded as i32,
            last_seq: self.lines,
            ..Default::default()
        }))
    }

    async fn follow_job_logs(
        &self,
        request: Request<proto::StreamJobLogsRequest>,
    ) -> Result<Response<Self::FollowJobLogsStream>, Status> {
        self.refusal()?;
        let from = request.into_inner().from_seq;
        self.asked_from.lock().unwrap().push(from);
        // A resumed stream starts one line early: the client must not
        // print that line twice.
        let first = from.saturating_sub(1).max(1);
        let last = self.hand_over_after.unwrap_or(self.lines);
        let line = |seq: u64| proto::LogLine {
            seq,
            text: format!("line {seq}"),
            ..Default::default()
        };
        let mut items: Vec<Result<LogBatch, Status>> = (first..=last)
            .map(|seq| Ok(LogBatch::from(vec![line(seq)])))
            .collect();
        if self.hand_over_after.is_some() {
            // This coordinator loses the lead under the follower.
            *self.standby.lock().unwrap() = Some(self.successor.clone());
            items.push(Err(Status::unavailable("the coordinator lost its lease")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
    }
}

/// Serves `scripted` on a fresh loopback port until `stop`; returns its URL.
async fn serve(scripted: Arc<Scripted>, stop: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::operator_service_server::OperatorServiceServer::from_arc(scripted))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            ),
    );
    url
}

/// A standby naming `leader` (or none), and how many calls it refused.
async fn standby(leader: Option<&str>, stop: CancellationToken) -> (String, Arc<Scripted>) {
    let scripted = Arc::new(Scripted {
        standby: Mutex::new(Some(leader.map(str::to_owned))),
        ..Default::default()
    });
    (serve(scripted.clone(), stop).await, scripted)
}

/// Queues a deploy on the leader (no agent runs it): a job only the
/// leader knows.
async fn queue_a_job(leader: &str) -> u64 {
    let mut client = gantry_cli::commands::connect(leader).await.unwrap();
    let request = proto::DeployRequest {
        app: "app".into(),
        env: "dev".into(),
        branches: vec!["main".into()],
        ..Default::default()
    };
    client.deploy(request).await.unwrap().into_inner().id
}

fn ids(json: &str) -> Vec<u64> {
    let jobs: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    jobs.as_array()
        .unwrap_or_else(|| panic!("a list: {json}"))
        .iter()
        .map(|job| job["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_leader_past_a_standby() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let leader = leader(dir.path(), stop.clone()).await;
    let (pointing, refused) = standby(Some(&leader), stop.clone()).await;
    let (leaderless, leaderless_refused) = standby(None, stop.clone()).await;
    let job = queue_a_job(&leader).await;
    // The leader comes last: the first standby's word takes the command
    // there before the walk would reach the second.
    let list = format!("{pointing},{leaderless},{leader}");

    let (code, out, err) = gantry(&list, &["jobs", "-o", "json"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(ids(&out), [job], "the leader's jobs");
    assert_eq!(
        refused.refused.load(Ordering::SeqCst),
        1,
        "the standby was asked first"
    );
    assert_eq!(leaderless_refused.refused.load(Ordering::SeqCst), 0);

    // A command that changes something is sent again too: the standby did nothing.
    let (code, out, err) = gantry(&list, &["cancel", &job.to_string()]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("cancelled"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_leader_past_a_coordinator_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let leader = leader(dir.path(), stop.clone()).await;
    let job = queue_a_job(&leader).await;
    let list = format!("{},{leader}", dead());

    let (code, out, err) = gantry(&list, &["jobs", "-o", "json"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(ids(&out), [job]);
    // A change reached no one at the dead address, so it goes on to the
    // leader, whose answer the operator reads.
    let (code, out, err) = gantry(&list, &["cancel", "999"]).await;
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("(NotFound)") && err.contains("999"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_coordinator_leads_the_error_names_each_and_why() {
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let (standby, _) = standby(None, stop.clone()).await;
    let dead = dead();

    let (code, out, err) = gantry(&format!("{dead},{standby}"), &["jobs"]).await;
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("no coordinator of the list leads or answers"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{dead}: ")) && err.contains("Connection refused"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{standby}: this coordinator is a standby and no coordinator leads"
        )),
        "{err}"
    );

    // One coordinator alone reads as it always did.
    let (code, _, err) = gantry(&dead, &["jobs"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "cannot reach the coordinator at {dead}; is it running?"
        )),
        "{err}"
    );

    // A bad entry of the list is named before anything is sent.
    let (code, _, err) = gantry(&format!("{dead},localhost:7700"), &["jobs"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("coordinator 2 of the list") && err.contains("\"localhost:7700\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_log_goes_on_at_the_new_leader_every_line_once() {
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let new = Arc::new(Scripted {
        lines: 6,
        ..Default::default()
    });
    let new_url = serve(new.clone(), stop.clone()).await;
    let old = Arc::new(Scripted {
        lines: 6,
        hand_over_after: Some(3),
        successor: Some(new_url.clone()),
        ..Default::default()
    });
    let old_url = serve(old.clone(), stop.clone()).await;

    let (code, out, err) = gantry(&format!("{old_url},{new_url}"), &["logs", "1", "-f"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let expected: Vec<String> = (1..=6).map(|seq| format!("line {seq}")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "stderr:\n{err}");
    assert_eq!(*old.asked_from.lock().unwrap(), [1]);
    assert_eq!(
        *new.asked_from.lock().unwrap(),
        [4],
        "resumed after the last line printed"
    );
    assert!(
        old.refused.load(Ordering::SeqCst) >= 1,
        "the old leader refused as a standby"
    );
    assert!(err.contains("resuming at line 4"), "{err}");
}
