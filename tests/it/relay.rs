//! The HTTP/1.1 relay against backends that frame their responses every way HTTP/1.1 allows,
//! close connections when they like, and on connections that mix relayed requests with ones
//! only hyper serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::support::client::RawResponse;
use crate::support::{Backend, Proxy};

/// What the scripted backend does with one request.
struct Answer {
    /// Written in this order, a pause between each, so reads split the response.
    parts: Vec<Vec<u8>>,
    /// Close the connection after it, without saying so.
    close: bool,
    /// Close it with a reset rather than a FIN.
    reset: bool,
}

/// A backend speaking raw bytes: `answer` gets each request line and says what to send. Returns
/// its address and the number of connections it accepted.
async fn scripted(answer: fn(&str) -> Answer) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let answer = answer(request_line.trim_end());
                    for part in &answer.parts {
                        if stream.get_mut().write_all(part).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if answer.reset {
                        let _ = stream.get_ref().set_zero_linger();
                    }
                    if answer.close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn answer(parts: &[&[u8]]) -> Answer {
    Answer {
        parts: parts.iter().map(|p| p.to_vec()).collect(),
        close: false,
        reset: false,
    }
}

/// Reads one response off a keep-alive connection: by `Content-Length`, by chunks, or (with
/// neither) to the close. `head_request` responses have no body.
async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
    head_request: bool,
) -> RawResponse {
    let read = async {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(
                stream.read_line(&mut line).await.unwrap() > 0,
                "closed in the head: {head:?}"
            );
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let head = head.trim_end().to_owned();
        let mut resp = RawResponse {
            status: head.split(' ').nth(1).unwrap().parse().unwrap(),
            head,
            body: Vec::new(),
        };
        if head_request || resp.status == 204 || resp.status == 304 {
            return resp;
        }
        if resp.header("transfer-encoding").is_some() {
            loop {
                let mut size = String::new();
                stream.read_line(&mut size).await.unwrap();
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        let mut line = String::new();
                        stream.read_line(&mut line).await.unwrap();
                        if line == "\r\n" {
                            return resp;
                        }
                    }
                }
                let mut chunk = vec![0; size + 2];
                stream.read_exact(&mut chunk).await.unwrap();
                assert_eq!(&chunk[size..], b"\r\n");
                resp.body.extend_from_slice(&chunk[..size]);
            }
        }
        match resp.header("content-length") {
            Some(n) => {
                resp.body = vec![0; n.parse().unwrap()];
                stream.read_exact(&mut resp.body).await.unwrap();
            }
            None => {
                let _ = stream.read_to_end(&mut resp.body).await;
            }
        }
        resp
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no response within 20s")
}

/// Responses framed every way HTTP/1.1 allows, by path.
fn framings(line: &str) -> Answer {
    match line {
        l if l.starts_with("GET /_matrix/client/v3/chunked ") => answer(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhel",
            b"lo\r\n7;ext=1\r\n, world\r\n",
            b"0\r\nX-Trailer: t\r\n\r\n",
        ]),
        l if l.starts_with("HEAD ") => answer(&[
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: keep-alive\r\n\r\n",
        ]),
        l if l.starts_with("GET /_matrix/client/v3/interim ") => answer(&[
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nX-After: interim\r\n\r\n",
        ]),
        l if l.starts_with("GET /_matrix/client/v3/length ") => answer(&[
            b"HTTP/1.1 201 Made It\r\nContent-Length: 11\r\nKeep-Alive: timeout=5\r\n\r\nhello",
            b" world",
        ]),
        _ => Answer {
            parts: vec![b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec()],
            close: true,
            reset: false,
        },
    }
}

/// Sends a body-less request on a keep-alive connection and reads its response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    method: &str,
    path: &str,
) -> RawResponse {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n");
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    read_response(stream, method == "HEAD").await
}

