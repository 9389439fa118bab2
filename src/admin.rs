//! The admin listener, for supervisors, probes and Prometheus: `/health` (the process answers),
//! `/ready` (a certificate is served, the backend accepts connections, and the proxy is not
//! draining), and `/metrics`. Never public; it serves nothing of the homeserver.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::config::BackendTarget;
use crate::listener::Phase;
use crate::metrics::Metrics;
use crate::respond::{ProxyError, ResponseBody};
use crate::server::SharedServer;
use crate::tls::Resolver;

/// What the admin endpoints look at.
#[derive(Clone)]
pub struct Probe {
    pub resolver: Arc<Resolver>,
    pub server: SharedServer,
    pub metrics: Arc<Metrics>,
}

/// How long `/ready` waits for the backend to accept a connection.
const BACKEND_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether the backend accepts a connection now.
async fn backend_reachable(target: &BackendTarget) -> Result<(), String> {
    let connect = async {
        match target {
            BackendTarget::Tcp { authority } => tokio::net::TcpStream::connect(authority.as_str())
                .await
                .map(drop),
            BackendTarget::Unix(path) => tokio::net::UnixStream::connect(path).await.map(drop),
        }
    };
    match tokio::time::timeout(BACKEND_PROBE_TIMEOUT, connect).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {BACKEND_PROBE_TIMEOUT:?}")),
    }
}

async fn answer(req: Request<Incoming>, probe: Probe, phase: Phase) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = ProxyError::MethodNotAllowed.into_response();
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => {
            if phase != Phase::Running {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
            }
            if !probe.resolver.is_ready() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n");
            }
            let target = probe.server.load().backend().clone();
            match backend_reachable(&target).await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("backend unreachable: {e}\n"),
                ),
            }
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, probe.metrics.encode());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => ProxyError::NotFound.into_response(),
    }
}

/// Serves the admin endpoints until the phase leaves `Running`.
pub async fn serve(listener: TcpListener, probe: Probe, mut phase: watch::Receiver<Phase>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::listener::reached(&mut phase, Phase::Drain) => return,
        };
        let probe = probe.clone();
        let phase = phase.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let current = *phase.borrow();
                let probe = probe.clone();
                async move { Ok::<_, Infallible>(answer(req, probe, current).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
