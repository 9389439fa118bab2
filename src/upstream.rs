//! The connection pool to the homeserver: HTTP/1.1 keep-alive over TCP or a unix socket.
//!
//! Owns how the backend is reached and nothing about what is sent: `forward` and `relay` build
//! requests. Always HTTP/1.1, because Synapse's listeners speak nothing else and chunked
//! responses need it. Two kinds of idle connections are kept per worker: hyper client
//! connections for requests with a body, and raw ones the relay reads and writes itself for
//! body-less requests (most of them).

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Version;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Backend, BackendTarget};
use crate::workers;

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

/// The backend, reachable by [`Upstream::send`]. Cloning shares the pool.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
}

/// Idle keep-alive connections to the backend, one stack per worker thread: a backend connection
/// is driven by the worker that opened it, and only requests on that worker use it again, so a
/// request never waits on another thread. Newest last: a request takes the most recently used
/// connection, whose socket is the least likely to have been closed by the backend meanwhile, and
/// the oldest ones age out at the front.
struct Pool {
    target: BackendTarget,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Index [`workers::current`]: 0 for threads that are not workers.
    shards: Box<[Arc<Shard>]>,
}

/// One worker's idle connections. Shared (an `Arc`) with the response bodies that will bring
/// their connection back, so that a request touches only its own worker's reference count.
struct Shard {
    idle: IdleStack<SendRequest<RequestBody>>,
    /// Idle connections of the HTTP/1.1 relay, which reads and writes them itself.
    raw: IdleStack<RawConn>,
    /// `backend.pool_max_idle` split over the workers.
    max_idle: usize,
}

/// Idle connections of one kind, newest last, each with the time it became idle.
struct IdleStack<C>(Mutex<VecDeque<(C, Instant)>>);

impl<C> IdleStack<C> {
    fn new() -> Self {
        IdleStack(Mutex::new(VecDeque::new()))
    }

    /// The most recently used connection that is younger than `timeout` and `usable`. The
    /// others on the way are dropped, which closes them.
    fn checkout(&self, timeout: Duration, usable: impl Fn(&C) -> bool) -> Option<C> {
        let mut idle = self.0.lock().ok()?;
        let now = Instant::now();
        while let Some((conn, since)) = idle.pop_back() {
            if now.duration_since(since) < timeout && usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request; at `max` the oldest goes, as the one most likely to
    /// be closed by the backend soon.
    fn checkin(&self, conn: C, max: usize) {
        if max == 0 {
            return;
        }
        let Ok(mut idle) = self.0.lock() else {
            return;
        };
        if idle.len() >= max {
            idle.pop_front();
        }
        idle.push_back((conn, Instant::now()));
    }

    /// Drops what is older than `timeout` or no longer `usable`.
    fn reap(&self, timeout: Duration, usable: impl Fn(&C) -> bool) {
        if let Ok(mut idle) = self.0.lock() {
            let now = Instant::now();
            idle.retain(|(conn, since)| now.duration_since(*since) < timeout && usable(conn));
        }
    }
}

/// A backend connection the relay drives itself, with its read buffer (kept, empty, while the
/// connection is idle, so a request does not allocate one).
pub(crate) struct RawConn {
    pub(crate) stream: BackendStream,
    pub(crate) buf: Vec<u8>,
}

impl RawConn {
    /// True when an idle connection has nothing to read: no close, no stray bytes. Costs no
    /// syscall unless the socket was reported readable since its last read, which for an idle
    /// connection means it was closed or sent something it should not have.
    fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        let read = match &self.stream {
            BackendStream::Tcp(s) => s.try_read(&mut probe),
            BackendStream::Unix(s) => s.try_read(&mut probe),
        };
        matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Why a request got no response from the backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, or slower than `backend.connect_timeout`.
    #[error("connecting to the backend: {0}")]
    Connect(#[source] io::Error),
    /// A connection, but the exchange failed: reset, closed early, a malformed response, or the
    /// request body failing while it was streamed.
    #[error("exchange with the backend failed: {0}")]
    Exchange(#[source] hyper::Error),
    /// The same, on a connection the relay drives itself.
    #[error("exchange with the backend failed: {0}")]
    Relay(String),
}

/// How many pooled connections one request tries before opening a new one: each try that fails
/// on a connection the backend had already closed costs nothing but a syscall.
pub(crate) const POOLED_TRIES: usize = 4;

impl Upstream {
    /// A pool for `workers` worker threads.
    pub fn new(backend: &Backend, workers: usize) -> Self {
        let workers = workers.max(1);
        let pool = Arc::new(Pool {
            target: backend.target.clone(),
            connect_timeout: backend.connect_timeout,
            idle_timeout: backend.pool_idle_timeout,
            shards: (0..=workers)
                .map(|_| {
                    Arc::new(Shard {
                        idle: IdleStack::new(),
                        raw: IdleStack::new(),
                        max_idle: backend.pool_max_idle.div_ceil(workers),
                    })
                })
                .collect(),
        });
        // Closes connections idle past the timeout even when no request comes to notice them.
        // Outside a runtime (unit tests that build a server without serving) there is nothing to
        // reap yet.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&pool)));
        }
        Upstream { pool }
    }

    /// Sends `req` on a pooled connection or a new one. The request must carry its `Host` header
    /// and an origin-form URI; both go out as they are.
    pub async fn send(
        &self,
        mut req: http::Request<RequestBody>,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        for _ in 0..POOLED_TRIES {
            let Some(mut sender) = self.pool.checkout() else {
                break;
            };
            // Pending only while the connection finishes the previous exchange; an error means
            // the backend closed it.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pool.attach(resp, sender)),
                // Nothing was written: the connection closed under us. Try the next one.
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Exchange(e.into_error())),
                },
            }
        }
        // Boxed: connecting is rare on a warm pool, and its future is most of this one's size.
        let mut sender = Box::pin(self.pool.connect()).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.pool.attach(resp, sender)),
            Err(e) => Err(UpstreamError::Exchange(e)),
        }
    }
}