#[tokio::test]
async fn every_response_framing_passes_through_on_one_connection() {
    let (addr, _) = scripted(framings).await;
    let proxy = Proxy::builder(&format!("http://{addr}")).start().await;
    let mut stream = BufReader::new(proxy.h1_stream().await);
    let mut ask = async |method: &str, path: &str| exchange(&mut stream, method, path).await;

    let chunked = ask("GET", "/_matrix/client/v3/chunked").await;
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.body, b"hello, world");
    assert_eq!(
        chunked.header("content-type").as_deref(),
        Some("text/plain")
    );

    let head = ask("HEAD", "/_matrix/client/v3/head").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").as_deref(), Some("1000"));
    assert!(head.header("connection").is_none(), "{}", head.head);

    let interim = ask("GET", "/_matrix/client/v3/interim").await;
    assert_eq!(interim.status, 204);
    assert_eq!(interim.header("x-after").as_deref(), Some("interim"));

    let length = ask("GET", "/_matrix/client/v3/length").await;
    assert_eq!(length.status, 201);
    assert!(
        length.head.starts_with("HTTP/1.1 201 Made It"),
        "{}",
        length.head
    );
    assert_eq!(length.body, b"hello world");
    assert!(length.header("keep-alive").is_none());
    assert!(length.header("date").is_some(), "a Date is added");

    // No length, no chunks: the body runs to the backend's close, and the client's connection
    // ends with it.
    let to_close = ask("GET", "/_matrix/client/v3/to-close").await;
    assert_eq!(to_close.status, 200);
    assert_eq!(to_close.header("connection").as_deref(), Some("close"));
    assert_eq!(to_close.body, b"until the end");
}

/// The same responses to HTTP/2 clients, whose body-less requests use the relay's backend
/// connections: bodies de-chunked, hop-by-hop headers gone, and a pooled connection the backend
/// closed (after the close-delimited body) is not used again.
#[tokio::test]
async fn every_response_framing_reaches_h2_clients() {
    use bytes::Bytes;
    use http::{Method, Request};
    use http_body_util::{BodyExt, Full};

    let (addr, accepted) = scripted(framings).await;
    let proxy = Proxy::builder(&format!("http://{addr}"))
        .workers(1)
        .start()
        .await;
    let (mut send, _conn) =
        crate::support::client::h2_connect(proxy.https, "example.test", proxy.roots.clone()).await;
    let mut ask = async |method: Method, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("https://example.test{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    };
    for round in 0..2 {
        let (parts, body) = ask(Method::GET, "/_matrix/client/v3/chunked").await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "hello, world");
        assert!(parts.headers.get("transfer-encoding").is_none());
        let (parts, body) = ask(Method::HEAD, "/_matrix/client/v3/head").await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["content-length"], "1000");
        assert!(body.is_empty());
        let (parts, _) = ask(Method::GET, "/_matrix/client/v3/interim").await;
        assert_eq!(parts.status, 204);
        assert_eq!(parts.headers["x-after"], "interim");
        let (parts, body) = ask(Method::GET, "/_matrix/client/v3/length").await;
        assert_eq!(parts.status, 201);
        assert_eq!(body, "hello world");
        assert!(parts.headers.get("keep-alive").is_none());
        let (parts, body) = ask(Method::GET, "/_matrix/client/v3/to-close").await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "until the end", "round {round}");
        // The backend closes after the close-delimited body, and only then.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), round + 1);
    }
}

/// A backend that closes every connection after one response, without a word: neither a
/// request that may be sent again nor one that may not is lost.
#[tokio::test]
async fn backend_closing_idle_connections_loses_no_request() {
    let (addr, accepted) = scripted(|line| Answer {
        parts: vec![
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{line}",
                line.len()
            )
            .into_bytes(),
        ],
        close: true,
        reset: false,
    })
    .await;
    let proxy = Proxy::builder(&format!("http://{addr}"))
        .workers(1)
        .start()
        .await;
    let mut stream = BufReader::new(proxy.h1_stream().await);
    for (i, method) in ["GET", "POST", "GET", "POST", "PUT", "POST"]
        .iter()
        .enumerate()
    {
        let resp = exchange(&mut stream, method, &format!("/_matrix/client/v3/r{i}")).await;
        assert_eq!(resp.status, 200, "{method} #{i}: {resp:?}");
        assert_eq!(
            String::from_utf8_lossy(&resp.body),
            format!("{method} /_matrix/client/v3/r{i} HTTP/1.1")
        );
        // The backend's close reaches the proxy before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
}

