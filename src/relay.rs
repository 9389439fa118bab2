//! The HTTP/1.1 relay: the common request (HTTP/1.1, no body, forwarded) passed to the backend
//! as bytes, and its response passed back as bytes, without building request or header maps.
//!
//! Owns an HTTP/1.1 client connection from its first request until the first request it does
//! not take. That request, and every byte read after it, goes to hyper (`server`) with the
//! connection, before any of it has been written anywhere; hyper serves the connection from
//! then on. So every rule other than plain forwarding (well-known files, redirects, refusals,
//! bodies and their limits, `Expect`, upgrades, anything malformed) has one implementation.
//!
//! A request is taken only when forwarding it needs no more than the edits `forward` makes to
//! every request: HTTP/1.1; an origin-form target of plain URI characters; one `Host`; no body
//! (no `Transfer-Encoding`; `Content-Length` absent or `0`); no `Upgrade`, `Expect`, `TE`,
//! `Trailer` or `Keep-Alive`; `Connection` naming only `keep-alive` or `close`; forwarding headers
//! only from a peer that is not a trusted proxy (they are dropped, as `forward` drops them); a
//! route that forwards. The method, the request-target and every other header go out byte for
//! byte, in the client's order; `X-Forwarded-For` and `X-Forwarded-Proto` are appended.
//!
//! The response's head is rewritten as `forward` does it (hop-by-hop headers go) and its body is
//! streamed as it comes: by `Content-Length`, by chunks (passed through, framing included), or to
//! the backend's close (then the client connection closes after it). Must not: answer a request
//! itself other than with a backend failure (502/504), buffer a whole body, or send a request
//! again that is not idempotent.

use std::fmt::Write as _;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::listener::{Phase, reached};
use crate::metrics::RouteClass;
use crate::respond::{ProxyError, Record};
use crate::route::{self, Role, Route};
use crate::server::{Server, SharedServer};
use crate::upstream::RawConn;

/// Headers a taken request may carry: more go to hyper.
const MAX_HEADERS: usize = 64;
/// Headers a backend response may carry (hyper's client allows as many).
const MAX_RESPONSE_HEADERS: usize = 100;
/// Largest backend response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// What one read of a response body asks for.
const BODY_CHUNK: usize = 32 * 1024;
/// Room for one read of a request head.
const READ_CHUNK: usize = 4096;
/// How much of a response body is copied to go out with its head.
const WITH_HEAD: usize = 8 * 1024;
/// Capacity a buffer of an idle connection may keep.
const IDLE_BUFFER: usize = 8 * 1024;

/// The status logged for a request whose client left before the response head, as nginx logs
/// it.
const CLIENT_CLOSED: u16 = 499;

/// How a relayed connection ended.
pub(crate) enum Outcome<IO> {
    /// Closed: by the client, after an error, idle, or drained.
    Closed,
    /// A request the relay does not take: hyper serves the connection from here, reading
    /// `buffered` first.
    Handoff { io: IO, buffered: Bytes },
}

/// What the relay needs of its connection besides the stream.
pub(crate) struct Ctx<'a> {
    pub peer: SocketAddr,
    pub role: Role,
    pub shared: &'a SharedServer,
    /// The peer as `X-Forwarded-For` writes it.
    pub forwarded_for: &'a [u8],
    pub idle_timeout: Duration,
    pub phase: watch::Receiver<Phase>,
}

