//! The test harness: a recording backend, a test CA, real TLS clients, and an in-process proxy.

pub mod backend;
pub mod client;
pub mod dns;
pub mod homeserver;
pub mod pebble;
pub mod pki;
pub mod proxy;
pub mod python;

pub use backend::Backend;
pub use client::{RawResponse, connect, h2_request, raw_h1};
pub use proxy::Proxy;

/// A raw HTTP/1.1 request over verified TLS to `addr`, SNI `example.test`.
pub async fn h1(proxy: &Proxy, addr: std::net::SocketAddr, request: &str) -> RawResponse {
    let tls = connect(addr, "example.test", proxy.roots.clone(), &[b"http/1.1"])
        .await
        .unwrap();
    raw_h1(tls, request.as_bytes()).await
}

/// `GET target` with `Connection: close` over h1 to the https listener.
pub async fn get(proxy: &Proxy, target: &str) -> RawResponse {
    h1(
        proxy,
        proxy.https,
        &format!("GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A loopback port nothing listens on right now (another process may still take it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
