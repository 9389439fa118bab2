//! Listeners: binding sockets, accepting connections, TLS handshakes, and each connection's life
//! until it ends, idles out or is drained at shutdown.
//!
//! Owns sockets and connection lifetimes; what a request means is `server`'s business. The
//! accept loop never dies on a per-connection error, and on resource exhaustion (EMFILE) it waits
//! a moment instead of spinning. Shutdown is two-phased: `Drain` stops accepting and asks every
//! connection to finish its in-flight requests, `Close` drops whatever is left.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};

use crate::metrics::{HandshakeResult, Metrics};
use crate::relay;
use crate::route::Role;
use crate::server::{ConnService, Server, SharedServer};
use crate::workers::Workers;

/// Where the process is in its life; connections watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Stop accepting; finish in-flight requests; close idle connections.
    Drain,
    /// The grace period is over: close everything now.
    Close,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({role}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub role: &'static str,
    #[source]
    pub source: io::Error,
}

/// A bound socket and what it is for.
pub struct Bound {
    pub role: Role,
    /// The address as configured (port 0 stays 0); reloads compare these.
    pub configured: SocketAddr,
    pub listener: TcpListener,
}

impl Bound {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Resolves once the phase is at least `phase`. The watch guard is dropped before returning so
/// the future stays `Send`.
pub async fn reached(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    let _ = rx.wait_for(|p| *p >= phase).await.map(|_| ());
}

/// Binds one address. An IPv6 wildcard also takes IPv4 (dual stack) unless `v6_only`, which the
/// caller sets when the same port is also bound on the IPv4 wildcard.
pub fn bind(
    addr: SocketAddr,
    v6_only: bool,
    role_name: &'static str,
) -> Result<TcpListener, BindError> {
    let err = |source| BindError {
        addr,
        role: role_name,
        source,
    };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// Binds every address of a role list.
pub fn bind_all(role: Role, addrs: &[SocketAddr]) -> Result<Vec<Bound>, BindError> {
    addrs
        .iter()
        .map(|addr| {
            let v6_only = addr.ip().is_unspecified()
                && addr.is_ipv6()
                && addrs
                    .iter()
                    .any(|a| a.is_ipv4() && a.ip().is_unspecified() && a.port() == addr.port());
            bind(*addr, v6_only, role.as_str()).map(|listener| Bound {
                role,
                configured: *addr,
                listener,
            })
        })
        .collect()
}

/// Counts in-flight requests on one connection and when the last one ended, so an idle
/// connection can be closed whatever its protocol.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the connection last became idle.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

/// Held while a request is in flight (until its response body is done or dropped).
#[derive(Debug)]
pub struct ActivityGuard(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    pub fn start(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let wake = if self.in_flight.load(Ordering::Acquire) == 0 {
                let since =
                    self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                let deadline = since + timeout;
                if Instant::now() >= deadline {
                    return;
                }
                deadline
            } else {
                Instant::now() + timeout
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The TLS side of a listener.
#[derive(Clone)]
pub struct TlsSettings {
    /// Every ordinary handshake.
    pub config: Arc<rustls::ServerConfig>,
    /// Handshakes offering only ALPN `acme-tls/1`: an ACME server validating a name.
    pub tls_alpn_challenge: Option<Arc<rustls::ServerConfig>>,
}

/// Settings every connection of a listener needs. Limits and timeouts are read from the current
/// [`Server`] when a connection starts, so a reload applies to new connections.
#[derive(Clone)]
pub struct ConnSettings {
    pub tls: Option<TlsSettings>,
    pub metrics: Arc<Metrics>,
}

/// Accepts on one listener until the phase leaves `Running` or `stop` changes (the listener was
/// removed by a reload; its open connections carry on). Each worker runs one of these on its own
/// copy of the socket: the kernel hands each connection to one of them.
pub async fn accept_loop(
    socket: std::net::TcpListener,
    role: Role,
    server: SharedServer,
    settings: ConnSettings,
    mut phase: watch::Receiver<Phase>,
    mut stop: watch::Receiver<bool>,
    tracker: mpsc::Sender<()>,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            warn!(role = role.as_str(), error = %e, "cannot accept on this worker");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = reached(&mut phase, Phase::Drain) => break,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if is_resource_exhaustion(&e) {
                    warn!(role = role.as_str(), error = %e, "accept failed for lack of resources; pausing 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    debug!(role = role.as_str(), error = %e, "accept failed");
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let settings = settings.clone();
        let phase = phase.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            settings.metrics.connections_open.inc();
            serve_stream(stream, peer, role, server, &settings, phase).await;
            settings.metrics.connections_open.dec();
            drop(tracker);
        });
    }
}

/// Starts accepting on `bound` on every worker. Returns the switch that stops them all (send
/// `true` or drop it).
pub fn spawn_accept_loops(
    bound: Bound,
    workers: &Workers,
    server: &SharedServer,
    settings: &ConnSettings,
    phase: &watch::Receiver<Phase>,
    tracker: &mpsc::Sender<()>,
) -> io::Result<watch::Sender<bool>> {
    let (stop, stopped) = watch::channel(false);
    let role = bound.role;
    let socket = bound.listener.into_std()?;
    let mut copies = Vec::with_capacity(workers.count());
    for _ in 0..workers.count() {
        copies.push(socket.try_clone()?);
    }
    let mut copies = copies.into_iter();
    workers.spawn_each(|_| {
        let copy = copies.next();
        let (server, settings, phase, stopped, tracker) = (
            server.clone(),
            settings.clone(),
            phase.clone(),
            stopped.clone(),
            tracker.clone(),
        );
        async move {
            if let Some(socket) = copy {
                accept_loop(socket, role, server, settings, phase, stopped, tracker).await;
            }
        }
    });
    Ok(stop)
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the next accept will fail too unless we wait.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}

// Memory per connection: the task of a connection holds only pointers and small state; the
// handshake and the HTTP machinery are separate boxes, each alive only while it is needed, and an
// HTTP/1.1 connection gets hyper's state and read buffer only once a request starts arriving. An
// idle keep-alive connection thus costs its socket, its TLS state and this small task.
async fn serve_stream(
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    server: SharedServer,
    settings: &ConnSettings,
    phase: watch::Receiver<Phase>,
) {
    let current = server.load_full();
    let limits = current.limits();
    let idle_timeout = limits.idle_timeout;
    let conn = Conn {
        peer,
        role,
        shared: &server,
        current: &current,
        idle_timeout,
        phase,
    };
    match &settings.tls {
        None => Box::pin(conn.serve(stream, false)).await,
        Some(tls) => {
            let handshake = Box::pin(tokio::time::timeout(
                limits.header_read_timeout,
                handshake(stream, tls),
            ));
            let metrics = &settings.metrics;
            match handshake.await {
                Ok(Ok(Handshake::Http(tls))) => {
                    metrics.handshake(HandshakeResult::ok);
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Box::pin(conn.serve(tls, h2)).await
                }
                Ok(Ok(Handshake::AcmeChallenge)) => {
                    metrics.handshake(HandshakeResult::acme_challenge);
                    info!(%peer, role = role.as_str(), "answered a TLS-ALPN-01 validation")
                }
                Ok(Err(e)) => {
                    metrics.handshake(HandshakeResult::failed);
                    debug!(%peer, error = %e, "TLS handshake failed")
                }
                Err(_) => {
                    metrics.handshake(HandshakeResult::timeout);
                    debug!(%peer, "TLS handshake timed out")
                }
            }
        }
    }
}

enum Handshake {
    Http(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A validation handshake, complete: the ACME server only needs to see the certificate.
    AcmeChallenge,
}

/// Reads the ClientHello first, so that an ACME server's `acme-tls/1` handshake gets the
/// challenge certificate and everything else the served certificates.
async fn handshake(stream: TcpStream, tls: &TlsSettings) -> io::Result<Handshake> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
    if let Some(challenge) = &tls.tls_alpn_challenge
        && rustls_acme::is_tls_alpn_challenge(&start.client_hello())
    {
        let mut stream = start.into_stream(challenge.clone()).await?;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        return Ok(Handshake::AcmeChallenge);
    }
    let stream = start.into_stream(tls.config.clone()).await?;
    Ok(Handshake::Http(Box::new(stream)))
}

/// A client stream that can say whether a request has started to arrive without reading it.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Bytes already read off the socket and waiting to be consumed.
    fn has_buffered(&mut self) -> bool;
    fn socket(&self) -> &TcpStream;
}

impl ClientStream for TcpStream {
    fn has_buffered(&mut self) -> bool {
        false
    }
    fn socket(&self) -> &TcpStream {
        self
    }
}

// Boxed: the TLS state is large, and a connection's futures carry the stream through its life.
impl ClientStream for Box<tokio_rustls::server::TlsStream<TcpStream>> {
    fn has_buffered(&mut self) -> bool {
        // Records that came with the handshake's last flight are decrypted now; on a TLS error
        // hyper gets the stream and reports it.
        self.get_mut()
            .1
            .process_new_packets()
            .map(|state| state.plaintext_bytes_to_read() > 0)
            .unwrap_or(true)
    }
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// What serving one connection needs besides the stream.
struct Conn<'a> {
    peer: SocketAddr,
    role: Role,
    shared: &'a SharedServer,
    current: &'a Server,
    idle_timeout: Duration,
    phase: watch::Receiver<Phase>,
}

impl Conn<'_> {
    /// Waits for the first request, then serves HTTP on a state of its own: while a connection
    /// waits, only this small future and the stream exist.
    async fn serve<IO: ClientStream>(mut self, mut io: IO, h2: bool) {
        if !h2 && !io.has_buffered() {
            // An h2 client sends its preface at once: it is never waited for.
            let arrived = tokio::select! {
                ready = io.socket().readable() => ready.is_ok(),
                _ = reached(&mut self.phase, Phase::Drain) => false,
                _ = tokio::time::sleep(self.idle_timeout) => false,
            };
            if !arrived {
                return;
            }
        }
        Box::pin(self.http(io, h2)).await
    }

    async fn http<IO: ClientStream>(self, io: IO, h2: bool) {
        if h2 {
            return self.hyper(io, true).await;
        }
        let forwarded_for = crate::forward::forwarded_for_value(self.peer.ip());
        let ctx = relay::Ctx {
            peer: self.peer,
            role: self.role,
            shared: self.shared,
            forwarded_for: forwarded_for.as_bytes(),
            idle_timeout: self.idle_timeout,
            phase: self.phase.clone(),
        };
        let mut phase = self.phase.clone();
        let outcome = tokio::select! {
            biased;
            outcome = relay::serve(io, ctx) => outcome,
            _ = reached(&mut phase, Phase::Close) => return,
        };
        match outcome {
            relay::Outcome::Closed => {}
            relay::Outcome::Handoff { io, buffered } => {
                self.hyper(relay::Prefixed::new(buffered, io), false).await
            }
        }
    }

    async fn hyper<IO>(self, io: IO, h2: bool)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let service = ConnService::new(self.shared.clone(), self.role, self.peer, activity.clone());
        let io = TokioIo::new(io);
        if h2 {
            let conn = self.current.http2().serve_connection(io, service);
            drive(conn, &activity, self.idle_timeout, self.phase).await
        } else {
            let conn = self.current.http1().serve_connection(io, service);
            drive(conn, &activity, self.idle_timeout, self.phase).await
        }
    }
}

/// Runs a connection until it ends, closing it gracefully when idle or draining, and at once on
/// `Close`.
async fn drive<C>(
    conn: C,
    activity: &Activity,
    idle_timeout: Duration,
    mut phase: watch::Receiver<Phase>,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = reached(&mut phase, Phase::Drain) => {}
        _ = activity.idle(idle_timeout) => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = reached(&mut phase, Phase::Close) => {}
    }
}

