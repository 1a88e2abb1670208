//! The first thing every request meets, before its body is read: it is
//! counted on its connection (so that idle connections can be told from
//! used ones, see [`crate::trust::conn`]), and an operator request without
//! a valid token is answered at once. Without this, a request whose body
//! never comes waits in its handler for ever, and a client can open
//! thousands of such requests for the price of their headers.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use http_body_util::BodyExt;
use tonic::{
    codegen::{http, BoxFuture, Service},
    metadata::MetadataMap,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
    Status,
};

use crate::{core::Core, trust::conn::PerAddress};

/// The path prefix of the operators' methods, which all take a token.
const OPERATOR_PATH: &str = "/gantry.v1.OperatorService/";

/// The audit action of an operator method refused here: the name its
/// handler audits it under.
fn action(method: &str) -> &'static str {
    match method {
        "Deploy" => "deploy",
        "CancelJob" => "cancel",
        "Rollback" => "rollback",
        "CreateBranch" => "create-branch",
        "Approve" => "approve",
        "Reject" => "reject",
        "RevokeAgent" => "revoke",
        "ListAudit" => "read-audit",
        _ => "read",
    }
}

/// A tower layer putting [`Edge`] in front of a service.
#[derive(Clone)]
pub struct EdgeLayer {
    core: Arc<Core>,
    connections: Option<Arc<PerAddress>>,
}

impl EdgeLayer {
    /// Checks tokens with `core`; counts requests on the connections of
    /// `connections` (none without TLS).
    pub fn new(core: Arc<Core>, connections: Option<Arc<PerAddress>>) -> Self {
        Self { core, connections }
    }
}

impl<S> tower_layer::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    layer: EdgeLayer,
}

impl<S, B> Service<http::Request<B>> for Edge<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr());
        let in_flight = self
            .layer
            .connections
            .as_ref()
            .zip(peer)
            .and_then(|(table, peer)| table.activity(peer))
            .map(|activity| activity.begin());
        let path = request.uri().path();
        if let Some(method) = path
            .strip_prefix(OPERATOR_PATH)
            .filter(|_| !self.layer.core.auth.identifies(request.headers()))
        {
            // Only a refusal needs a request of its own, to be audited. The
            // request (and its body) is dropped unread: the stream is reset
            // once the refusal is sent.
            let probe = tonic::Request::from_parts(
                MetadataMap::from_headers(request.headers().clone()),
                request.extensions().clone(),
                (),
            );
            let action = action(method);
            let core = self.layer.core.clone();
            return Box::pin(async move {
                let status = match core.caller(&probe, action).await {
                    Err(e) => Status::from(e),
                    Ok(_) => Status::unauthenticated("the API token is not valid"),
                };
                drop(in_flight);
                Ok(status.into_http())
            });
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let Some(in_flight) = in_flight else {
                return Ok(response);
            };
            // The request is in flight until its response body is done
            // with: for a stream, as long as the stream.
            Ok(response.map(|body| {
                tonic::body::Body::new(body.map_frame(move |frame| {
                    let _held = &in_flight;
                    frame
                }))
            }))
        })
    }
}
