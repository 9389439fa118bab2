//! Running as a service: reload swaps configuration and listeners without failing a request,
//! a refused reload changes nothing, certificate files are picked up when they change on disk,
//! and the admin listener reports metrics and readiness.

use std::time::Duration;

use crate::support::{Backend, Proxy, connect, get, raw_h1};

async fn admin(proxy: &Proxy, path: &str) -> crate::support::RawResponse {
    let mut tcp = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    raw_h1(&mut tcp, req.as_bytes()).await
}

/// The `/metrics` text of the admin listener.
async fn metrics(proxy: &Proxy) -> String {
    String::from_utf8(admin(proxy, "/metrics").await.body).unwrap()
}

fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()))
}

#[tokio::test]
async fn reload_swaps_configuration_and_listeners() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[well_known]\nserver = \"old.example.test:443\"")
        .start()
        .await;
    assert_eq!(
        get(&proxy, "/.well-known/matrix/server").await.json()["m.server"],
        "old.example.test:443"
    );
    // A long request in flight across the reload finishes normally.
    let (https, roots) = (proxy.https, proxy.roots.clone());
    let in_flight = tokio::spawn(async move {
        let tls = connect(https, "example.test", roots, &[b"http/1.1"])
            .await
            .unwrap();
        raw_h1(
            tls,
            b"GET /_matrix/slow/1000/x HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let extra = free_addr();
    let text = proxy
        .config_text
        .replace("old.example.test:443", "new.example.test:443")
        .replace(
            &format!("https = [\"{}\"]", "127.0.0.1:0"),
            &format!("https = [\"127.0.0.1:0\", \"{extra}\"]"),
        )
        .replace("http = [\"127.0.0.1:0\"]", "http = []");
    assert!(
        text.contains(&extra.to_string()),
        "test config has changed shape:\n{text}"
    );
    proxy.reload(&text).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(
        get(&proxy, "/.well-known/matrix/server").await.json()["m.server"],
        "new.example.test:443"
    );
    // The added listener serves, the removed one no longer accepts.
    let tls = connect(extra, "example.test", proxy.roots.clone(), &[b"http/1.1"])
        .await
        .unwrap();
    let resp = raw_h1(tls, b"GET /.well-known/matrix/server HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    assert!(
        tokio::net::TcpStream::connect(proxy.http).await.is_err(),
        "removed listener still accepts"
    );
    assert_eq!(in_flight.await.unwrap().status, 200);
    let text = metrics(&proxy).await;
    assert!(
        text.contains("matrix_edge_reloads_total{result=\"ok\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn refused_reload_keeps_the_old_configuration() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[well_known]\nserver = \"old.example.test:443\"")
        .start()
        .await;
    // The certificate file of the new config does not exist: nothing may change.
    let broken = proxy
        .config_text
        .replace("old.example.test:443", "new.example.test:443")
        .replace("default.pem", "missing.pem");
    proxy.reload(&broken).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&proxy, "/.well-known/matrix/server").await.json()["m.server"],
        "old.example.test:443"
    );
    let text = metrics(&proxy).await;
    assert!(
        text.contains("matrix_edge_reloads_total{result=\"refused\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn certificate_files_are_picked_up_when_they_change() {
    let backend = Backend::start().await;
    let builder = Proxy::builder(&backend.url());
    let dir = builder.dir();
    let first = builder.ca().issue(&dir, "served", &["example.test"]);
    let tls = format!(
        "[tls]\nwatch_interval = \"100ms\"\ncert = {:?}\nkey = {:?}\n",
        first.cert, first.key
    );
    // Issue the replacement now, with the same CA, into other files.
    let second = builder
        .ca()
        .issue(&dir, "next", &["example.test", "renewed.example.test"]);
    let proxy = builder.tls(&tls).start().await;
    let names =
        |der: &rustls::pki_types::CertificateDer<'_>| matrix_edge::tls::leaf_facts(der).unwrap().0;
    let before = proxy.h1_stream().await;
    assert_eq!(
        names(&before.get_ref().1.peer_certificates().unwrap()[0]),
        ["example.test"]
    );

    // Replace both files the way tools do: write aside, rename into place.
    for (from, to) in [(&second.cert, &first.cert), (&second.key, &first.key)] {
        std::fs::rename(from, to).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tls = proxy.h1_stream().await;
        if names(&tls.get_ref().1.peer_certificates().unwrap()[0]).len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before still works.
    let resp = raw_h1(
        before,
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn ready_needs_a_reachable_backend() {
    let closed = free_addr();
    let proxy = Proxy::builder(&format!("http://{closed}")).start().await;
    let resp = admin(&proxy, "/ready").await;
    assert_eq!(resp.status, 503);
    assert!(String::from_utf8_lossy(&resp.body).contains("backend unreachable"));
    assert_eq!(admin(&proxy, "/health").await.status, 200);
}

#[tokio::test]
async fn metrics_count_requests_by_class_and_status() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[well_known]\nserver = \"matrix.example.test:443\"")
        .start()
        .await;
    for path in [
        "/_matrix/client/versions",
        "/_matrix/client/versions",
        "/.well-known/matrix/server",
        "/_synapse/admin/x",
        "/nope",
    ] {
        get(&proxy, path).await;
    }
    let resp = admin(&proxy, "/metrics").await;
    assert_eq!(resp.status, 200);
    let text = String::from_utf8(resp.body).unwrap();
    for expected in [
        "matrix_edge_requests_total{class=\"client\",status=\"200\"} 2",
        "matrix_edge_requests_total{class=\"well_known\",status=\"200\"} 1",
        "matrix_edge_requests_total{class=\"refused\",status=\"403\"} 1",
        "matrix_edge_requests_total{class=\"not_found\",status=\"404\"} 1",
        "matrix_edge_tls_handshakes_total{result=\"ok\"} 5",
        "matrix_edge_requests_in_flight 0",
        "matrix_edge_certificate_expiry_timestamp_seconds{name=\"example.test\"}",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(
        text.lines().any(
            |l| l.starts_with("matrix_edge_request_duration_seconds_bucket{")
                && l.contains("class=\"client\"")
        ),
        "no latency histogram for client requests in\n{text}"
    );
    crate::support::python::check_openmetrics(&text);
}

/// A client that leaves before the response head is still counted, logged (as 499) and taken
/// off the in-flight gauge.
#[tokio::test]
async fn client_leaving_early_is_counted_as_499() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    let mut tls = proxy.h1_stream().await;
    tls.write_all(b"GET /_matrix/slow/3000/x HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..100 {
        if backend.log.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tls);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(&proxy).await;
        if text.contains("matrix_edge_requests_total{class=\"other_matrix\",status=\"499\"} 1") {
            assert!(text.contains("matrix_edge_requests_in_flight 0"), "{text}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no 499 counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