/// Serves requests on `io` until the connection ends or a request is not the relay's to take.
pub(crate) async fn serve<IO>(mut io: IO, mut ctx: Ctx<'_>) -> Outcome<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::new();
    let mut timer = Watchdog::new(after(Instant::now(), ctx.idle_timeout));
    loop {
        // A complete request head, read as it comes.
        let mut head_started = false;
        let (server, plan) = loop {
            if !input.is_empty() {
                let server = ctx.shared.load_full();
                // Larger heads are hyper's to refuse (431).
                let limit = server.max_h1_head();
                match plan(&input, &ctx, &server, &mut out) {
                    Parsed::Ready(plan) if plan.head_len <= limit => break (server, plan),
                    Parsed::Partial if input.len() < limit => {
                        if !head_started {
                            // From its first bytes on, a head must arrive in time.
                            head_started = true;
                            timer.set(after(Instant::now(), server.limits().header_read_timeout));
                        }
                    }
                    Parsed::Ready(_) | Parsed::Partial | Parsed::Other => {
                        return Outcome::Handoff {
                            io,
                            buffered: Bytes::from(input),
                        };
                    }
                }
            }
            let idle = input.is_empty();
            input.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = io.read_buf(&mut input) => read,
                _ = timer.expired() => return Outcome::Closed,
                _ = reached(&mut ctx.phase, Phase::Drain), if idle => return Outcome::Closed,
            };
            match read {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(_) => {}
            }
        };

        let start = Instant::now();
        let in_flight = InFlight::new(&server);
        let result = exchange(
            &mut io, &mut input, &server, &plan, &ctx.phase, &mut out, &mut timer, start,
        )
        .await;
        let end = Instant::now();
        let (status, bytes_out, keep_open) = match result {
            Ok(done) => (done.status, done.bytes_out, done.keep_open),
            // Cut short: the connection is dropped as it is, never closed cleanly, so the
            // client cannot take a truncated body for a whole one.
            Err(Failure::Midway { status, bytes_out }) => {
                record(&server, &ctx, &plan, &input, end - start, status, bytes_out);
                return Outcome::Closed;
            }
            Err(Failure::Proxy(e)) => {
                server.note_failure(&e, ctx.peer, RouteClass::of(&plan.route));
                let status = e.status_and_code().0.as_u16();
                error_response(&e, &mut out);
                let _ = write_flush(&mut io, &out).await;
                (status, 0, false)
            }
            Err(Failure::ClientGone) => (CLIENT_CLOSED, 0, false),
        };
        record(&server, &ctx, &plan, &input, end - start, status, bytes_out);
        drop(in_flight);
        if !keep_open {
            linger(&mut io).await;
            return Outcome::Closed;
        }
        input.drain(..plan.head_len);
        // An idle keep-alive connection keeps small buffers only.
        if input.is_empty() && input.capacity() > IDLE_BUFFER {
            input = Vec::with_capacity(READ_CHUNK);
        }
        if out.capacity() > IDLE_BUFFER {
            out = Vec::new();
        }
        timer.set(after(end, ctx.idle_timeout));
    }
}

/// The longest request-target hyper takes (it answers 414 beyond).
const MAX_TARGET: usize = 65_534;

/// RFC 9110 §9.2.2: a request that may be sent again when no response to it came back.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Counts and logs a relayed request.
fn record(
    server: &Server,
    ctx: &Ctx<'_>,
    plan: &Plan,
    input: &[u8],
    elapsed: Duration,
    status: u16,
    bytes_out: u64,
) {
    server.record(&Record {
        elapsed,
        class: RouteClass::of(&plan.route),
        status,
        method: &plan.method,
        path: std::str::from_utf8(&input[plan.path.clone()]).unwrap_or("/"),
        version: http::Version::HTTP_11,
        peer: ctx.peer,
        origin: plan.origin.as_deref(),
        bytes_in: 0,
        bytes_out,
    });
}

/// A taken request.
struct Plan {
    head_len: usize,
    method: Method,
    /// The path of the target, within the head: for the log.
    path: Range<usize>,
    route: Route,
    origin: Option<String>,
    client_close: bool,
}

enum Parsed {
    Ready(Plan),
    /// More bytes are needed.
    Partial,
    /// Not the relay's: malformed, or anything but plain forwarding.
    Other,
}

