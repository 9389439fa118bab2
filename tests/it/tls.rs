//! TLS on every listener: the certificate is chosen by SNI among the configured ones, the first
//! is the default for clients that send none, both TLS versions Synapse may use are accepted,
//! and ALPN picks the HTTP version.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::support::client::client_config;
use crate::support::{Backend, Proxy, connect};

fn leaf_names(der: &CertificateDer<'_>) -> Vec<String> {
    matrix_edge::tls::leaf_facts(der).unwrap().0
}

#[tokio::test]
async fn certificate_chosen_by_sni_with_a_default() {
    let backend = Backend::start().await;
    let builder = Proxy::builder(&backend.url());
    let dir = builder.dir();
    let first = builder
        .ca()
        .issue(&dir, "first", &["example.test", "127.0.0.1"]);
    let second = builder.ca().issue(&dir, "second", &["matrix.example.test"]);
    let third = builder.ca().issue(&dir, "third", &["*.wild.test"]);
    let tls = format!(
        "[tls]\nnames = [\"example.test\", \"matrix.example.test\"]\ncert = {:?}\nkey = {:?}\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
        first.cert, first.key, second.cert, second.key, third.cert, third.key
    );
    let proxy = builder.tls(&tls).start().await;

    for addr in [proxy.https, proxy.federation] {
        for (sni, expected) in [
            ("example.test", "example.test"),
            ("matrix.example.test", "matrix.example.test"),
            ("a.wild.test", "*.wild.test"),
        ] {
            // `connect` verifies the chain against the test CA for `sni`, so a wrong pick fails.
            let stream = connect(addr, sni, proxy.roots.clone(), &[b"http/1.1"])
                .await
                .unwrap();
            let certs = stream.get_ref().1.peer_certificates().unwrap();
            assert_eq!(leaf_names(&certs[0])[0], expected, "{sni} on {addr}");
        }
        // An IP address sends no SNI: the first certificate is served, and it covers the IP.
        let stream = connect(addr, "127.0.0.1", proxy.roots.clone(), &[b"http/1.1"])
            .await
            .unwrap();
        let certs = stream.get_ref().1.peer_certificates().unwrap();
        assert_eq!(leaf_names(&certs[0]), vec!["example.test", "127.0.0.1"]);
    }
}

#[tokio::test]
async fn tls_versions_and_alpn() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    for (version, name) in [
        (&rustls::version::TLS12, "TLSv1_2"),
        (&rustls::version::TLS13, "TLSv1_3"),
    ] {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(proxy.roots.clone())
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(proxy.federation)
            .await
            .unwrap();
        let stream = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("example.test").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(
            format!("{:?}", stream.get_ref().1.protocol_version().unwrap()),
            name
        );
    }
    for (offer, chosen) in [
        (vec![&b"h2"[..], b"http/1.1"], &b"h2"[..]),
        (vec![&b"http/1.1"[..]], &b"http/1.1"[..]),
    ] {
        let tcp = tokio::net::TcpStream::connect(proxy.https).await.unwrap();
        let stream = TlsConnector::from(client_config(proxy.roots.clone(), &offer))
            .connect(ServerName::try_from("example.test").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(chosen));
    }
}

#[tokio::test]
async fn plain_http_on_a_tls_port_does_not_hang() {
    let backend = Backend::start().await;
    let proxy = Proxy::builder(&backend.url()).start().await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.federation)
        .await
        .unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf).await;
        buf
    })
    .await;
    assert!(
        resp.is_ok(),
        "the connection must be closed, not left hanging"
    );
    assert_eq!(backend.log.count(), 0);
}
