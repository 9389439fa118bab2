//! Responses the proxy makes itself, and the one body type every response carries.
//!
//! Every error the proxy answers on its own goes through [`ProxyError`] and its single status
//! table, so a client always gets Matrix JSON (`{"errcode": "M_…", "error": "…"}`) with
//! `application/json`, never an empty body, an HTML page or a bare close. The table is keyed by
//! whose fault it is: the client's (4xx), the homeserver's (502/504), or ours (500). Internal
//! detail stays in the logs; the body says only what the client can act on.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Method, Version};

use crate::listener::ActivityGuard;
use crate::metrics::RouteClass;
use crate::relay::RawBody;
use crate::server::Server;
use crate::upstream::{BodySlot, UpstreamBody};

/// The body of every response the proxy sends: bytes it made, or the backend's stream.
pub struct ResponseBody {
    kind: Kind,
    /// The request's record, completed when the body is done or dropped.
    finish: Option<Box<Finish>>,
    /// The client's request body, released once this response has ended.
    request_body: Option<BodySlot>,
}

/// What is known about a request once its response is under way; dropped when the response
/// body ends (or the client goes away), which is when it counts and logs.
pub struct Finish {
    /// Marks the request as in flight on its connection.
    pub(crate) _guard: ActivityGuard,
    /// The server the request was answered with (its metrics are counted in).
    pub(crate) server: Arc<Server>,
    pub(crate) start: Instant,
    pub(crate) class: RouteClass,
    pub(crate) status: u16,
    pub(crate) method: Method,
    /// For the log: see [`Record::path`].
    pub(crate) target: Option<PathAndQuery>,
    pub(crate) version: Version,
    pub(crate) peer: SocketAddr,
    pub(crate) origin: Option<String>,
    /// Set once the request is found to have a body: its bytes streamed to the backend.
    pub(crate) bytes_in: OnceLock<Arc<AtomicU64>>,
    pub(crate) bytes_out: u64,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let bytes_in = self
            .bytes_in
            .get()
            .map(|b| b.load(Ordering::Relaxed))
            .unwrap_or(0);
        self.server.metrics().in_flight.dec();
        self.server.record(&Record {
            elapsed: self.start.elapsed(),
            class: self.class,
            status: self.status,
            method: &self.method,
            path: self.target.as_ref().map(|t| t.path()).unwrap_or("/"),
            version: self.version,
            peer: self.peer,
            origin: self.origin.as_deref(),
            bytes_in,
            bytes_out: self.bytes_out,
        });
    }
}

/// One answered request, as it is counted and logged.
pub(crate) struct Record<'a> {
    pub(crate) elapsed: std::time::Duration,
    pub(crate) class: RouteClass,
    pub(crate) status: u16,
    pub(crate) method: &'a Method,
    /// Only the path is written, never the query (it may carry an access token).
    pub(crate) path: &'a str,
    pub(crate) version: Version,
    pub(crate) peer: SocketAddr,
    pub(crate) origin: Option<&'a str>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

impl Server {
    /// Counts `r` in the metrics and writes its access log line.
    pub(crate) fn record(&self, r: &Record<'_>) {
        let m = self.metrics();
        m.count_request(r.class, r.status);
        let class = m.class(r.class);
        class.duration.observe(r.elapsed);
        if r.bytes_in > 0 {
            class.request_bytes.inc_by(r.bytes_in);
        }
        if r.bytes_out > 0 {
            class.response_bytes.inc_by(r.bytes_out);
        }
        tracing::info!(
            target: "matrix_edge::access",
            peer = %r.peer,
            method = %r.method,
            path = r.path,
            version = ?r.version,
            class = r.class.as_str(),
            status = r.status,
            duration_ms = r.elapsed.as_millis() as u64,
            bytes_in = r.bytes_in,
            bytes_out = r.bytes_out,
            origin = r.origin.unwrap_or("-"),
        );
    }
}