/// Reads a request head from `buf` and, if the relay takes it, writes the backend's copy to
/// `out`.
fn plan(buf: &[u8], ctx: &Ctx<'_>, server: &Server, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT
        || !target.starts_with('/')
        || target.len() > MAX_TARGET
        || !target.bytes().all(plain_uri_byte)
    {
        return Parsed::Other;
    }
    let path_len = target.find('?').unwrap_or(target.len());
    let route = route::classify(
        ctx.role,
        &method,
        &target[..path_len],
        ctx.peer.ip(),
        server.policy(),
    );
    if !matches!(route, Route::Forward(_)) {
        return Parsed::Other;
    }
    let trusted = server.forwarder().is_trusted(ctx.peer.ip());
    let wants_origin = matches!(
        RouteClass::of(&route),
        RouteClass::federation | RouteClass::keys | RouteClass::media
    );

    out.clear();
    // The request line as the client sent it: httparse accepts exactly `method SP target SP
    // HTTP/1.1`, so these are its bytes.
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut hosts = 0;
    let mut lengths = 0;
    let mut client_close = false;
    let mut origin = None;
    let mut origin_seen = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match classify_request_header(name) {
            RequestHeader::Plain => {}
            RequestHeader::Host => hosts += 1,
            RequestHeader::ContentLength => {
                // One, and zero: hyper sorts out anything else (and keeps one of repeats).
                if lengths > 0 || h.value.trim_ascii() != b"0" {
                    return Parsed::Other;
                }
                lengths += 1;
            }
            RequestHeader::Connection => {
                match connection_tokens(h.value) {
                    Some(close) => client_close |= close,
                    None => return Parsed::Other,
                }
                continue;
            }
            RequestHeader::Authorization => {
                if wants_origin
                    && !origin_seen
                    && let Ok(value) = std::str::from_utf8(h.value)
                    && let Some(x_matrix) = value.strip_prefix("X-Matrix ")
                {
                    origin_seen = true;
                    origin = crate::server::x_matrix_origin_in(x_matrix);
                }
            }
            RequestHeader::Forwarding => {
                if trusted {
                    return Parsed::Other;
                }
                continue;
            }
            RequestHeader::Refused => return Parsed::Other,
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if hosts != 1 {
        return Parsed::Other;
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    out.extend_from_slice(ctx.forwarded_for);
    out.extend_from_slice(b"\r\nx-forwarded-proto: https\r\n\r\n");

    let path_start = target.as_ptr() as usize - buf.as_ptr() as usize;
    Parsed::Ready(Plan {
        head_len,
        method,
        path: path_start..path_start + path_len,
        route,
        origin,
        client_close,
    })
}

/// The characters `http::Uri` takes in a path and query, less `#` (hyper would cut the
/// fragment off, so the target would not go out as it came).
fn plain_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

enum RequestHeader {
    Plain,
    Host,
    ContentLength,
    Connection,
    Authorization,
    /// Set by proxies: dropped from a client, and not taken from a trusted proxy (whose
    /// `X-Forwarded-For` is appended to, which `forward` does).
    Forwarding,
    /// Needs more than forwarding (a body, an upgrade, `Expect`) or is hop-by-hop in a way only
    /// `forward` handles.
    Refused,
}

fn classify_request_header(name: &[u8]) -> RequestHeader {
    const REFUSED: [&[u8]; 8] = [
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"te",
        b"trailer",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
    ];
    const FORWARDING: [&[u8]; 5] = [
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
        b"forwarded",
    ];
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    // Most headers are none of these: the lengths rule them out before any comparison.
    match name.len() {
        4 if is(b"host") => RequestHeader::Host,
        10 if is(b"connection") => RequestHeader::Connection,
        13 if is(b"authorization") => RequestHeader::Authorization,
        14 if is(b"content-length") => RequestHeader::ContentLength,
        _ if REFUSED.iter().any(|r| is(r)) => RequestHeader::Refused,
        _ if FORWARDING.iter().any(|f| is(f)) => RequestHeader::Forwarding,
        _ => RequestHeader::Plain,
    }
}

/// The tokens of a request's `Connection`: `Some(close?)` when it names only `keep-alive` and
/// `close`; `None` when it names headers, which only `forward` knows how to drop.
fn connection_tokens(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// The end of a relayed exchange.
struct Done {
    status: u16,
    bytes_out: u64,
    /// The client connection may serve another request.
    keep_open: bool,
}

enum Failure {
    /// Nothing was sent to the client: it gets the Matrix error.
    Proxy(ProxyError),
    /// The response was under way when the backend or the client failed: the connection closes.
    Midway { status: u16, bytes_out: u64 },
    /// The client closed its connection before the response head.
    ClientGone,
}

#[allow(clippy::too_many_arguments)]
async fn exchange<IO>(
    io: &mut IO,
    input: &mut Vec<u8>,
    server: &Server,
    plan: &Plan,
    phase: &watch::Receiver<Phase>,
    out: &mut Vec<u8>,
    timer: &mut Watchdog,
    start: Instant,
) -> Result<Done, Failure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let forwarder = server.forwarder();
    let upstream = forwarder.upstream();
    timer.set(after(start, forwarder.response_timeout()));
    let idempotent = is_idempotent(&plan.method);
    let head_request = plan.method == Method::HEAD;
    let mut tries = 0;
    let (mut conn, head) = loop {
        tries += 1;
        let pooled = if tries <= crate::upstream::POOLED_TRIES {
            upstream.checkout_raw()
        } else {
            None
        };
        let reused = pooled.is_some();
        // A pooled connection the backend closed meanwhile fails at the write or reads nothing
        // at all: the backend never saw the request, and an idempotent one goes on the next
        // connection. Once any byte of a response has come, nothing is sent again.
        let exchanged = async {
            let mut conn = match pooled {
                Some(conn) => conn,
                None => upstream.connect_raw().await.map_err(HeadError::Connect)?,
            };
            conn.stream.write_all(out).await.map_err(HeadError::Lost)?;
            let head = read_head(&mut conn, |buf| {
                // Decided as late as possible: a drain that began while the backend thought
                // still tells this client to go elsewhere for its next request.
                let close = plan.client_close || *phase.borrow() >= Phase::Drain;
                response_head(buf, head_request, close, out)
            })
            .await?;
            Ok((conn, head))
        };
        // Meanwhile the client is watched: if it leaves, the backend's work is abandoned (499).
        // Bytes it sends (a pipelined request) are kept, up to one head's worth.
        let mut watch_client = true;
        let attempt = async {
            tokio::pin!(exchanged);
            loop {
                tokio::select! {
                    biased;
                    attempt = &mut exchanged => return Ok(attempt),
                    _ = timer.expired() => {
                        return Err(Failure::Proxy(ProxyError::BackendTimeout(
                            forwarder.response_timeout(),
                        )));
                    }
                    read = io.read_buf(input), if watch_client => match read {
                        Ok(0) | Err(_) => return Err(Failure::ClientGone),
                        Ok(_) => watch_client = input.len() < plan.head_len + READ_CHUNK,
                    },
                }
            }
        }
        .await?;
        match attempt {
            Ok(exchanged) => break exchanged,
            Err(HeadError::Lost(_) | HeadError::Closed) if reused && idempotent => continue,
            Err(HeadError::Connect(e)) => {
                return Err(Failure::Proxy(ProxyError::BackendUnreachable(
                    e.to_string(),
                )));
            }
            Err(e) => return Err(Failure::Proxy(ProxyError::BackendFailed(e.to_string()))),
        }
    };

    // The head and the first of the body that came with it, in one write (a small response
    // whole).
    let mut framing = head.framing;
    let mut spare = conn.buf.len() - head.len;
    let take = framing.take(&conn.buf[head.len..]).map_err(|e| {
        Failure::Proxy(ProxyError::BackendFailed(format!(
            "malformed response body: {e}"
        )))
    })?;
    spare -= take;
    let body = &conn.buf[head.len..head.len + take];
    let (first, rest) = body.split_at(body.len().min(WITH_HEAD));
    out.extend_from_slice(first);
    let midway = |bytes_out| Failure::Midway {
        status: head.status,
        bytes_out,
    };
    write_flush(io, out).await.map_err(|_| midway(0))?;
    if !rest.is_empty() {
        write_flush(io, rest)
            .await
            .map_err(|_| midway(first.len() as u64))?;
    }
    let mut bytes_out = take as u64;

    while !framing.is_done() {
        conn.buf.clear();
        conn.buf.reserve(BODY_CHUNK);
        let n = match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if framing == Framing::UntilClose => break,
            Ok(0) | Err(_) => return Err(midway(bytes_out)),
            Ok(n) => n,
        };
        let take = framing
            .take(&conn.buf[..n])
            .map_err(|_| midway(bytes_out))?;
        spare = n - take;
        write_flush(io, &conn.buf[..take])
            .await
            .map_err(|_| midway(bytes_out))?;
        bytes_out += take as u64;
    }
    // Bytes after the response would be read as the next response: such a connection is not
    // reused.
    if head.reusable && spare == 0 {
        conn.buf.clear();
        upstream.checkin_raw(conn);
    }
    Ok(Done {
        status: head.status,
        bytes_out,
        keep_open: head.client_keep_alive,
    })
}

/// Closes a connection after its last response without losing that response: the write side is
/// closed first (TLS close_notify, then FIN), and what the client still sends is read and dropped
/// for a moment. Closing a socket with unread input sends a reset, which can destroy the response
/// before the client has read it.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    const LINGER: Duration = Duration::from_secs(2);
    const LINGER_BYTES: usize = 64 * 1024;
    let _ = tokio::time::timeout(LINGER, async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

async fn write_flush<IO: AsyncWrite + Unpin>(io: &mut IO, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("{0}")]
    Connect(#[source] crate::upstream::UpstreamError),
    /// Failed before any byte of a response arrived.
    #[error("{0}")]
    Lost(#[source] io::Error),
    /// Failed after part of a response arrived.
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
}

/// A backend response head, rewritten into the client's.
struct Head {
    /// Its length in the connection's buffer.
    len: usize,
    status: u16,
    framing: Framing,
    /// The backend connection can carry another request after this response.
    reusable: bool,
    /// The client connection can carry another request after this response.
    client_keep_alive: bool,
}

/// Reads a response head off `conn`, skipping interim 1xx responses; `parse` makes of a
/// complete head what the caller needs.
pub(crate) async fn read_head<T>(
    conn: &mut RawConn,
    mut parse: impl FnMut(&[u8]) -> Result<ResponseHead<T>, HeadError>,
) -> Result<T, HeadError> {
    conn.buf.clear();
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            match parse(&conn.buf)? {
                ResponseHead::Final(head) => return Ok(head),
                ResponseHead::Interim(n) => {
                    answered = true;
                    conn.buf.drain(..n);
                    continue;
                }
                ResponseHead::Partial if conn.buf.len() < MAX_RESPONSE_HEAD => {}
                ResponseHead::Partial => return Err(HeadError::Malformed("head too large")),
            }
        }
        conn.buf.reserve(READ_CHUNK);
        let fresh = !answered && conn.buf.is_empty();
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if fresh => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Malformed("closed in the head")),
            Ok(_) => {}
            Err(e) if fresh => return Err(HeadError::Lost(e)),
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

pub(crate) enum ResponseHead<T> {
    Final(T),
    /// A 1xx response of this many bytes, which the client does not get.
    Interim(usize),
    Partial,
}

/// Response headers that describe the hop, not the message (RFC 9110 §7.6.1), and the framing
/// ones the relay writes itself.
/// `Trailer` stays: the chunked framing, trailers included, passes through.
const RESPONSE_DROPPED: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"te",
    b"upgrade",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"transfer-encoding",
];

/// A final response head, read in place.
pub(crate) struct Response<'h, 'b> {
    /// Its length in the buffer.
    pub(crate) len: usize,
    pub(crate) status: u16,
    pub(crate) reason: &'b str,
    pub(crate) headers: &'h [httparse::Header<'b>],
    pub(crate) framing: Framing,
    chunked: bool,
    /// The backend closes the connection after it.
    pub(crate) backend_close: bool,
    /// Headers its `Connection` names (never the framing ones).
    named: [&'b [u8]; 8],
    named_count: usize,
    has_date: bool,
}

impl Response<'_, '_> {
    /// The connection can carry another exchange once the body has been read to its end.
    pub(crate) fn reusable(&self) -> bool {
        !self.backend_close && self.framing != Framing::UntilClose
    }

    /// Whether a header is hop-by-hop here: the standard ones and those `Connection` names.
    pub(crate) fn is_hop_by_hop(&self, name: &[u8]) -> bool {
        RESPONSE_DROPPED
            .iter()
            .any(|d| name.eq_ignore_ascii_case(d))
            || self.named[..self.named_count]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
    }
}

/// Storage for the headers of one response head.
pub(crate) type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_RESPONSE_HEADERS];

