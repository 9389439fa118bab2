//! The admin listener: `/health` (the process answers) and `/ready` (a certificate is served and
//! the proxy is not draining) for supervisors and probes. Never public; it
//! serves nothing of the homeserver.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::listener::Phase;
use crate::respond::{ProxyError, ResponseBody};
use crate::tls::Resolver;

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `/ready` is true while a certificate is served and the proxy is not draining.
fn answer(req: &Request<Incoming>, resolver: &Resolver, phase: Phase) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = ProxyError::MethodNotAllowed.into_response();
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" if phase != Phase::Running => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/ready" if !resolver.is_ready() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n")
        }
        "/ready" => text(StatusCode::OK, "ready\n"),
        _ => ProxyError::NotFound.into_response(),
    }
}

/// Serves the admin endpoints until the phase leaves `Running`.
pub async fn serve(
    listener: TcpListener,
    resolver: Arc<Resolver>,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::listener::reached(&mut phase, Phase::Drain) => return,
        };
        let resolver = resolver.clone();
        let phase = phase.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let current = *phase.borrow();
                let resp = answer(&req, &resolver, current);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