impl Upstream {
    /// The most recently used idle relay connection of this worker that is young enough and
    /// still open as far as the socket tells. The backend may still close it in the meantime.
    pub(crate) fn checkout_raw(&self) -> Option<RawConn> {
        self.pool
            .shard()
            .raw
            .checkout(self.pool.idle_timeout, RawConn::is_quiet)
    }

    /// A new connection for the relay.
    pub(crate) async fn connect_raw(&self) -> Result<RawConn, UpstreamError> {
        let stream = Box::pin(self.pool.open()).await?;
        Ok(RawConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Puts a relay connection whose exchange has ended, read to its end, back for the next
    /// request.
    pub(crate) fn checkin_raw(&self, conn: RawConn) {
        let shard = self.pool.shard();
        shard.raw.checkin(conn, shard.max_idle);
    }
}

impl Pool {
    /// The idle connections of the calling thread.
    fn shard(&self) -> &Arc<Shard> {
        let i = workers::current();
        self.shards.get(i).unwrap_or(&self.shards[0])
    }

    /// The most recently used live connection, if any. Expired and closed ones are dropped on
    /// the way, which closes them.
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        self.shard()
            .idle
            .checkout(self.idle_timeout, |sender| !sender.is_closed())
    }

    fn attach(
        &self,
        resp: http::Response<Incoming>,
        sender: SendRequest<RequestBody>,
    ) -> http::Response<UpstreamBody> {
        let shard = self.shard().clone();
        resp.map(|body| UpstreamBody::new(body, sender, shard))
    }

    /// A new connection to the backend, within `connect_timeout`.
    async fn open(&self) -> Result<BackendStream, UpstreamError> {
        let connect = async {
            match &self.target {
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
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result.map_err(UpstreamError::Connect),
            Err(_) => Err(UpstreamError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connecting to the backend took longer than {:?}",
                    self.connect_timeout
                ),
            ))),
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let stream = self.open().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Exchange)?;
        // The connection's own task reads and writes the socket; it ends when the backend closes
        // the connection or when the last `SendRequest` for it is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Shard {
    /// Puts a connection whose exchange has ended back for the next request.
    fn checkin(&self, sender: SendRequest<RequestBody>) {
        if !sender.is_closed() {
            self.idle.checkin(sender, self.max_idle);
        }
    }
}

/// Drops idle connections past `idle_timeout`, every half timeout, until the pool is gone.
async fn reap(pool: std::sync::Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        for shard in &pool.shards {
            shard
                .idle
                .reap(pool.idle_timeout, |sender| !sender.is_closed());
            shard.raw.reap(pool.idle_timeout, |_| true);
        }
    }
}

/// A backend response body. Its connection goes back to the pool the moment the body has been
/// read to its end; a body dropped before that takes the connection with it (hyper closes it,
/// since the rest of the response would still be on the wire).
pub struct UpstreamBody {
    body: Incoming,
    home: Option<(SendRequest<RequestBody>, Arc<Shard>)>,
}

impl UpstreamBody {
    fn new(body: Incoming, sender: SendRequest<RequestBody>, shard: Arc<Shard>) -> Self {
        let mut this = UpstreamBody {
            body,
            home: Some((sender, shard)),
        };
        if http_body::Body::is_end_stream(&this.body) {
            this.release();
        }
        this
    }

    fn release(&mut self) {
        if let Some((sender, shard)) = self.home.take() {
            shard.checkin(sender);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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
