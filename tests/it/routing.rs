//! Well-known files, refused paths and redirects, seen from a real client: the proxy answers
//! these itself and the backend never sees them.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::{Backend, Proxy, get, h1, h2_request};

const WELL_KNOWN: &str = r#"
[well_known]
server = "matrix.example.test:443"
client = "https://matrix.example.test"
max_age = "4h"
[well_known.support]
support_page = "https://example.test/help"
[[well_known.support.contacts]]
role = "m.role.admin"
email_address = "admin@example.test"
"#;

#[tokio::test]
async fn well_known_files_over_h1_and_h2() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra(WELL_KNOWN)
        .start()
        .await;

    let resp = get(&proxy, "/.well-known/matrix/server").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        resp.header("cache-control").as_deref(),
        Some("max-age=14400")
    );
    assert_eq!(
        resp.json(),
        serde_json::json!({"m.server": "matrix.example.test:443"})
    );

    let resp = get(&proxy, "/.well-known/matrix/client").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        resp.header("access-control-allow-methods").as_deref(),
        Some("GET, POST, PUT, DELETE, OPTIONS")
    );
    assert_eq!(
        resp.header("access-control-allow-headers").as_deref(),
        Some("X-Requested-With, Content-Type, Authorization")
    );
    assert_eq!(
        resp.json()["m.homeserver"]["base_url"],
        "https://matrix.example.test"
    );

    let resp = get(&proxy, "/.well-known/matrix/support").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        resp.json()["contacts"][0]["email_address"],
        "admin@example.test"
    );

    let req = Request::get("https://example.test/.well-known/matrix/client")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2_request(proxy.https, "example.test", proxy.roots.clone(), req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        body["m.homeserver"]["base_url"],
        "https://matrix.example.test"
    );

    assert_eq!(
        backend.log.count(),
        0,
        "well-known requests must not reach the backend"
    );
}

#[tokio::test]
async fn preflight_answered_without_backend() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra(WELL_KNOWN)
        .start()
        .await;
    let resp = h1(
        &proxy,
        proxy.https,
        "OPTIONS /.well-known/matrix/client HTTP/1.1\r\nHost: example.test\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 204);
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(resp.header("access-control-allow-methods").is_some());
    let resp = h1(
        &proxy,
        proxy.https,
        "HEAD /.well-known/matrix/server HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert_eq!(backend.log.count(), 0);
}

#[tokio::test]
async fn unconfigured_well_known_and_unknown_paths_are_json_404() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for path in [
        "/.well-known/matrix/server",
        "/.well-known/matrix/client",
        "/",
        "/index.html",
        "/health",
    ] {
        let resp = get(&proxy, path).await;
        assert_eq!(resp.status, 404, "{path}");
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(resp.json()["errcode"], "M_UNRECOGNIZED");
    }
    // Well-known files are served on the https listener, not on the federation port.
    let proxy2 = Proxy::builder(&backend.url())
        .extra(WELL_KNOWN)
        .start()
        .await;
    let resp = h1(
        &proxy2,
        proxy2.federation,
        "GET /.well-known/matrix/server HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 404);
    assert_eq!(backend.log.count(), 0);
}

#[tokio::test]
async fn internal_paths_and_dot_segments_refused() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for path in [
        "/_synapse/admin/v1/users/@a:example.test",
        "/_synapse/%61dmin/v1/users",
        "//_synapse/admin/v1",
        "/_synapse/metrics",
        "/_synapse/replication/get_repl_stream_updates",
    ] {
        for addr in [proxy.https, proxy.federation] {
            let resp = h1(
                &proxy,
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"),
            )
            .await;
            // On the federation port only /_matrix is served at all.
            assert!(
                resp.status == 403 || resp.status == 404,
                "{path}: {}",
                resp.status
            );
            assert_eq!(
                resp.header("content-type").as_deref(),
                Some("application/json")
            );
            if addr == proxy.https {
                assert_eq!(resp.status, 403, "{path}");
                assert_eq!(resp.json()["errcode"], "M_FORBIDDEN");
            }
        }
    }
    for path in [
        "/_matrix/../_synapse/admin/v1/users",
        "/_matrix/%2e%2e/_synapse/admin/v1/users",
        "/_matrix/client/%2E/versions",
        "/_matrix/client/..%2F..%2F_synapse/admin",
    ] {
        let resp = get(&proxy, path).await;
        assert_eq!(resp.status, 400, "{path}");
        assert_eq!(resp.json()["errcode"], "M_UNRECOGNIZED");
    }
    assert_eq!(
        backend.log.count(),
        0,
        "refused requests must not reach the backend"
    );
}

#[tokio::test]
async fn internal_paths_forwarded_from_allowed_networks() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[allow]\nsynapse_admin = [\"127.0.0.0/8\"]")
        .start()
        .await;
    let resp = get(&proxy, "/_synapse/admin/v1/server_version").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        backend.log.last().request_line(),
        "GET /_synapse/admin/v1/server_version HTTP/1.1"
    );
    // Metrics were not allowed.
    assert_eq!(get(&proxy, "/_synapse/metrics").await.status, 403);
}

#[tokio::test]
async fn plain_http_redirects_with_301_never_308() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for method in ["GET", "HEAD"] {
        for target in [
            "/.well-known/matrix/server",
            "/_matrix/client/versions?x=%2F",
            "/",
        ] {
            let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
            let req = format!(
                "{method} {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
            );
            let resp = crate::support::raw_h1(&mut tcp, req.as_bytes()).await;
            assert_eq!(resp.status, 301, "{method} {target}");
            assert_eq!(
                resp.header("location"),
                Some(format!(
                    "https://example.test:{}{target}",
                    proxy.https.port()
                ))
            );
        }
    }
    for method in ["POST", "PUT", "DELETE"] {
        let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
        let req = format!(
            "{method} /_matrix/client/v3/login HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let resp = crate::support::raw_h1(&mut tcp, req.as_bytes()).await;
        assert_eq!(resp.status, 403, "{method}");
        assert_eq!(resp.json()["errcode"], "M_FORBIDDEN");
    }
    assert_eq!(backend.log.count(), 0);
}

#[tokio::test]
async fn admin_listener_health_and_ready() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for (path, status) in [("/health", 200), ("/ready", 200), ("/metricsx", 404)] {
        let mut tcp = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = crate::support::raw_h1(&mut tcp, req.as_bytes()).await;
        assert_eq!(resp.status, status, "{path}");
    }
}

#[tokio::test]
async fn refusals_over_h2() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for (path, status, errcode) in [
        ("/_synapse/admin/v1/users", 403, "M_FORBIDDEN"),
        ("/_matrix/%2e%2e/_synapse/admin", 400, "M_UNRECOGNIZED"),
        ("/nothing/here", 404, "M_UNRECOGNIZED"),
    ] {
        let req = Request::get(format!("https://example.test{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = h2_request(proxy.https, "example.test", proxy.roots.clone(), req).await;
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(body["errcode"], errcode);
    }
    assert_eq!(backend.log.count(), 0);
}
