//! The HTTP layer of a client connection: hyper's h1/h2 settings (limits, timeouts) and the
//! dispatch of each request to the stage its [`Route`] names.
//!
//! This is the only place where a route turns into an action; the decision itself is
//! `route::classify`, the answers are `wellknown`, `forward` and `respond`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, HOST, HeaderValue, LOCATION};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::{debug, warn};

use crate::acme::AcmeHandle;
use crate::config::{Config, Limits};
use crate::forward::Forwarder;
use crate::listener::Activity;
use crate::respond::{ProxyError, ResponseBody};
use crate::route::{self, Policy, Refusal, Role, Route};
use crate::upstream::Upstream;
use crate::wellknown::WellKnownFiles;

/// Everything a request needs, built once from the config.
pub struct Server {
    policy: Policy,
    well_known: WellKnownFiles,
    forwarder: Forwarder,
    limits: Limits,
    /// The port `301` redirects point at; omitted from `Location` when 443.
    https_port: u16,
    acme: Option<AcmeHandle>,
}

impl Server {
    pub fn new(config: &Config, acme: Option<AcmeHandle>) -> Self {
        let upstream = Upstream::new(&config.backend);
        Server {
            policy: Policy::from_config(config),
            well_known: WellKnownFiles::new(config.well_known.clone()),
            forwarder: Forwarder::new(
                upstream,
                config.forward.trusted_proxies.clone(),
                config.limits.max_body,
                config.backend.response_timeout,
            ),
            limits: config.limits.clone(),
            https_port: config.listen.https.first().map(|a| a.port()).unwrap_or(443),
            acme,
        }
    }

    /// Sets the port redirects point at, for tests that bind port 0.
    pub fn set_https_port(&mut self, port: u16) {
        self.https_port = port;
    }

    pub(crate) fn http1(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_size.max(8192))
            .keep_alive(true);
        b
    }

    pub(crate) fn http2(&self) -> http2::Builder<TokioExecutor> {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_size).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(std::time::Duration::from_secs(60)));
        b
    }

    pub(crate) fn service(
        self: &Arc<Self>,
        role: Role,
        peer: SocketAddr,
        activity: Arc<Activity>,
    ) -> ConnService {
        ConnService {
            server: self.clone(),
            role,
            peer,
            activity,
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        role: Role,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let route = route::classify(
            role,
            req.method(),
            req.uri().path(),
            peer.ip(),
            &self.policy,
        );
        let result = match route {
            Route::WellKnown(file) => Ok(self.well_known.respond(file, req.method())),
            Route::Forward(_) => self.forwarder.forward(req, peer.ip()).await,
            Route::RedirectToHttps => self.redirect(&req),
            Route::AcmeHttp01 => self.acme_http01(req.uri().path()),
            Route::Refuse(Refusal::DotSegment) => Err(ProxyError::DotSegment),
            Route::Refuse(Refusal::Internal(p)) => Err(ProxyError::InternalPath(p.prefix())),
            Route::Refuse(Refusal::PlainHttp) => Err(ProxyError::PlainHttp),
            Route::NotFound => Err(ProxyError::NotFound),
        };
        match result {
            Ok(resp) => resp,
            Err(e) => {
                let (status, _, _) = e.status_and_code();
                if status.is_server_error() {
                    warn!(%peer, role = role.as_str(), ?route, error = %e, "request failed");
                } else {
                    debug!(%peer, role = role.as_str(), ?route, error = %e, "request refused");
                }
                e.into_response()
            }
        }
    }

    /// The key authorization for a pending HTTP-01 token, as RFC 8555 §8.3 asks: 200,
    /// `application/octet-stream`. Unknown tokens are a 404.
    fn acme_http01(&self, path: &str) -> Result<Response<ResponseBody>, ProxyError> {
        let token = path
            .strip_prefix(route::ACME_CHALLENGE_PREFIX)
            .unwrap_or("");
        let key_auth = self
            .acme
            .as_ref()
            .and_then(|acme| acme.http01_key_auth(token))
            .ok_or(ProxyError::NotFound)?;
        tracing::info!(token, "answered an HTTP-01 validation");
        let mut resp = Response::new(ResponseBody::full(key_auth));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Ok(resp)
    }

    /// `301` to the same request-target on https. Never 308: some clients and older Synapse
    /// versions follow only 301/302/307.
    fn redirect(&self, req: &Request<Incoming>) -> Result<Response<ResponseBody>, ProxyError> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .or_else(|| {
                req.headers()
                    .get(HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            })
            .ok_or(ProxyError::NoHost)?;
        let host = authority.host();
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let location = if self.https_port == 443 {
            format!("https://{host}{target}")
        } else {
            format!("https://{host}:{}{target}", self.https_port)
        };
        let location = HeaderValue::try_from(location).map_err(|_| ProxyError::NoHost)?;
        let mut resp = Response::new(ResponseBody::empty());
        *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
        resp.headers_mut().insert(LOCATION, location);
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        Ok(resp)
    }
}

/// The hyper service of one connection.
#[derive(Clone)]
pub struct ConnService {
    server: Arc<Server>,
    role: Role,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.start();
        let server = self.server.clone();
        let (role, peer) = (self.role, self.peer);
        Box::pin(async move {
            let resp = server.handle(req, role, peer).await;
            Ok(resp.map(|body| body.with_guard(guard)))
        })
    }
}
