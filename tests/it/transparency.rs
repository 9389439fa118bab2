//! What reaches the backend is what the client sent, where federation signatures depend on it:
//! the request-target byte for byte, method, body and every `Authorization` header. Only
//! hop-by-hop and forwarding headers change.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::{Backend, Proxy, get, h1, h2_request};

/// Request-targets that proxies have been known to rewrite, breaking X-Matrix signatures.
const AWKWARD_TARGETS: &[&str] = &[
    "/_matrix/federation/v1/event/%24abc%2Fdef%2Bghi",
    "/_matrix/federation/v1/event/$abc/def+ghi",
    "/_matrix/federation/v1/query/profile?user_id=%40a%3Ab&field=displayname",
    "/_matrix/client/v3/rooms/%21room%3Aexample.test/send/m.room.message/txn1",
    "/_matrix/client/v3/directory/room/%23alias%3Aexample.test",
    "/_matrix/federation/v1/x/%24%2F%2B%23%3A%40%21",
    "/_matrix/federation/v1/x/%2fmixed%2FCase%aB%Ab",
    "/_matrix/client/v3/x%zz%2",
    "/_matrix//client//v3",
    "/_matrix/client/v3/sync/",
    "/_matrix/client/v3/sync?since=1&since=2&filter=&a",
    "/_matrix/client/v3/sync?b=2&a=1&b=1",
    "/_matrix/client/v3/sync?a=%20b+c&d=%2B",
    "/_matrix/client/v3/sync?",
    "/_matrix/client/v3/sync?&&",
    "/_matrix/media/v3/download/example.test/abc?allow_redirect=true",
    "/_matrix/key/v2/query/example.test?minimum_valid_until_ts=1",
    "/_matrix/client/v3/user/@alice:example.test/filter",
    "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
];

#[tokio::test]
async fn request_target_byte_for_byte_h1() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for target in AWKWARD_TARGETS {
        for addr in [proxy.https, proxy.federation] {
            let resp = h1(
                &proxy,
                addr,
                &format!(
                    "GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
                ),
            )
            .await;
            assert_eq!(resp.status, 200, "{target}: {resp:?}");
            assert_eq!(
                backend.log.last().request_line(),
                format!("GET {target} HTTP/1.1"),
                "target changed on the way to the backend"
            );
        }
    }
}

#[tokio::test]
async fn request_target_byte_for_byte_h2() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for target in AWKWARD_TARGETS {
        let req = Request::get(format!("https://example.test{target}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        // The client library must not have changed the target itself, or this test proves nothing.
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), *target);
        let resp = h2_request(proxy.https, "example.test", proxy.roots.clone(), req).await;
        assert_eq!(resp.status(), 200, "{target}");
        let seen = backend.log.last();
        assert_eq!(seen.request_line(), format!("GET {target} HTTP/1.1"));
        assert_eq!(
            seen.header("host").as_deref(),
            Some("example.test"),
            "Host from :authority"
        );
    }
}

#[tokio::test]
async fn method_body_and_repeated_authorization_unchanged() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    let body = r#"{"pdus":[],"edus":[]}"#;
    let auth1 =
        r#"X-Matrix origin="a.test",destination="example.test",key="ed25519:k1",sig="c2lnMQ""#;
    let auth2 = r#"X-Matrix origin=a.test,destination=example.test,key="ed25519:k2",sig="c2lnMg""#;
    let resp = h1(
        &proxy,
        proxy.federation,
        &format!(
            "PUT /_matrix/federation/v1/send/txn%2F1 HTTP/1.1\r\nHost: example.test:8448\r\nAuthorization: {auth1}\r\nAuthorization: {auth2}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["received"], body.len());
    let seen = backend.log.last();
    assert_eq!(
        seen.request_line(),
        "PUT /_matrix/federation/v1/send/txn%2F1 HTTP/1.1"
    );
    assert_eq!(seen.header_all("authorization"), vec![auth1, auth2]);
    assert_eq!(seen.header("host").as_deref(), Some("example.test:8448"));
    assert_eq!(seen.body_len, body.len() as u64);
}

#[tokio::test]
async fn repeated_authorization_over_h2() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    let req = Request::put("https://matrix.example.test/_matrix/federation/v1/send/t1")
        .header(
            "authorization",
            "X-Matrix origin=a,key=\"ed25519:1\",sig=\"x\"",
        )
        .header(
            "authorization",
            "X-Matrix origin=a,key=\"ed25519:2\",sig=\"y\"",
        )
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = h2_request(proxy.https, "matrix.example.test", proxy.roots.clone(), req).await;
    assert_eq!(resp.status(), 200);
    let seen = backend.log.last();
    assert_eq!(seen.header_all("authorization").len(), 2);
    assert_eq!(seen.header("host").as_deref(), Some("matrix.example.test"));
    assert_eq!(seen.body_len, 2);
}

