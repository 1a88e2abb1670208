//! Forwarding one client connection's HTTP/1 requests to the current
//! upstream, counting each request in flight until its response body has
//! been sent.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
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
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpStream;
use tracing::debug;

use super::{InFlight, Router};

/// The pooled HTTP client to upstreams.
pub(crate) type UpstreamClient = Client<HttpConnector, Incoming>;

/// A client that keeps connections to upstreams alive between requests.
pub(crate) fn client() -> UpstreamClient {
    Client::builder(TokioExecutor::new()).build_http()
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Serves one client connection until it closes.
pub(crate) async fn connection(stream: TcpStream, router: Arc<Router>, client: UpstreamClient) {
    let service = service_fn(move |request| {
        let (router, client) = (router.clone(), client.clone());
        async move { Ok::<_, Infallible>(forward(&router, &client, request).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(error = %e, "client connection ended with an error");
    }
}

async fn forward(
    router: &Router,
    client: &UpstreamClient,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(guard) = router.pick() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no release of this app serves on this server yet",
        );
    };
    let addr = guard.0.addr.clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = format!("http://{addr}{path}").parse::<Uri>() else {
        return plain(StatusCode::BAD_REQUEST, "the request path is not valid");
    };
    *request.uri_mut() = uri;
    if !request.headers().contains_key(HOST) {
        if let Ok(host) = HeaderValue::from_str(&addr) {
            request.headers_mut().insert(HOST, host);
        }
    }
    match client.request(request).await {
        Ok(response) => response.map(|body| {
            Counted {
                inner: body.boxed(),
                _in_flight: guard,
            }
            .boxed()
        }),
        Err(e) => plain(
            StatusCode::BAD_GATEWAY,
            &format!("the release at {addr} did not answer: {e}"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

/// A response body that keeps its request counted in flight until it has
/// been sent (or dropped).
struct Counted {
    inner: ProxyBody,
    _in_flight: InFlight,
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
