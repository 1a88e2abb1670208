//! Sending each operator request to the coordinator that leads, when the
//! CLI is given several (`--coordinator A,B`).
//!
//! [`Failover`] sits under the generated client, so every command gets it:
//! a request goes to the coordinator that answered last; a standby's
//! refusal (which did nothing) sends it on to the leader the refusal names,
//! or to the next coordinator of the list; so does a coordinator that could
//! not be reached. A request that may have reached a leader before its
//! connection broke is sent again only if it changes nothing (a list, a
//! read): a deploy is never sent twice. With one coordinator the request
//! goes straight through, as it did before lists.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use gantry_shared::{
    leader::{is_standby_refusal, leader_of},
    limits::MAX_GRPC_MESSAGE_BYTES,
    url::{CoordinatorList, Round},
};
use http_body_util::BodyExt;
use tonic::{
    body::Body,
    codegen::{http, Service},
    transport::Channel,
    Status,
};
use tracing::info;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The operator API's methods that read only: sending one again after its
/// connection broke cannot do anything twice.
const READ_ONLY: &[&str] = &[
    "ListApps",
    "ListEnvironments",
    "ListAgents",
    "GetJob",
    "ListJobs",
    "StreamJobLogs",
    "FollowJobLogs",
    "ListReleases",
    "GetEnvironmentState",
    "DiffEnvironments",
    "ListBranches",
    "StreamAppLogs",
    "ListAudit",
    "WhoAmI",
];

/// The transport of a CLI client: one channel per coordinator of the
/// list, and which of them answered last.
#[derive(Clone)]
pub struct Failover {
    inner: Arc<Inner>,
}

struct Inner {
    /// The coordinators, in the order given.
    list: CoordinatorList,
    /// One channel for each, connecting when first used.
    channels: Vec<Channel>,
    /// The one that answered last: tried first.
    current: AtomicUsize,
}

impl Failover {
    /// Over `channels`, one for each coordinator of `list`, in its order.
    pub fn new(list: CoordinatorList, channels: Vec<Channel>) -> Self {
        assert_eq!(list.len(), channels.len(), "one channel per coordinator");
        Self {
            inner: Arc::new(Inner {
                list,
                channels,
                current: AtomicUsize::new(0),
            }),
        }
    }

    /// The URL of the coordinator that answered last (the first before any
    /// has answered).
    pub fn current(&self) -> &str {
        let inner = &self.inner;
        inner.list.url(inner.current.load(Ordering::Relaxed))
    }
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call waits for its own channel to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            match inner.channels.as_slice() {
                [only] => Ok(send(only.clone(), request).await?),
                _ => inner.to_the_leader(request).await,
            }
        })
    }
}

/// Sends `request` on `channel` once it is ready.
async fn send(
    mut channel: Channel,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, tonic::transport::Error> {
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
    channel.call(request).await
}

impl Inner {
    /// One round over the list (see [`Round`]) until a coordinator other
    /// than a standby answers; the error, if none does, names each
    /// coordinator and why.
    async fn to_the_leader(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let (parts, body) = request.into_parts();
        // One message the CLI encoded itself; bounded all the same.
        let body = http_body_util::Limited::new(body, MAX_GRPC_MESSAGE_BYTES)
            .collect()
            .await?
            .to_bytes();
        let method = parts.uri.path().rsplit('/').next().unwrap_or_default();
        let read_only = READ_ONLY.contains(&method);
        let mut round = Round::new(self.list.len(), self.current.load(Ordering::Relaxed));
        let mut leader = None;
        let mut failures = Vec::new();
        while let Some(index) = round.next(leader.take()) {
            let url = self.list.url(index);
            let request = copy(&parts, body.clone());
            match send(self.channels[index].clone(), request).await {
                Ok(response) => match refusal(&response) {
                    None => {
                        self.current.store(index, Ordering::Relaxed);
                        return Ok(response);
                    }
                    Some(status) => {
                        // Only to a coordinator of the list: the token and
                        // CA are for those. One named otherwise is likely
                        // in it under another name, and the walk finds it.
                        leader = leader_of(&status).and_then(|named| self.list.position(&named));
                        info!(standby = %url, leader = ?leader.map(|at| self.list.url(at)), "refused by a standby");
                        failures.push(format!("{url}: {}", status.message()));
                    }
                },
                Err(e) if read_only || nothing_sent(&e) => {
                    info!(coordinator = %url, error = %chain(&e), "coordinator unreachable; trying the next");
                    failures.push(format!("{url}: {}", chain(&e)));
                }
                // It may have reached a leader: never sent twice.
                Err(e) => {
                    return Err(Status::unavailable(format!(
                        "lost {url} while it handled the request ({}); it is not sent again, \
                         as it may have been done: look before you retry (gantry jobs)",
                        chain(&e)
                    ))
                    .into())
                }
            }
        }
        Err(Status::unavailable(format!(
            "no coordinator of the list leads or answers: {}",
            failures.join("; ")
        ))
        .into())
    }
}

/// `parts` and `body` as a request of their own.
fn copy(parts: &http::request::Parts, body: Bytes) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(body)));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

/// The standby's refusal `response` is, if it is one: a refusal comes
/// before any message, its status in the headers.
fn refusal(response: &http::Response<Body>) -> Option<Status> {
    let code = response.headers().get(Status::GRPC_STATUS)?;
    if code.as_bytes() != b"14" {
        return None;
    }
    Status::from_header_map(response.headers()).filter(is_standby_refusal)
}

/// Whether `error` came before the request left (the connection could not
/// be made), so no coordinator saw it.
fn nothing_sent(error: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// `error` with its causes, as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.ends_with(&cause) {
            text = format!("{text}: {cause}");
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&'static str, &str)]) -> http::Response<Body> {
        let mut response = http::Response::new(Body::empty());
        for (k, v) in headers {
            response
                .headers_mut()
                .insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        response
    }

    #[test]
    fn a_standby_refusal_is_read_from_the_headers_with_its_leader() {
        let refusal_headers = gantry_shared::leader::standby_refusal(Some("https://b:7700"))
            .into_http::<Body>()
            .into_parts()
            .0
            .headers;
        let mut refused = http::Response::new(Body::empty());
        *refused.headers_mut() = refusal_headers;
        let status = refusal(&refused).expect("a refusal");
        assert_eq!(leader_of(&status).as_deref(), Some("https://b:7700"));

        // An answer, another error, and an unavailable that is no standby's.
        assert!(refusal(&response(&[])).is_none());
        assert!(refusal(&response(&[("grpc-status", "5"), ("grpc-message", "no")])).is_none());
        assert!(refusal(&response(&[
            ("grpc-status", "14"),
            ("grpc-message", "down")
        ]))
        .is_none());
    }

    #[test]
    fn only_reads_are_sent_again_after_a_broken_connection() {
        for method in ["ListJobs", "FollowJobLogs", "WhoAmI"] {
            assert!(READ_ONLY.contains(&method));
        }
        for method in ["Deploy", "Rollback", "CancelJob", "Approve", "CreateBranch"] {
            assert!(!READ_ONLY.contains(&method));
        }
    }
}