pub(crate) const NO_HEADERS: MaybeUninit<httparse::Header<'static>> = MaybeUninit::uninit();

/// Parses a response head and works out its framing (RFC 9112 §6.3) and what it says about the
/// connection. Anything ambiguous is an error: a length and chunks, two lengths, a transfer
/// coding other than chunked.
pub(crate) fn parse_response<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut HeaderSlots<'b>,
    head_request: bool,
) -> Result<ResponseHead<Response<'h, 'b>>, HeadError> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(ResponseHead::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed("too many headers"));
        }
        Err(_) => return Err(HeadError::Malformed("not HTTP/1.x")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(HeadError::Malformed("no status"));
    };
    if status == 101 {
        return Err(HeadError::Malformed("101 without an upgrade"));
    }
    if (100..200).contains(&status) {
        return Ok(ResponseHead::Interim(len));
    }
    let reason = resp.reason.unwrap_or("");
    let headers: &'h [httparse::Header<'b>] = resp.headers;
    // What the headers say about framing and the connection.
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut backend_close = version == 0;
    let mut named: [&[u8]; 8] = [&[]; 8];
    let mut named_count = 0;
    let mut has_date = false;
    for h in headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Malformed("transfer coding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(h.value.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(HeadError::Malformed("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Malformed("conflicting content-length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    backend_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    if version == 0 {
                        backend_close = false;
                    }
                } else if !token.is_empty()
                    // Framing is the relay's to write, whatever a backend lists.
                    && !token.eq_ignore_ascii_case(b"content-length")
                    && !token.eq_ignore_ascii_case(b"transfer-encoding")
                {
                    if named_count == named.len() {
                        return Err(HeadError::Malformed("too many connection options"));
                    }
                    named[named_count] = token;
                    named_count += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        }
    }
    if chunked && length.is_some() {
        return Err(HeadError::Malformed("both chunked and content-length"));
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Done
    } else if chunked {
        Framing::Chunked(ChunkScanner::default())
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(ResponseHead::Final(Response {
        len,
        status,
        reason,
        headers,
        framing,
        chunked,
        backend_close,
        named,
        named_count,
        has_date,
    }))
}

