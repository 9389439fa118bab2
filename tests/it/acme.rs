//! Certificates by ACME against a real ACME server: Pebble from Debian, its validation pointed at
//! the proxy's listeners, names resolved by a DNS server in the test. Clients trust only Pebble's
//! root (from its management API), so a handshake that succeeds proves the chain.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::support::dns::{TestDns, Zone};
use crate::support::pebble::Pebble;
use crate::support::proxy::Ports;
use crate::support::{Backend, Proxy, connect, free_port};

const NAMES: [&str; 2] = ["example.test", "matrix.example.test"];

async fn dns() -> TestDns {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    Zone::default()
        .addr("example.test", lo)
        .addr("matrix.example.test", lo)
        .serve()
        .await
}

fn acme_tls(
    pebble_directory: &str,
    ca_roots: &std::path::Path,
    cache: &std::path::Path,
    challenge: &str,
) -> String {
    format!(
        "[tls]\nnames = {NAMES:?}\n[tls.acme]\ndirectory = {pebble_directory:?}\ncontact = [\"mailto:admin@example.test\"]\ncache = {:?}\nchallenge = {challenge:?}\nca_roots = {:?}\n",
        cache.display().to_string(),
        ca_roots.display().to_string(),
    )
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> u16 {
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    crate::support::raw_h1(&mut tcp, req.as_bytes())
        .await
        .status
}

/// Waits (bounded) until `/ready` answers 200.
async fn wait_ready(admin: std::net::SocketAddr, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if admin_get(admin, "/ready").await == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("/ready was not 200 within {within:?}");
}

/// The leaf certificate served for `sni`, verified against `roots`.
async fn leaf(
    addr: std::net::SocketAddr,
    sni: &str,
    roots: Arc<RootCertStore>,
) -> std::io::Result<CertificateDer<'static>> {
    let tls = connect(addr, sni, roots, &[b"http/1.1"]).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned())
}

/// A backend, a DNS server for the test names, and Pebble validating on the TLS and HTTP ports
/// of `ports`, which the proxy under test is to serve.
struct AcmeWorld {
    backend: Backend,
    _dns: TestDns,
    work: tempfile::TempDir,
    ports: Ports,
    pebble: Pebble,
    /// The ACME cache directory (not created).
    cache: std::path::PathBuf,
}

impl AcmeWorld {
    async fn start() -> AcmeWorld {
        let backend = Backend::start().await;
        let dns = dns().await;
        let work = tempfile::tempdir().unwrap();
        let ports = Ports::any();
        let [https, _, http, _] = ports.addrs();
        let pebble = Pebble::start(work.path(), dns.addr, http.port(), https.port()).await;
        let cache = work.path().join("acme");
        AcmeWorld {
            backend,
            _dns: dns,
            work,
            ports,
            pebble,
            cache,
        }
    }
}

