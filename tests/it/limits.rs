//! Limits and failures: every refusal is Matrix JSON with the right status, and slow or broken
//! peers cannot hold the proxy.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::client::h2_connect;
use crate::support::{Backend, Proxy, get, h1};

#[tokio::test]
async fn body_over_limit_refused_up_front() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nmax_body = \"1M\"")
        .start()
        .await;
    let resp = h1(
        &proxy,
        proxy.https,
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1048577\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["errcode"], "M_TOO_LARGE");
    assert_eq!(
        backend.log.count(),
        0,
        "refused before contacting the backend"
    );
}

#[tokio::test]
async fn body_over_limit_refused_when_crossed_h1_chunked() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nmax_body = \"1M\"")
        .start()
        .await;
    let mut tls = proxy.h1_stream().await;
    tls.write_all(b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    // 2 MiB in 64 KiB chunks; the proxy may stop reading once the limit is crossed.
    for _ in 0..32 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if tls.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    let resp = crate::support::client::parse_response(&buf);
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["errcode"], "M_TOO_LARGE");
}

#[tokio::test]
async fn body_over_limit_refused_when_crossed_h2() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nmax_body = \"1M\"")
        .start()
        .await;
    let (mut send, _conn) = h2_connect(proxy.https, "example.test", proxy.roots.clone()).await;
    let body = Zeros { left: 32 };
    let req = Request::post("https://example.test/_matrix/media/v3/upload")
        .body(body)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errcode"], "M_TOO_LARGE");
}

/// A request body of `left` 64 KiB chunks, sent without a declared length.
struct Zeros {
    left: usize,
}

impl http_body::Body for Zeros {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return std::task::Poll::Ready(None);
        }
        this.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![
            b'a';
            64 * 1024
        ])))))
    }
}

#[tokio::test]
async fn headers_too_large_431() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nmax_header_size = \"16k\"")
        .start()
        .await;
    let big = "a".repeat(32 * 1024);
    let resp = h1(
        &proxy,
        proxy.https,
        &format!("GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 431);
    assert_eq!(backend.log.count(), 0);
}

#[tokio::test]
async fn backend_down_502() {
    // A port that was just free: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::builder(&format!("http://{closed}")).start().await;
    let resp = get(&proxy, "/_matrix/client/versions").await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(resp.json()["errcode"], "M_UNKNOWN");
}

#[tokio::test]
async fn backend_slow_504() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .backend_extra("response_timeout = \"1s\"")
        .start()
        .await;
    let resp = get(&proxy, "/_matrix/slow/5000/x").await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.json()["errcode"], "M_UNKNOWN");
}

#[tokio::test]
async fn slow_request_head_closed_after_header_timeout() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nheader_read_timeout = \"1s\"")
        .start()
        .await;
    let mut tls = proxy.h1_stream().await;
    tls.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: exa")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Bounded wait: the connection must be closed well before this.
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "connection still open after 10s with a 1s header timeout"
    );
    assert_eq!(backend.log.count(), 0);
}

#[tokio::test]
async fn idle_connection_closed_after_idle_timeout() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nidle_timeout = \"1s\"")
        .start()
        .await;
    let (mut send, conn) = h2_connect(proxy.https, "example.test", proxy.roots.clone()).await;
    let req = Request::get("https://example.test/_matrix/client/versions")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "idle h2 connection still open after 10s with a 1s idle timeout"
    );
}

#[tokio::test]
async fn headers_too_large_over_h2() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nmax_header_size = \"16k\"")
        .start()
        .await;
    let (mut send, _conn) = h2_connect(proxy.https, "example.test", proxy.roots.clone()).await;
    let req = Request::get("https://example.test/_matrix/client/versions")
        .header("x-big", "a".repeat(32 * 1024))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    // h2 refuses an oversized header list either with 431 or by resetting the stream; both
    // keep it away from the backend.
    match send.send_request(req).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => eprintln!("stream refused: {e}"),
    }
    assert_eq!(backend.log.count(), 0);
}