/// The client's HTTP/1.1 version of a response head, written to `out`.
fn response_head(
    buf: &[u8],
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<ResponseHead<Head>, HeadError> {
    let mut slots = [NO_HEADERS; MAX_RESPONSE_HEADERS];
    let resp = match parse_response(buf, &mut slots, head_request)? {
        ResponseHead::Final(resp) => resp,
        ResponseHead::Interim(n) => return Ok(ResponseHead::Interim(n)),
        ResponseHead::Partial => return Ok(ResponseHead::Partial),
    };
    let Response {
        len,
        status,
        chunked,
        has_date,
        ..
    } = resp;
    let client_keep_alive = !close && resp.framing != Framing::UntilClose;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = write!(Utf8Sink(out), "{status:03}");
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length_written = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if resp.is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if length_written {
                continue;
            }
            length_written = true;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if chunked && !resp.framing.is_done() {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        crate::respond::http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if !client_keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let reusable = resp.reusable();
    Ok(ResponseHead::Final(Head {
        len,
        status,
        framing: resp.framing,
        reusable,
        client_keep_alive,
    }))
}

/// `fmt::Write` into a byte vector.
struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Where a response body ends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes to go.
    Length(u64),
    Chunked(ChunkScanner),
    /// Until the backend closes (a response with neither length nor chunks).
    UntilClose,
    Done,
}

impl Framing {
    /// How many of `bytes` belong to the body; the body is done if that is fewer than all.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        match self {
            Framing::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Framing::Done;
                }
                Ok(n as usize)
            }
            Framing::Chunked(scanner) => {
                let (n, done) = scanner.scan(bytes)?;
                if done {
                    *self = Framing::Done;
                }
                Ok(n)
            }
            Framing::UntilClose => Ok(bytes.len()),
            Framing::Done => Ok(0),
        }
    }

    fn is_done(&self) -> bool {
        *self == Framing::Done
    }
}