/// Everything `run` needs to stop: the phase sender and the tracker that counts live tasks.
pub struct Lifecycle {
    pub phase: watch::Sender<Phase>,
    pub tracker: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

impl Lifecycle {
    pub fn new() -> Self {
        let (phase, _) = watch::channel(Phase::Running);
        let (tracker, done) = mpsc::channel(1);
        Lifecycle {
            phase,
            tracker,
            done,
        }
    }

    /// Drains: stop accepting, wait up to `grace` for open connections, then close the rest.
    /// Returns true when every connection finished within the grace period.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let Lifecycle {
            phase,
            tracker,
            mut done,
        } = self;
        let _ = phase.send(Phase::Drain);
        drop(tracker);
        // recv() returns None once every task holding a tracker clone has ended.
        let drained = tokio::time::timeout(grace, done.recv()).await.is_ok();
        if !drained {
            warn!(grace = ?grace, "shutdown grace period over; closing the remaining connections");
            let _ = phase.send(Phase::Close);
            let _ = tokio::time::timeout(Duration::from_secs(5), done.recv()).await;
        }
        drained
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn size<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection holds its task's future for its whole life: the handshake and the
    /// HTTP state must stay in boxes of their own, not inline in it.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let config = crate::config::Config::parse(
            "server_name = \"a.test\"\n[backend]\nurl = \"http://127.0.0.1:1\"\n\
             [listen]\nhttps = [\"127.0.0.1:0\"]\nfederation = []\n[tls]\nself_signed = true\n",
        )
        .unwrap()
        .config;
        let metrics = Arc::new(Metrics::new());
        let server: SharedServer = Arc::new(arc_swap::ArcSwap::from_pointee(Server::new(
            &config,
            None,
            metrics.clone(),
            None,
        )));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let settings = ConnSettings { tls: None, metrics };
        let (_phase, rx) = watch::channel(Phase::Running);
        let peer = "127.0.0.1:1".parse().unwrap();
        let task = serve_stream(stream, peer, Role::Https, server, &settings, rx);
        assert!(size(&task) <= 512, "{} bytes", size(&task));
    }
}
