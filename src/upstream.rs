//! The connection pool to the homeserver: HTTP/1.1 keep-alive over TCP or a unix socket.
//!
//! Owns how the backend is reached and nothing about what is sent: `forward` builds requests.
//! Always HTTP/1.1, because Synapse's listeners speak nothing else and chunked responses need it.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Uri, Version};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Backend, BackendTarget};

/// The body of a forwarded request: none (most requests), or the client's stream, counted and
/// capped at `limits.max_body`.
pub enum RequestBody {
    Empty,
    Client(Limited<ClientBody>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Client(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Client(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RequestBody::Empty => http_body::SizeHint::with_exact(0),
            RequestBody::Client(body) => body.size_hint(),
        }
    }
}

/// The client's request body as the backend request reads it. The body itself sits in a
/// [`BodySlot`] that the response side can empty: when the response is complete before the
/// request body is (a backend that answers early, as nginx's `return` does), dropping the body
/// tells an h2 client to stop sending (RST_STREAM) instead of leaving it blocked on flow control
/// that nobody will ever open again (RFC 9113 §8.1).
pub struct ClientBody {
    slot: BodySlot,
    count: Arc<AtomicU64>,
}

/// Shared ownership of a client's request body, until the response is done with it.
#[derive(Clone)]
pub struct BodySlot(Arc<SlotInner>);

struct SlotInner {
    body: Mutex<Option<Incoming>>,
    version: Version,
    /// Set when the backend request has read the body to its end.
    sent: tokio::sync::watch::Sender<bool>,
}

impl BodySlot {
    pub fn new(body: Incoming, version: Version) -> Self {
        let done = http_body::Body::is_end_stream(&body);
        let (sent, _) = tokio::sync::watch::channel(done);
        BodySlot(Arc::new(SlotInner {
            body: Mutex::new(Some(body)),
            version,
            sent,
        }))
    }

    /// Resolves once the whole request body has been read for the backend.
    pub async fn sent(&self) {
        let mut rx = self.0.sent.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Takes the client's body away from the backend request, which then sees it end. Call it
    /// once the response has been sent in full. If the client is still sending:
    /// - h2: the body is dropped, and the stream reset with NO_ERROR (the h2 library does so
    ///   for a stream whose response is complete), which tells the client its request is done;
    /// - HTTP/1.1: the rest is read and discarded in the background, so the connection stays
    ///   usable and the client completes its request as with a backend that read everything.
    pub fn release(&self) {
        let Some(body) = self.0.body.lock().ok().and_then(|mut slot| slot.take()) else {
            return;
        };
        if self.0.version == Version::HTTP_2 || http_body::Body::is_end_stream(&body) {
            return;
        }
        tokio::spawn(drain(body));
    }
}

/// How long a client may keep sending a body nobody needs any more.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt;
    let discard = async {
        // Bounded by the client: it ends at the end of the stream or at the first error.
        while let Some(Ok(_)) = body.frame().await {}
    };
    let _ = tokio::time::timeout(DRAIN_LIMIT, discard).await;
}

impl ClientBody {
    pub fn new(slot: BodySlot, count: Arc<AtomicU64>) -> Self {
        ClientBody { slot, count }
    }
}

impl http_body::Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Ok(mut slot) = this.slot.0.body.lock() else {
            return Poll::Ready(None);
        };
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if http_body::Body::is_end_stream(&*body) {
                    this.slot.0.sent.send_replace(true);
                }
            }
            Poll::Ready(None) => {
                this.slot.0.sent.send_replace(true);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self.slot.0.body.lock() {
            Ok(slot) => slot.as_ref().is_none_or(|b| b.is_end_stream()),
            Err(_) => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.slot.0.body.lock() {
            Ok(slot) => slot.as_ref().map(|b| b.size_hint()).unwrap_or_default(),
            Err(_) => http_body::SizeHint::default(),
        }
    }
}

/// The backend, reachable by `send`.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, RequestBody>,
    /// `host:port` for TCP; a fixed placeholder for unix sockets, which the connector ignores.
    /// Never sent: the `Host` header is set by `forward`.
    authority: Authority,
}

impl Upstream {
    pub fn new(backend: &Backend) -> Self {
        let authority = match &backend.target {
            BackendTarget::Tcp { authority } => Authority::try_from(authority.as_str()).ok(),
            BackendTarget::Unix(_) => None,
        }
        .unwrap_or_else(|| Authority::from_static("unix.socket"));
        let connector = Connector {
            target: Arc::new(backend.target.clone()),
            connect_timeout: backend.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(backend.pool_idle_timeout)
            .pool_max_idle_per_host(backend.pool_max_idle)
            // The Host header is the client's, set explicitly; never derived from our URI.
            .set_host(false)
            .build(connector);
        Upstream { client, authority }
    }

    /// The backend URI for a raw request-target (path and query, byte for byte: the bytes are
    /// shared with the client's request, not parsed again).
    pub fn uri_for(&self, path_and_query: Option<PathAndQuery>) -> Result<Uri, http::Error> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query =
            Some(path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
        Uri::from_parts(parts).map_err(http::Error::from)
    }

    pub fn send(
        &self,
        req: http::Request<RequestBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
    }
}

/// Opens connections to the backend, TCP or unix, whatever the URI says.
#[derive(Clone)]
pub struct Connector {
    target: Arc<BackendTarget>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<BackendStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = self.target.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let connect = async {
                match &*target {
                    BackendTarget::Tcp { authority } => {
                        let stream = TcpStream::connect(authority.as_str()).await?;
                        stream.set_nodelay(true)?;
                        Ok(BackendStream::Tcp(stream))
                    }
                    BackendTarget::Unix(path) => UnixStream::connect(path)
                        .await
                        .map(BackendStream::Unix)
                        .map_err(|e| unix_error(path, e)),
                }
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(result) => result.map(TokioIo::new),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to the backend took longer than {timeout:?}"),
                )),
            }
        })
    }
}

fn unix_error(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A connection to the backend.
pub enum BackendStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection for BackendStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Tcp(s) => s.is_write_vectored(),
            BackendStream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