/// Appends the current time as an HTTP `Date` (RFC 9110 §5.6.7), formatted once a second per
/// thread.
pub(crate) fn http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *text = httpdate::fmt_http_date(now);
            *cached = second;
        }
        out.extend_from_slice(text.as_bytes());
    });
}

enum Kind {
    Full(Full<Bytes>),
    Upstream(UpstreamBody),
    /// From a backend connection the relay drives (body-less requests).
    Raw(RawBody),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Full::new(bytes.into())),
            finish: None,
            request_body: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub(crate) fn raw(body: RawBody) -> Self {
        ResponseBody {
            kind: Kind::Raw(body),
            finish: None,
            request_body: None,
        }
    }

    pub fn upstream(body: UpstreamBody) -> Self {
        ResponseBody {
            kind: Kind::Upstream(body),
            finish: None,
            request_body: None,
        }
    }

    pub(crate) fn with_request_body(mut self, slot: BodySlot) -> Self {
        self.request_body = Some(slot);
        self
    }

    pub(crate) fn with_finish(mut self, finish: Box<Finish>) -> Self {
        self.finish = Some(finish);
        self
    }
}

/// Dropped once the response is fully sent (or abandoned): only then may the client's request
/// body be let go of, see [`BodySlot::release`].
impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(slot) = &self.request_body {
            slot.release();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::Raw(b) => Pin::new(b).poll_frame(cx),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(finish)) = (&polled, &mut this.finish)
            && let Some(data) = frame.data_ref()
        {
            finish.bytes_out += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_end_stream(),
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Raw(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => b.size_hint(),
            Kind::Upstream(b) => b.size_hint(),
            Kind::Raw(b) => b.size_hint(),
        }
    }
}

/// Everything the proxy itself refuses or fails at, one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    #[error("path is not served here")]
    NotFound,
    #[error("method not allowed here")]
    MethodNotAllowed,
    #[error("{0} is not reachable through this listener")]
    InternalPath(&'static str),
    #[error("plain HTTP serves only redirects to https")]
    PlainHttp,
    #[error("request has no Host")]
    NoHost,
    #[error("request body over the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("backend unreachable: {0}")]
    BackendUnreachable(String),
    #[error("backend did not answer within {0:?}")]
    BackendTimeout(std::time::Duration),
    #[error("backend failed: {0}")]
    BackendFailed(String),
    #[error("client body failed: {0}")]
    ClientBody(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The one status table. No catch-all arm: a new cause must be placed here on purpose.
    pub fn status_and_code(&self) -> (StatusCode, &'static str, &'static str) {
        use ProxyError::*;
        match self {
            DotSegment => (
                StatusCode::BAD_REQUEST,
                "M_UNRECOGNIZED",
                "Path segments `.` and `..` are not allowed",
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                "M_UNRECOGNIZED",
                "Unrecognized request",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "M_UNRECOGNIZED",
                "Method not allowed",
            ),
            InternalPath(_) => (
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
                "This path is not available from your network",
            ),
            PlainHttp => (
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
                "Plain HTTP is not served; use https",
            ),
            NoHost => (
                StatusCode::BAD_REQUEST,
                "M_UNRECOGNIZED",
                "Request has no Host header",
            ),
            TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "Request body too large",
            ),
            BackendUnreachable(_) => (
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                "The homeserver is unreachable",
            ),
            BackendTimeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "M_UNKNOWN",
                "The homeserver did not answer in time",
            ),
            BackendFailed(_) => (
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                "The homeserver failed to answer",
            ),
            ClientBody(_) => (
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "The request body could not be read",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "Internal proxy error",
            ),
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let (status, errcode, message) = self.status_and_code();
        matrix_error(status, errcode, message)
    }
}

/// A Matrix JSON error response.
pub fn matrix_error(status: StatusCode, errcode: &str, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "errcode": errcode, "error": message }).to_string();
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_matrix_json() {
        let resp = ProxyError::TooLarge { limit: 10 }.into_response();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errcode"], "M_TOO_LARGE");
        assert!(v["error"].is_string());
    }
}