async fn issues_and_serves(challenge: &str) {
    let AcmeWorld {
        backend,
        _dns,
        work: _work,
        ports,
        pebble,
        cache,
    } = AcmeWorld::start().await;
    let proxy = Proxy::builder(&backend.url())
        .ports(ports)
        .tls(&acme_tls(
            &pebble.directory,
            &pebble.api_ca_pem,
            &cache,
            challenge,
        ))
        .start()
        .await;
    wait_ready(proxy.admin, Duration::from_secs(60)).await;
    let roots = pebble.roots().await;
    for addr in [proxy.https, proxy.federation] {
        for name in NAMES {
            let der = leaf(addr, name, roots.clone()).await.unwrap_or_else(|e| {
                panic!("{name} on {addr} does not verify against Pebble's root: {e}")
            });
            // One certificate covers both names.
            let (names, _) = matrix_edge::tls::leaf_facts(&der).unwrap();
            assert_eq!(names, NAMES, "SANs of the served certificate");
        }
    }
    // The cache is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    for entry in std::fs::read_dir(&cache).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_one_certificate_for_two_names_on_every_tls_port() {
    issues_and_serves("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_one_certificate_for_two_names_on_every_tls_port() {
    issues_and_serves("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_a_cached_certificate_makes_no_new_order() {
    let AcmeWorld {
        backend,
        _dns,
        work: _work,
        ports,
        pebble,
        cache,
    } = AcmeWorld::start().await;
    let tls = acme_tls(&pebble.directory, &pebble.api_ca_pem, &cache, "tls-alpn-01");
    let mut first = Proxy::builder(&backend.url())
        .ports(ports)
        .tls(&tls)
        .start()
        .await;
    wait_ready(first.admin, Duration::from_secs(60)).await;
    let roots = pebble.roots().await;
    let issued = leaf(first.https, "example.test", roots.clone())
        .await
        .unwrap();
    first.shutdown().await.unwrap();

    // A second proxy on other ports: Pebble could not validate there, so a certificate that
    // verifies can only have come from the cache, and the same bytes prove it is the same one.
    let second = Proxy::builder(&backend.url()).tls(&tls).start().await;
    wait_ready(second.admin, Duration::from_secs(20)).await;
    for addr in [second.https, second.federation] {
        let served = leaf(addr, "matrix.example.test", roots.clone())
            .await
            .unwrap();
        assert_eq!(
            served, issued,
            "a restart must serve the cached certificate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_cached_certificate_is_renewed_while_serving() {
    let AcmeWorld {
        backend,
        _dns,
        work: _work,
        ports,
        pebble,
        cache,
    } = AcmeWorld::start().await;
    std::fs::create_dir(&cache).unwrap();
    // A cached certificate from another CA, 89 days into 90: past its renewal point.
    let old_ca = crate::support::pki::TestCa::new();
    let now = time::OffsetDateTime::now_utc();
    let (bundle, old_der) = old_ca.bundle(
        &NAMES,
        now - time::Duration::days(89),
        now + time::Duration::days(1),
    );
    let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    std::fs::write(
        cache.join(matrix_edge::acme::certificate_file(
            &names,
            &pebble.directory,
        )),
        bundle,
    )
    .unwrap();

    let proxy = Proxy::builder(&backend.url())
        .ports(ports)
        .tls(&acme_tls(
            &pebble.directory,
            &pebble.api_ca_pem,
            &cache,
            "tls-alpn-01",
        ))
        .start()
        .await;
    // Ready at once with the cached certificate; a connection opened now keeps working.
    wait_ready(proxy.admin, Duration::from_secs(10)).await;
    let mut old_conn = connect(proxy.https, "example.test", old_ca.roots(), &[b"http/1.1"])
        .await
        .expect("the cached certificate is served while the renewal runs");
    assert_eq!(
        old_conn.get_ref().1.peer_certificates().unwrap()[0],
        old_der
    );

    let roots = pebble.roots().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let renewed = loop {
        if let Ok(der) = leaf(proxy.https, "example.test", roots.clone()).await {
            break der;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not renewed within 60s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_ne!(renewed, old_der);
    assert_eq!(
        leaf(proxy.federation, "matrix.example.test", roots)
            .await
            .unwrap(),
        renewed
    );

    // The connection opened before the swap is still served.
    let resp = crate::support::raw_h1(
        &mut old_conn,
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
}

/// A directory URL where nothing listens.
fn dead_directory() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("https://127.0.0.1:{port}/dir")
}

#[tokio::test]
async fn acme_down_without_cache_starts_unready_and_refuses_handshakes() {
    let backend = Backend::start().await;
    let work = tempfile::tempdir().unwrap();
    let ca = crate::support::pki::TestCa::new();
    let ca_pem = work.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let proxy = Proxy::builder(&backend.url())
        .tls(&acme_tls(
            &dead_directory(),
            &ca_pem,
            &work.path().join("acme"),
            "tls-alpn-01",
        ))
        .start()
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(admin_get(proxy.admin, "/health").await, 200);
    assert_eq!(admin_get(proxy.admin, "/ready").await, 503);
    // No certificate yet: the handshake fails cleanly (an alert), it does not hang.
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        connect(proxy.https, "example.test", ca.roots(), &[b"http/1.1"]),
    )
    .await
    .expect("the handshake must fail promptly, not hang");
    assert!(attempt.is_err());
}

#[tokio::test]
async fn acme_down_with_cache_serves_the_cached_certificate() {
    let backend = Backend::start().await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("acme");
    std::fs::create_dir(&cache).unwrap();
    let ca = crate::support::pki::TestCa::new();
    let ca_pem = work.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let directory = dead_directory();
    let now = time::OffsetDateTime::now_utc();
    let (bundle, der) = ca.bundle(
        &NAMES,
        now - time::Duration::days(1),
        now + time::Duration::days(89),
    );
    let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    std::fs::write(
        cache.join(matrix_edge::acme::certificate_file(&names, &directory)),
        bundle,
    )
    .unwrap();

    let proxy = Proxy::builder(&backend.url())
        .tls(&acme_tls(&directory, &ca_pem, &cache, "tls-alpn-01"))
        .start()
        .await;
    wait_ready(proxy.admin, Duration::from_secs(10)).await;
    for addr in [proxy.https, proxy.federation] {
        assert_eq!(
            leaf(addr, "matrix.example.test", ca.roots()).await.unwrap(),
            der
        );
    }
}

/// An unreachable CA is reported in one line that names the directory, the names and the step.
#[test]
fn acme_failure_is_one_clear_log_line() {
    let work = tempfile::tempdir().unwrap();
    let ca = crate::support::pki::TestCa::new();
    let ca_pem = work.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let directory = dead_directory();
    let config = work.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"example.test\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nfederation = []\nhttp = []\n{}",
            acme_tls(&directory, &ca_pem, &work.path().join("acme"), "tls-alpn-01")
        ),
    )
    .unwrap();
    let proxy = crate::binary::Running::start(&config);
    // Bounded: at most 50 lines, each within 20s.
    let line = (0..50)
        .map_while(|_| proxy.stderr_rest.recv_timeout(Duration::from_secs(20)).ok())
        .find(|l| l.contains("ACME: order for"))
        .expect("no ACME failure line");
    assert!(line.contains(&directory), "{line}");
    assert!(line.contains("example.test, matrix.example.test"), "{line}");
    assert!(
        line.contains("failed while talking to the ACME server"),
        "{line}"
    );
    assert!(line.contains("retrying in"), "{line}");
}

/// The built binary, given only a config with `[tls.acme]` pointing at Pebble, serves a chain
/// that verifies against Pebble's root for every name on both TLS ports, and a restart serves
/// the same certificate from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_binary_obtains_serves_and_keeps_its_certificate() {
    // `/ready` also wants the backend to accept connections.
    let backend = Backend::start().await;
    let dns = dns().await;
    let work = tempfile::tempdir().unwrap();
    let (https, federation, admin) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(work.path(), dns.addr, free_port(), https).await;
    let config = work.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"example.test\"\n[backend]\nurl = \"{}\"\n[listen]\nhttps = [\"127.0.0.1:{https}\"]\nfederation = [\"127.0.0.1:{federation}\"]\nhttp = []\nadmin = \"127.0.0.1:{admin}\"\n[well_known]\nserver = \"matrix.example.test:443\"\n[tls.acme]\ndirectory = {:?}\ncache = {:?}\nca_roots = {:?}\n",
            backend.url(),
            pebble.directory,
            work.path().join("acme").display().to_string(),
            pebble.api_ca_pem.display().to_string(),
        ),
    )
    .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let ports: Vec<std::net::SocketAddr> = [https, federation]
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();

    let mut first = crate::binary::Running::start(&config);
    wait_ready(admin, Duration::from_secs(60)).await;
    let roots = pebble.roots().await;
    let mut issued = None;
    // tls.names was left to its default: the server name and the m.server host.
    for addr in &ports {
        for name in NAMES {
            let der = leaf(*addr, name, roots.clone()).await.unwrap();
            assert_eq!(*issued.get_or_insert(der.clone()), der);
        }
    }
    let exit = tokio::task::spawn_blocking(move || first.terminate())
        .await
        .unwrap();
    assert_eq!(exit, Some(0));

    let _second = crate::binary::Running::start(&config);
    wait_ready(admin, Duration::from_secs(20)).await;
    for addr in &ports {
        let der = leaf(*addr, "matrix.example.test", roots.clone())
            .await
            .unwrap();
        assert_eq!(
            Some(der),
            issued,
            "the restart must serve the cached certificate"
        );
    }
}