/// Follows a chunked body (RFC 9112 §7.1) as it passes through, to find its end. Strict: a bare
/// LF, a chunk size of no digits or of more than 15, or a missing CRLF after chunk data is an
/// error.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunkScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    /// Whitespace after the size: only more of it, an extension or the line's end may follow.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed chunked body")]
pub(crate) struct ChunkError;

impl ChunkScanner {
    /// Consumes `bytes`: returns how many belong to the body and whether it ended in them.
    fn scan(&mut self, bytes: &[u8]) -> Result<(usize, bool), ChunkError> {
        self.scan_data(bytes, |_| {})
    }

    /// As [`Self::scan`], and hands each run of chunk data in `bytes` to `data`.
    pub(crate) fn scan_data(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<(usize, bool), ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Data {
                let n = self.size.min((bytes.len() - i) as u64);
                self.size -= n;
                data(i..i + n as usize);
                i += n as usize;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(ChunkError);
                    }
                    self.digits += 1;
                    let digit = (b as char).to_digit(16).ok_or(ChunkError)?;
                    self.size = self.size * 16 + u64::from(digit);
                    Size
                }
                (Size, b';') if self.digits > 0 => Extension,
                (Size, b' ' | b'\t') if self.digits > 0 => SizeSpace,
                (Size | SizeSpace, b'\r') if self.digits > 0 => SizeLf,
                (SizeSpace, b' ' | b'\t') => SizeSpace,
                (SizeSpace, b';') => Extension,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(ChunkError),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => EndLf,
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerStart | TrailerLine, b'\n') => return Err(ChunkError),
                (TrailerStart | TrailerLine, _) => TrailerLine,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => {
                    *self = ChunkScanner::default();
                    return Ok((i, true));
                }
                _ => return Err(ChunkError),
            };
        }
        Ok((i, false))
    }
}