/// A backend that fails after it has begun to answer: the request is not sent again, even when
/// it may be and the connection was a pooled one.
#[tokio::test]
async fn a_request_the_backend_began_to_answer_is_not_sent_again() {
    let (addr, accepted) = scripted(|line| {
        if line.contains("/partial") {
            Answer {
                parts: vec![b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()],
                close: true,
                reset: true,
            }
        } else {
            answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
        }
    })
    .await;
    let proxy = Proxy::builder(&format!("http://{addr}"))
        .workers(1)
        .start()
        .await;
    let mut stream = BufReader::new(proxy.h1_stream().await);
    for (path, status) in [
        ("/_matrix/client/v3/first", 200),
        ("/_matrix/client/v3/partial", 502),
    ] {
        let resp = exchange(&mut stream, "GET", path).await;
        assert_eq!(resp.status, status, "{path}: {resp:?}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the request was sent again"
    );
}

/// One write carries a relayed GET, a POST with a body (hyper's), and a GET after it: the
/// connection changes hands between them without losing or reordering a byte.
#[tokio::test]
async fn pipelined_requests_cross_from_relay_to_hyper() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    let mut stream = BufReader::new(proxy.h1_stream().await);
    let body = "x".repeat(3000);
    let requests = format!(
        "GET /_matrix/client/v3/first HTTP/1.1\r\nHost: example.test\r\n\r\n\
         POST /_matrix/client/v3/second HTTP/1.1\r\nHost: example.test\r\nContent-Length: {}\r\n\r\n{body}\
         GET /_matrix/client/v3/third HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .get_mut()
        .write_all(requests.as_bytes())
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let resp = read_response(&mut stream, false).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        bodies.push(resp.json()["received"].as_u64().unwrap());
    }
    assert_eq!(bodies, [0, 3000, 0]);
    let seen: Vec<String> = backend
        .log
        .all()
        .iter()
        .map(|r| r.request_line().to_owned())
        .collect();
    assert_eq!(
        seen,
        [
            "GET /_matrix/client/v3/first HTTP/1.1",
            "POST /_matrix/client/v3/second HTTP/1.1",
            "GET /_matrix/client/v3/third HTTP/1.1",
        ]
    );
    for r in backend.log.all() {
        assert_eq!(r.header_all("x-forwarded-for"), ["127.0.0.1"], "{}", r.head);
        assert_eq!(r.header_all("x-forwarded-proto"), ["https"]);
    }
}

/// A backend that breaks the response midway: the client sees its connection end, never a
/// response that looks complete.
#[tokio::test]
async fn a_response_cut_short_closes_the_client_connection() {
    let (addr, _) = scripted(|_| Answer {
        parts: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part".to_vec()],
        close: true,
        reset: false,
    })
    .await;
    let proxy = Proxy::builder(&format!("http://{addr}")).start().await;
    let mut stream = proxy.h1_stream().await;
    stream
        .write_all(b"GET /_matrix/client/v3/x HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut got))
        .await
        .expect("the connection stayed open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("only part"), "{text}");
}

/// A malformed backend response is a 502 in Matrix JSON, and a backend that never answers a
/// 504, on the relayed path as on hyper's.
#[tokio::test]
async fn backend_failures_are_matrix_errors() {
    let (addr, _) = scripted(|line| {
        if line.contains("/silent") {
            Answer {
                parts: vec![],
                close: false,
                reset: false,
            }
        } else {
            answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"])
        }
    })
    .await;
    let proxy = Proxy::builder(&format!("http://{addr}"))
        .backend_extra("response_timeout = \"1s\"")
        .start()
        .await;
    for (path, status) in [
        ("/_matrix/client/v3/bad", 502),
        ("/_matrix/client/v3/silent", 504),
    ] {
        let mut stream = BufReader::new(proxy.h1_stream().await);
        let resp = exchange(&mut stream, "GET", path).await;
        assert_eq!(resp.status, status, "{path}: {resp:?}");
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(resp.json()["errcode"], "M_UNKNOWN");
    }
}
