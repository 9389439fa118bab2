//! The relay's backend exchange for requests hyper serves: body-less HTTP/2 requests, and
//! body-less HTTP/1.1 requests on connections the relay has handed over. The request head is
//! written from its `HeaderMap`; the response head is read in place into `http` parts; the body
//! streams off the backend connection as an `http_body::Body`, de-chunked, and the connection
//! goes back to the pool when the body has been read to its end.
//!
//! Same rules as the relay's own exchange: a request is sent again only when it is idempotent,
//! went out on a pooled connection, and nothing of a response came back.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::{
    BODY_CHUNK, Framing, HeadError, MAX_RESPONSE_HEADERS, NO_HEADERS, ResponseHead, is_idempotent,
    parse_response, read_head,
};
use crate::upstream::{POOLED_TRIES, RawConn, Upstream, UpstreamError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/1.1 head of a body-less request to the backend: `target` is origin-form and
/// `headers` are final (hop-by-hop ones removed, `Host` and forwarding headers set).
pub(crate) fn request_head(method: &Method, target: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    // An empty body is still a body for the methods that carry one: said so, as hyper's client
    // says it.
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && !headers.contains_key(CONTENT_LENGTH)
    {
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends a body-less request head and returns the response, its body still streaming.
pub(crate) async fn send(
    upstream: &Upstream,
    head: &[u8],
    method: &Method,
) -> Result<http::Response<RawBody>, UpstreamError> {
    let idempotent = is_idempotent(method);
    let head_request = *method == Method::HEAD;
    let mut tries = 0;
    loop {
        tries += 1;
        let pooled = if tries <= POOLED_TRIES {
            upstream.checkout_raw()
        } else {
            None
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => upstream.connect_raw().await?,
        };
        let exchanged = match conn.stream.write_all(head).await {
            Ok(()) => read_head(&mut conn, |buf| parts(buf, head_request)).await,
            Err(e) => Err(HeadError::Lost(e)),
        };
        match exchanged {
            Ok(head) => return Ok(head.into_response(conn, upstream.clone())),
            // After POOLED_TRIES, `reused` is false: the loop ends.
            Err(HeadError::Lost(_) | HeadError::Closed) if reused && idempotent => continue,
            Err(e) => return Err(UpstreamError::Relay(e.to_string())),
        }
    }
}

/// A response head as `http` parts, with what the body needs to know.
struct Parts {
    len: usize,
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    reusable: bool,
}

/// Reads a response head into `Parts`, leaving out its hop-by-hop headers (as `forward` does
/// for every response). The values are slices of one copy of the head.
fn parts(buf: &[u8], head_request: bool) -> Result<ResponseHead<Parts>, HeadError> {
    let mut slots = [NO_HEADERS; MAX_RESPONSE_HEADERS];
    let resp = match parse_response(buf, &mut slots, head_request)? {
        ResponseHead::Final(resp) => resp,
        ResponseHead::Interim(n) => return Ok(ResponseHead::Interim(n)),
        ResponseHead::Partial => return Ok(ResponseHead::Partial),
    };
    let status =
        StatusCode::from_u16(resp.status).map_err(|_| HeadError::Malformed("bad status"))?;
    let head = Bytes::copy_from_slice(&buf[..resp.len]);
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers {
        let name = h.name.as_bytes();
        if resp.is_hop_by_hop(name) {
            continue;
        }
        let name =
            HeaderName::from_bytes(name).map_err(|_| HeadError::Malformed("bad header name"))?;
        let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + h.value.len()))
            .map_err(|_| HeadError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    let reusable = resp.reusable();
    Ok(ResponseHead::Final(Parts {
        len: resp.len,
        status,
        headers,
        framing: resp.framing,
        reusable,
    }))
}

impl Parts {
    fn into_response(self, mut conn: RawConn, upstream: Upstream) -> http::Response<RawBody> {
        let mut body = RawBody {
            conn: None,
            upstream,
            framing: self.framing,
            reusable: self.reusable,
            ready: VecDeque::new(),
            failed: false,
        };
        // What came with the head is the body's beginning.
        let rest = Bytes::copy_from_slice(&conn.buf[self.len..]);
        conn.buf.clear();
        body.conn = Some(conn);
        if let Err(e) = body.feed(rest) {
            body.fail(e);
        }
        let mut resp = http::Response::new(body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// A response body read off a relay backend connection.
pub(crate) struct RawBody {
    /// None once the body is complete (the connection is back in the pool) or has failed.
    conn: Option<RawConn>,
    upstream: Upstream,
    framing: Framing,
    reusable: bool,
    /// Data read and decoded, not yet handed out.
    ready: VecDeque<Bytes>,
    failed: bool,
}

impl RawBody {
    /// Takes `bytes` off the wire: the body's data goes to `ready`; at the body's end, the
    /// connection goes back to the pool unless something follows the body or the backend
    /// closes it.
    fn feed(&mut self, bytes: Bytes) -> Result<(), BoxError> {
        let len = bytes.len();
        let taken = match &mut self.framing {
            Framing::Length(left) => {
                let n = (*left).min(bytes.len() as u64) as usize;
                *left -= n as u64;
                if n > 0 {
                    self.ready.push_back(bytes.slice(..n));
                }
                if *left == 0 {
                    self.framing = Framing::Done;
                }
                n
            }
            Framing::Chunked(scanner) => {
                let ready = &mut self.ready;
                let (n, done) = scanner.scan_data(&bytes, |range| {
                    if !range.is_empty() {
                        ready.push_back(bytes.slice(range));
                    }
                })?;
                if done {
                    self.framing = Framing::Done;
                }
                n
            }
            Framing::UntilClose => {
                let n = bytes.len();
                if n > 0 {
                    self.ready.push_back(bytes);
                }
                n
            }
            Framing::Done => 0,
        };
        if self.framing.is_done()
            && let Some(conn) = self.conn.take()
            && self.reusable
            && taken == len
        {
            self.upstream.checkin_raw(conn);
        }
        Ok(())
    }

    fn fail(&mut self, e: BoxError) {
        tracing::debug!(error = %e, "backend response body failed");
        self.conn = None;
        self.failed = true;
    }
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.failed {
                this.failed = false;
                return Poll::Ready(Some(Err("the backend's response body failed".into())));
            }
            if this.framing.is_done() {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let mut chunk = vec![0u8; BODY_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            let read = ready!(Pin::new(&mut conn.stream).poll_read(cx, &mut buf));
            let n = buf.filled().len();
            match read {
                Ok(()) if n == 0 && this.framing == Framing::UntilClose => {
                    this.framing = Framing::Done;
                    this.conn = None;
                }
                Ok(()) if n == 0 => this.fail(
                    io::Error::new(io::ErrorKind::UnexpectedEof, "backend closed in the body")
                        .into(),
                ),
                Ok(()) => {
                    chunk.truncate(n);
                    if let Err(e) = this.feed(Bytes::from(chunk)) {
                        this.fail(e);
                    }
                }
                Err(e) => this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && !self.failed && self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        let ready: u64 = self.ready.iter().map(|b| b.len() as u64).sum();
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(ready + left),
            Framing::Done if !self.failed => SizeHint::with_exact(ready),
            _ => {
                let mut hint = SizeHint::new();
                hint.set_lower(ready);
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        let config = crate::config::Config::parse(
            "server_name = \"a.test\"\n[backend]\nurl = \"http://127.0.0.1:1\"\n\
             [listen]\nhttps = [\"127.0.0.1:0\"]\nfederation = []\n[tls]\nself_signed = true\n",
        )
        .unwrap()
        .config;
        Upstream::new(&config.backend, 1)
    }

    /// The head of `response`, the body data that came with it, and whether the body is done.
    fn decoded(response: &[u8]) -> (StatusCode, HeaderMap, Vec<u8>, bool) {
        let ResponseHead::Final(p) = parts(response, false).unwrap() else {
            panic!("not a final head");
        };
        let mut body = RawBody {
            conn: None,
            upstream: upstream(),
            framing: p.framing,
            reusable: p.reusable,
            ready: VecDeque::new(),
            failed: false,
        };
        body.feed(Bytes::copy_from_slice(&response[p.len..]))
            .unwrap();
        let done = body.framing.is_done();
        (
            p.status,
            p.headers,
            body.ready.iter().flatten().copied().collect(),
            done,
        )
    }

    #[test]
    fn chunked_bodies_are_decoded_and_lengths_kept() {
        let (status, headers, data, done) = decoded(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n\
              3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        );
        assert!(done);
        assert_eq!(status, 200);
        assert_eq!(headers["x-a"], "b");
        assert_eq!(data, b"abcde");
        let (status, _, data, done) =
            decoded(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhel");
        assert!(!done);
        assert_eq!(status, 404);
        assert_eq!(data, b"hel");
    }

    #[test]
    fn hop_by_hop_headers_are_left_out() {
        let (_, headers, _, _) = decoded(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\n\
              X-Hop: 1\r\nContent-Length: 0\r\nX-Kept: yes\r\n\r\n",
        );
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "x-kept"]);
    }

    #[test]
    fn request_head_says_empty_bodies() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.test"));
        let head = request_head(&Method::POST, "/_matrix/x?a=%2F", &headers);
        assert_eq!(
            head,
            b"POST /_matrix/x?a=%2F HTTP/1.1\r\nhost: example.test\r\ncontent-length: 0\r\n\r\n"
        );
        let head = request_head(&Method::GET, "/", &headers);
        assert_eq!(head, b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n");
    }
}
