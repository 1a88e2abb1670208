//! Forwarding one client connection's HTTP/1 requests to the current
//! upstream, counting each request in flight until its response body has
//! been sent, and closing the connection when its client is too slow to
//! send a request head or leaves it idle (see [`super::limits`]).

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    header::{HeaderValue, HOST},
    service::service_fn,
    Request, Response, StatusCode, Uri,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{net::TcpStream, sync::OwnedSemaphorePermit, time::Instant};
use tracing::{debug, warn};

use super::{
    headers,
    limits::{HEADER_READ_TIMEOUT, KEEP_ALIVE_TIMEOUT, MAX_HEAD_BYTES},
    InFlight, Router,
};

/// The pooled HTTP client to upstreams.
pub(crate) type UpstreamClient = Client<HttpConnector, Incoming>;

/// A client that keeps connections to upstreams alive between requests.
pub(crate) fn client() -> UpstreamClient {
    Client::builder(TokioExecutor::new()).build_http()
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The body of the answer past the connection cap.
const BUSY_TEXT: &str = "this server has too many clients now; try again\n";

/// Answers a connection past the cap with `503` and closes it, without
/// reading the request. The answer fits any socket buffer, so it is written
/// without waiting; a client that has gone already is not waited for.
pub(crate) fn refuse_busy(stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BUSY_TEXT}",
        BUSY_TEXT.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Serves one client connection until it closes, its client is too slow to
/// send a request head, or it has stayed idle past [`KEEP_ALIVE_TIMEOUT`].
/// `permit` is its place under the connection cap, freed when it ends.
pub(crate) async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Arc<Router>,
    client: UpstreamClient,
    permit: OwnedSemaphorePermit,
) {
    let idle = Arc::new(Idle::new());
    let service = service_fn({
        let idle = idle.clone();
        move |request| {
            let (router, client, open) = (router.clone(), client.clone(), Idle::begin(&idle));
            async move { Ok::<_, Infallible>(forward(&router, &client, request, peer.ip(), open).await) }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let serving = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(serving);
    let ended = loop {
        tokio::select! {
            ended = serving.as_mut() => break ended,
            () = tokio::time::sleep_until(idle.deadline()) => if idle.expired() {
                // Closes it now: no request has begun on it.
                serving.as_mut().graceful_shutdown();
                break serving.as_mut().await;
            },
        }
    };
    if let Err(e) = ended {
        debug!(error = %e, "client connection ended with an error");
    }
    drop(permit);
}

/// When a connection last had a request open, to close it once idle.
struct Idle {
    /// Requests open on it, and since when it has had none.
    state: Mutex<(usize, Instant)>,
}

/// One request open on a connection, until its response has been sent.
struct Open(Arc<Idle>);

impl Idle {
    fn new() -> Self {
        Self {
            state: Mutex::new((0, Instant::now())),
        }
    }

    fn begin(idle: &Arc<Self>) -> Open {
        idle.state.lock().expect("idle lock").0 += 1;
        Open(idle.clone())
    }

    /// When to look again: the idle limit after the last request ended, or
    /// one limit from now while a request is open.
    fn deadline(&self) -> Instant {
        let (open, since) = *self.state.lock().expect("idle lock");
        if open > 0 {
            Instant::now() + KEEP_ALIVE_TIMEOUT
        } else {
            since + KEEP_ALIVE_TIMEOUT
        }
    }

    fn expired(&self) -> bool {
        let (open, since) = *self.state.lock().expect("idle lock");
        open == 0 && since.elapsed() >= KEEP_ALIVE_TIMEOUT
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("idle lock");
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

async fn forward(
    router: &Router,
    client: &UpstreamClient,
    mut request: Request<Incoming>,
    peer: IpAddr,
    open: Open,
) -> Response<ProxyBody> {
    let Some(guard) = router.pick() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no release of this app serves on this server yet",
            open,
        );
    };
    let addr = guard.0.addr.clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = format!("http://{addr}{path}").parse::<Uri>() else {
        return plain(
            StatusCode::BAD_REQUEST,
            "the request path is not valid",
            open,
        );
    };
    *request.uri_mut() = uri;
    headers::strip_hop_by_hop(request.headers_mut());
    headers::add_forwarded(request.headers_mut(), peer);
    if !request.headers().contains_key(HOST) {
        if let Ok(host) = HeaderValue::from_str(&addr) {
            request.headers_mut().insert(HOST, host);
        }
    }
    match client.request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            advertise_keep_alive(&mut parts.headers);
            Response::from_parts(
                parts,
                Counted {
                    inner: body.boxed(),
                    _in_flight: Some(guard),
                    _open: open,
                }
                .boxed(),
            )
        }
        Err(e) => {
            // The address is for the operator's log, not for the client.
            warn!(upstream = %addr, error = %e, "the release did not answer");
            plain(
                StatusCode::BAD_GATEWAY,
                "the release serving this app did not answer",
                open,
            )
        }
    }
}

/// Tells clients how long the proxy keeps an idle connection.
fn advertise_keep_alive(headers: &mut hyper::HeaderMap) {
    let value = format!("timeout={}", KEEP_ALIVE_TIMEOUT.as_secs());
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("keep-alive", value);
    }
}

fn plain(status: StatusCode, text: &str, open: Open) -> Response<ProxyBody> {
    let body = Counted {
        inner: Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed(),
        _in_flight: None,
        _open: open,
    }
    .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    advertise_keep_alive(response.headers_mut());
    response
}

/// A response body that keeps its request counted (in flight to its
/// upstream, and open on its connection) until it has been sent or dropped.
struct Counted {
    inner: ProxyBody,
    _in_flight: Option<InFlight>,
    _open: Open,
}
impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
