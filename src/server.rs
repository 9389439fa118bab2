//! The HTTP layer of a client connection: hyper's h1/h2 settings (limits, timeouts) and the
//! dispatch of each request to the stage its [`Route`] names.
//!
//! This is the only place where a route turns into an action; the decision itself is
//! `route::classify`, the answers are `wellknown`, `forward` and `respond`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{CONTENT_LENGTH, HOST, HeaderValue, LOCATION};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::{debug, warn};

use crate::acme::AcmeHandle;
use crate::config::{BackendTarget, Config, Limits, ServerName};
use crate::forward::Forwarder;
use crate::listener::Activity;
use crate::metrics::{BackendError, BackendErrorLabels, Metrics, RouteClass};
use crate::respond::{Finish, ProxyError, ResponseBody};
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
    metrics: Arc<Metrics>,
    backend: BackendTarget,
}

/// The server the connections use; replaced whole on reload, read once per request, so a request
/// in flight finishes with the config it started with.
pub type SharedServer = Arc<ArcSwap<Server>>;

impl Server {
    /// `bound_https_port` is the port the first https listener really has, which differs from
    /// the configured one only when that is 0 (tests).
    pub fn new(
        config: &Config,
        acme: Option<AcmeHandle>,
        metrics: Arc<Metrics>,
        bound_https_port: Option<u16>,
    ) -> Self {
        let configured = config.listen.https.first().map(|a| a.port());
        let https_port = match configured {
            Some(0) | None => bound_https_port.unwrap_or(443),
            Some(port) => port,
        };
        let upstream = Upstream::new(&config.backend, config.workers);
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
            https_port,
            backend: config.backend.target.clone(),
            acme,
            metrics,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn backend(&self) -> &BackendTarget {
        &self.backend
    }

    /// The largest HTTP/1.1 request head taken (hyper's read buffer cannot go below 8 KiB).
    pub(crate) fn max_h1_head(&self) -> usize {
        self.limits.max_header_size.max(8192)
    }

    pub(crate) fn http1(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.max_h1_head())
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

    async fn handle(
        &self,
        req: Request<Incoming>,
        route: Route,
        peer: SocketAddr,
        forwarded_for: &HeaderValue,
        bytes_in: &OnceLock<Arc<AtomicU64>>,
    ) -> Response<ResponseBody> {
        let result = match route {
            Route::WellKnown(file) => Ok(self.well_known.respond(file, req.method())),
            Route::Forward(_) => {
                self.forwarder
                    .forward(req, peer.ip(), forwarded_for, bytes_in)
                    .await
            }
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
                self.note_failure(&e, peer, RouteClass::of(&route));
                e.into_response()
            }
        }
    }

    /// Counts and logs a request the proxy answers with an error: a warning when the fault is
    /// on this side (5xx), debug otherwise.
    pub(crate) fn note_failure(&self, e: &ProxyError, peer: SocketAddr, class: RouteClass) {
        let kind = match e {
            ProxyError::BackendUnreachable(_) => Some(BackendError::unreachable),
            ProxyError::BackendTimeout(_) => Some(BackendError::timeout),
            ProxyError::BackendFailed(_) => Some(BackendError::failed),
            _ => None,
        };
        if let Some(kind) = kind {
            self.metrics
                .backend_errors
                .get_or_create(&BackendErrorLabels { kind })
                .inc();
        }
        let (status, _, _) = e.status_and_code();
        let class = class.as_str();
        if status.is_server_error() {
            warn!(%peer, class, error = %e, "request failed");
        } else {
            debug!(%peer, class, error = %e, "request refused");
        }
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(crate) fn forwarder(&self) -> &Forwarder {
        &self.forwarder
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

/// The status logged for a request whose client left before the response head: nginx's 499.
const CLIENT_CLOSED: u16 = 499;

/// The hyper service of one connection.
#[derive(Clone)]
pub struct ConnService {
    server: SharedServer,
    role: Role,
    peer: SocketAddr,
    /// The peer as `X-Forwarded-For` carries it, formatted once per connection.
    forwarded_for: HeaderValue,
    activity: Arc<Activity>,
}

impl ConnService {
    pub(crate) fn new(
        server: SharedServer,
        role: Role,
        peer: SocketAddr,
        activity: Arc<Activity>,
    ) -> Self {
        ConnService {
            server,
            role,
            peer,
            forwarded_for: crate::forward::forwarded_for_value(peer.ip()),
            activity,
        }
    }
}

impl Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let start = Instant::now();
        let guard = self.activity.start();
        let server = self.server.load_full();
        let (role, peer) = (self.role, self.peer);
        let forwarded_for = self.forwarded_for.clone();
        Box::pin(async move {
            server.metrics.in_flight.inc();
            let route = route::classify(
                role,
                req.method(),
                req.uri().path(),
                peer.ip(),
                &server.policy,
            );
            let class = RouteClass::of(&route);
            let method = req.method().clone();
            let version = req.version();
            let target = req.uri().path_and_query().cloned();
            let origin = match class {
                RouteClass::federation | RouteClass::keys | RouteClass::media => {
                    x_matrix_origin(req.headers())
                }
                _ => None,
            };
            // Made before the backend is awaited: if the client goes away first, this future is
            // dropped, and the record still counts and logs the request (as 499, like nginx).
            let mut finish = Box::new(Finish {
                _guard: guard,
                server,
                start,
                class,
                status: CLIENT_CLOSED,
                method,
                target,
                version,
                peer,
                origin,
                bytes_in: OnceLock::new(),
                bytes_out: 0,
            });
            let resp = finish
                .server
                .handle(req, route, peer, &forwarded_for, &finish.bytes_in)
                .await;
            finish.status = resp.status().as_u16();
            Ok(resp.map(|body| body.with_finish(finish)))
        })
    }
}

/// The `origin` of the first `Authorization: X-Matrix` header, if it is a valid server name.
/// Logged, never trusted: the homeserver verifies the signature.
pub fn x_matrix_origin(headers: &http::HeaderMap) -> Option<String> {
    let value = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("X-Matrix "))?;
    x_matrix_origin_in(value)
}

/// The `origin` parameter of X-Matrix credentials (what follows `X-Matrix `), if it is a valid
/// server name.
pub(crate) fn x_matrix_origin_in(credentials: &str) -> Option<String> {
    credentials.split(',').find_map(|param| {
        let (name, val) = param.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("origin") {
            return None;
        }
        let val = val.trim().trim_matches('"');
        ServerName::parse(val).ok().map(|n| n.as_str().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_from_x_matrix() {
        let mut h = http::HeaderMap::new();
        h.append("authorization", "Bearer secret".parse().unwrap());
        h.append(
            "authorization",
            r#"X-Matrix origin="remote.example",destination="us.example",key="ed25519:a",sig="x""#
                .parse()
                .unwrap(),
        );
        assert_eq!(x_matrix_origin(&h).as_deref(), Some("remote.example"));
        let mut h = http::HeaderMap::new();
        h.append(
            "authorization",
            "X-Matrix origin=remote.example:8448,key=\"k\""
                .parse()
                .unwrap(),
        );
        assert_eq!(x_matrix_origin(&h).as_deref(), Some("remote.example:8448"));
        let mut h = http::HeaderMap::new();
        h.append(
            "authorization",
            "X-Matrix origin=\"bad name\",key=k".parse().unwrap(),
        );
        assert_eq!(x_matrix_origin(&h), None);
    }
}