/// Keeps the connection's in-flight count while a request is relayed, also when the connection
/// is dropped midway.
struct InFlight(Arc<Server>);

impl InFlight {
    fn new(server: &Arc<Server>) -> Self {
        server.metrics().in_flight.inc();
        InFlight(server.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics().in_flight.dec();
    }
}

/// A proxy error as HTTP/1.1 bytes, closing the connection.
fn error_response(e: &ProxyError, out: &mut Vec<u8>) {
    let (status, errcode, message) = e.status_and_code();
    let body = serde_json::json!({ "errcode": errcode, "error": message }).to_string();
    out.clear();
    let _ = write!(
        Utf8Sink(out),
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         content-length: {}\r\nconnection: close\r\ndate: ",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    crate::respond::http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// `t + d`, or a time too far away to matter when that is beyond what `Instant` holds (a
/// configured duration may be huge).
fn after(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    t.checked_add(d.min(FAR)).unwrap_or(t)
}

/// One timer for every timeout of a connection. It is re-armed only for a deadline earlier than
/// the one it is armed for; a later deadline is found when the timer fires early, so the common
/// request (a later idle or response deadline than the last) does not touch the timer wheel.
struct Watchdog {
    sleep: Pin<Box<Sleep>>,
    deadline: Instant,
}

impl Watchdog {
    fn new(deadline: Instant) -> Self {
        Watchdog {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
        }
    }

    fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Resolves when the deadline has passed.
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if self.deadline <= self.sleep.deadline() {
                return;
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// A connection hyper takes over from the relay: it reads the bytes the relay had read first.
pub(crate) struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(prefix: Bytes, io: IO) -> Self {
        Prefixed { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

mod backend;
pub(crate) use backend::{RawBody, request_head, send};

#[cfg(test)]
mod tests;
