//! Pebble, the ACME test server from Debian's `pebble` package, started per test on loopback
//! with its validation ports pointed at the proxy and its names resolved by [`TestDns`].
//! Killed when dropped, also when the test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::client::connect;
use super::free_port;
use super::pki::TestCa;

pub struct Pebble {
    child: Child,
    pub directory: String,
    management: SocketAddr,
    /// The CA that signed Pebble's own HTTPS certificate, as a PEM file (for `ca_roots`).
    pub api_ca_pem: PathBuf,
    api_ca: TestCa,
    log: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- pebble log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of the
    /// addresses `dns` gives for each name.
    pub async fn start(dir: &Path, dns: SocketAddr, http_port: u16, tls_port: u16) -> Pebble {
        let api_ca = TestCa::new();
        let api = api_ca.issue(dir, "pebble-api", &["localhost", "127.0.0.1"]);
        let api_ca_pem = dir.join("pebble-api-ca.pem");
        api_ca.write_pem(&api_ca_pem);
        // A port picked by `free_port` can be taken by a parallel test before Pebble binds it;
        // Pebble then exits at once, and a new pair of ports is tried.
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let config = serde_json::json!({
                "pebble": {
                    "listenAddress": listen.to_string(),
                    "managementListenAddress": management.to_string(),
                    "certificate": api.cert,
                    "privateKey": api.key,
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false
                }
            });
            let config_path = dir.join("pebble.json");
            std::fs::write(&config_path, config.to_string()).unwrap();
            let log = dir.join("pebble.log");
            let child = Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .arg("-dnsserver")
                .arg(dns.to_string())
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::from(
                    std::fs::File::options().append(true).open(&log).unwrap(),
                ))
                .spawn()
                .expect("`pebble` not found: scripts/test installs Debian's pebble package");
            let mut child = child;
            // Bounded wait for the directory to accept connections.
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(listen).await.is_ok()
                    && tokio::net::TcpStream::connect(management).await.is_ok()
                {
                    return Pebble {
                        child,
                        directory: format!("https://127.0.0.1:{}/dir", listen.port()),
                        management,
                        api_ca_pem,
                        api_ca,
                        log,
                    };
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("pebble did not start listening (3 tries, 10 s each); last log:\n{last_log}");
    }

    /// Pebble's root certificate (new on every start), from its management API.
    pub async fn roots(&self) -> std::sync::Arc<RootCertStore> {
        let pem = self.management_get("/roots/0").await;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        assert!(!roots.is_empty(), "no root from pebble");
        std::sync::Arc::new(roots)
    }

    async fn management_get(&self, path: &str) -> Vec<u8> {
        let tls = connect(
            self.management,
            "127.0.0.1",
            self.api_ca.roots(),
            &[b"http/1.1"],
        )
        .await
        .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "127.0.0.1")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "pebble management {path}");
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }
}