#[tokio::test]
async fn forwarding_headers_cannot_be_spoofed() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    let resp = h1(
        &proxy,
        proxy.https,
        "GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Proto: http\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = backend.log.last();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["https"]);
    assert!(seen.header("x-real-ip").is_none());
    assert!(seen.header("forwarded").is_none());
}

#[tokio::test]
async fn forwarded_for_appended_behind_trusted_proxy() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url())
        .extra("[forward]\ntrusted_proxies = [\"127.0.0.0/8\"]")
        .start()
        .await;
    let resp = h1(
        &proxy,
        proxy.https,
        "GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 198.51.100.4\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        backend.log.last().header_all("x-forwarded-for"),
        vec!["198.51.100.4, 127.0.0.1"]
    );
}

#[tokio::test]
async fn hop_by_hop_headers_removed_both_ways() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    let resp = h1(
        &proxy,
        proxy.https,
        "POST /_matrix/client/v3/logout HTTP/1.1\r\nHost: example.test\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Kept: 1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = backend.log.last();
    assert!(seen.header("x-hop").is_none());
    assert!(seen.header("te").is_none());
    assert!(seen.header("keep-alive").is_none());
    assert_eq!(seen.header("x-kept").as_deref(), Some("1"));
    // An empty body declared as such stays declared: some servers insist on it for POST.
    assert_eq!(seen.header("content-length").as_deref(), Some("0"));
    // The backend's own hop-by-hop headers do not reach the client.
    assert!(resp.header("keep-alive").is_none());
    assert_eq!(resp.header("x-backend").as_deref(), Some("yes"));
}

#[tokio::test]
async fn unix_socket_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backend = crate::support::backend::UnixBackend::start(dir.path()).await;
    let proxy = Proxy::builder(&format!("unix:{}", backend.path.display()))
        .start()
        .await;
    let resp = get(&proxy, "/_matrix/federation/v1/event/%24a%2Fb").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        backend.log.last().request_line(),
        "GET /_matrix/federation/v1/event/%24a%2Fb HTTP/1.1"
    );
}

#[tokio::test]
async fn keep_alive_to_the_backend_reuses_connections() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).workers(1).start().await;
    // Five client connections, one after the other: the proxy keeps its backend connection.
    for _ in 0..5 {
        assert_eq!(get(&proxy, "/_matrix/client/versions").await.status, 200);
    }
    let conns: Vec<u64> = backend.log.all().iter().map(|r| r.conn).collect();
    assert_eq!(
        conns,
        vec![0; 5],
        "each request opened a new backend connection"
    );
}

/// Each worker keeps backend connections of its own: with three workers, twelve client
/// connections one after the other use at most three backend connections.
#[tokio::test]
async fn keep_alive_pool_is_per_worker() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).workers(3).start().await;
    for _ in 0..12 {
        assert_eq!(get(&proxy, "/_matrix/client/versions").await.status, 200);
    }
    let mut conns: Vec<u64> = backend.log.all().iter().map(|r| r.conn).collect();
    assert_eq!(conns.len(), 12);
    conns.sort();
    conns.dedup();
    assert!(conns.len() <= 3, "backend connections used: {conns:?}");
}

/// An upload over h2 streams through, whether the backend reads the whole body before it
/// answers (Synapse) or answers first and discards the rest (nginx's `return`): in the second
/// case the client must be told to stop sending, not left waiting on flow control.
#[tokio::test]
async fn h2_upload_streams_with_late_and_early_backend_answers() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for path in ["/_matrix/media/v3/upload", "/_matrix/early/upload"] {
        let (mut send, _conn) =
            crate::support::client::h2_connect(proxy.https, "example.test", proxy.roots.clone())
                .await;
        let body = Full::new(Bytes::from(vec![b'x'; 8 << 20]));
        let req = Request::post(format!("https://example.test{path}"))
            .body(body)
            .unwrap();
        let resp = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status();
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            status
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: the upload did not complete within 20s"));
        assert_eq!(resp, 200, "{path}");
    }
}
