//! Shutdown drains: in-flight requests finish, new connections are refused, `run` returns.

use std::time::Duration;

use crate::support::{Backend, Proxy};

#[tokio::test]
async fn slow_response_finished_during_shutdown() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nshutdown_grace = \"20s\"")
        .start()
        .await;
    let https = proxy.https;
    let roots = proxy.roots.clone();
    let in_flight = tokio::spawn(async move {
        let tls = crate::support::connect(https, "example.test", roots, &[b"http/1.1"])
            .await
            .unwrap();
        crate::support::raw_h1(
            tls,
            b"GET /_matrix/slow/1500/state HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    // Let the request reach the backend before shutdown starts.
    for _ in 0..100 {
        if backend.log.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.log.count(), 1);
    let run = proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(https).await.is_err(),
        "the listener must stop accepting once draining"
    );
    let resp = tokio::time::timeout(Duration::from_secs(15), in_flight)
        .await
        .expect("in-flight request not finished")
        .unwrap();
    assert_eq!(resp.status, 200);
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("run did not return after the drain")
        .unwrap();
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::builder(&backend.url())
        .extra("[limits]\nshutdown_grace = \"1s\"")
        .start()
        .await;
    let https = proxy.https;
    let roots = proxy.roots.clone();
    tokio::spawn(async move {
        let tls = crate::support::connect(https, "example.test", roots, &[b"http/1.1"])
            .await
            .unwrap();
        crate::support::raw_h1(
            tls,
            b"GET /_matrix/slow/60000/sync HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    for _ in 0..100 {
        if backend.log.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = proxy.shutdown();
    // A 60s long-poll must not hold a 1s grace period hostage.
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run did not return after the grace period")
        .unwrap();
}
