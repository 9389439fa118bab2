//! A homeserver stand-in for the federation checker's tests, and the sites around it.
//!
//! [`Homeserver`] answers what a remote server asks: `/_matrix/federation/v1/version`,
//! `/_matrix/key/v2/server` with a real ed25519 self-signature over canonical JSON,
//! `/_matrix/client/versions`, and the event endpoint, which refuses unsigned requests with
//! 401 `M_UNAUTHORIZED` like Synapse. It routes on the raw path, so a path whose `%2F` was
//! decoded on the way lands on no route and gets Synapse's 404 `M_UNRECOGNIZED`.
//!
//! [`Site`] serves a [`Handler`] over TLS (a test CA's certificate) or plain HTTP (behind the
//! proxy) and records what each request looked like on arrival: raw target, `Host`, SNI.
//! [`Routes`] serves well-known files and redirects by path, and
//! [`mangle`] is the broken reverse proxy that decodes the path before passing it on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::pki::TestCa;

/// A request as handlers see it: the target exactly as received.
#[derive(Clone, Debug)]
pub struct Req {
    pub target: String,
    pub headers: HeaderMap,
}

pub type Resp = Response<Full<Bytes>>;
pub type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

/// What arrived at a site.
#[derive(Clone, Debug)]
pub struct Seen {
    pub target: String,
    pub host: Option<String>,
    pub sni: Option<String>,
}

#[derive(Clone, Default)]
pub struct Visits(Arc<Mutex<Vec<Seen>>>);

impl Visits {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    pub fn targets(&self) -> Vec<String> {
        self.all().into_iter().map(|s| s.target).collect()
    }

    fn push(&self, seen: Seen) {
        self.0.lock().unwrap().push(seen);
    }
}

/// A JSON response without CORS headers.
pub fn json_response(status: u16, value: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}

/// The spec's CORS headers added to a response.
pub fn with_cors(mut resp: Resp) -> Resp {
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", "*".parse().unwrap());
    h.insert(
        "access-control-allow-methods",
        "GET, POST, PUT, DELETE, OPTIONS".parse().unwrap(),
    );
    h.insert(
        "access-control-allow-headers",
        "X-Requested-With, Content-Type, Authorization"
            .parse()
            .unwrap(),
    );
    resp
}

fn unrecognized() -> Resp {
    json_response(
        404,
        &json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}),
    )
}

/// A homeserver with one ed25519 signing key.
pub struct Homeserver {
    /// The `server_name` its keys claim.
    pub claimed_name: String,
    key: Ed25519KeyPair,
    key_id: String,
}

impl Homeserver {
    pub fn new(server_name: &str) -> Arc<Homeserver> {
        Arc::new(Homeserver {
            claimed_name: server_name.to_owned(),
            key: Ed25519KeyPair::generate().unwrap(),
            key_id: "ed25519:a_test".into(),
        })
    }

    /// The signed `/_matrix/key/v2/server` answer.
    pub fn keys(&self) -> Value {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut keys = json!({
            "server_name": self.claimed_name,
            "valid_until_ts": now_ms + 24 * 3600 * 1000,
            "verify_keys": {
                &self.key_id: {"key": STANDARD_NO_PAD.encode(self.key.public_key().as_ref())}
            },
            "old_verify_keys": {},
        });
        // serde_json's map is ordered by key and `to_string` is compact: canonical JSON for
        // this ASCII, integer-only object, written independently of the checker's own code.
        let canonical = serde_json::to_string(&keys).unwrap();
        let signature = self.key.sign(canonical.as_bytes());
        keys["signatures"] = json!({
            &self.claimed_name: {&self.key_id: STANDARD_NO_PAD.encode(signature.as_ref())}
        });
        keys
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let hs = self.clone();
        Arc::new(move |req: &Req| hs.respond(req))
    }

    fn respond(&self, req: &Req) -> Resp {
        let path = req.target.split('?').next().unwrap_or("");
        match path {
            "/_matrix/federation/v1/version" => json_response(
                200,
                &json!({"server": {"name": "test-homeserver", "version": "1.0"}}),
            ),
            "/_matrix/key/v2/server" => json_response(200, &self.keys()),
            "/_matrix/client/versions" => {
                with_cors(json_response(200, &json!({"versions": ["v1.11", "v1.12"]})))
            }
            _ => match path.strip_prefix("/_matrix/federation/v1/event/") {
                Some(event_id) if !event_id.is_empty() && !event_id.contains('/') => {
                    if req.headers.contains_key("authorization") {
                        json_response(404, &json!({"errcode": "M_NOT_FOUND", "error": "no event"}))
                    } else {
                        json_response(
                            401,
                            &json!({"errcode": "M_UNAUTHORIZED", "error": "Missing Authorization headers"}),
                        )
                    }
                }
                _ => unrecognized(),
            },
        }
    }
}

/// Answers by exact path; anything else is Synapse's 404 `M_UNRECOGNIZED`.
#[derive(Clone, Default)]
pub struct Routes {
    exact: Vec<(String, Handler)>,
}

impl Routes {
    pub fn new() -> Routes {
        Routes::default()
    }

    pub fn respond(mut self, path: &str, f: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Self {
        self.exact.push((path.to_owned(), Arc::new(f)));
        self
    }

    /// `/.well-known/matrix/server` delegating to `m_server`, served as matrix-edge serves it.
    pub fn server_file(self, m_server: &str) -> Self {
        let body = json!({"m.server": m_server});
        self.respond("/.well-known/matrix/server", move |_| {
            let mut r = with_cors(json_response(200, &body));
            r.headers_mut()
                .insert("cache-control", "max-age=3600".parse().unwrap());
            r
        })
    }

    /// `/.well-known/matrix/client` with `base_url`, with or without CORS headers.
    pub fn client_file(self, base_url: &str, cors: bool) -> Self {
        let body = json!({"m.homeserver": {"base_url": base_url}});
        self.respond("/.well-known/matrix/client", move |_| {
            let r = json_response(200, &body);
            if cors { with_cors(r) } else { r }
        })
    }

    pub fn support_file(self, body: Value) -> Self {
        self.respond("/.well-known/matrix/support", move |_| {
            with_cors(json_response(200, &body))
        })
    }

    pub fn redirect(self, path: &str, status: u16, location: &str) -> Self {
        let location = location.to_owned();
        self.respond(path, move |_| {
            Response::builder()
                .status(status)
                .header("location", &location)
                .body(Full::new(Bytes::new()))
                .unwrap()
        })
    }

    pub fn handler(self) -> Handler {
        Arc::new(move |req: &Req| {
            let path = req.target.split('?').next().unwrap_or("");
            for (p, h) in &self.exact {
                if p == path {
                    return h(req);
                }
            }
            unrecognized()
        })
    }
}

/// A reverse proxy that "normalises" the path: percent-decodes it before passing it on, as
/// nginx does with `proxy_pass http://backend/;` or Apache without `nocanon`.
pub fn mangle(inner: Handler) -> Handler {
    Arc::new(move |req: &Req| {
        let decoded = percent_encoding::percent_decode_str(&req.target)
            .decode_utf8_lossy()
            .into_owned();
        inner(&Req {
            target: decoded,
            ..req.clone()
        })
    })
}

/// A certificate and key for a test site.
pub struct Cert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Cert {
    /// Valid from yesterday for 90 days.
    pub fn new(ca: &TestCa, names: &[&str]) -> Cert {
        let now = time::OffsetDateTime::now_utc();
        Self::between(
            ca,
            names,
            now - time::Duration::days(1),
            now + time::Duration::days(90),
        )
    }

    /// Expired since yesterday.
    pub fn expired(ca: &TestCa, names: &[&str]) -> Cert {
        let now = time::OffsetDateTime::now_utc();
        Self::between(
            ca,
            names,
            now - time::Duration::days(90),
            now - time::Duration::days(1),
        )
    }

    pub fn between(
        ca: &TestCa,
        names: &[&str],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Cert {
        let (pem, _) = ca.bundle(names, not_before, not_after);
        Cert {
            chain: CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .unwrap(),
            key: PrivateKeyDer::from_pem_slice(&pem).unwrap(),
        }
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A server on one address, stopped when dropped.
pub struct Site {
    pub addr: SocketAddr,
    pub seen: Visits,
    task: JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Site {
    /// HTTPS on `addr` (a loopback address; port 0 picks one) with `cert`.
    pub async fn tls(addr: &str, cert: &Cert, handler: Handler) -> Site {
        Self::start(addr, Some(TlsAcceptor::from(cert.server_config())), handler).await
    }

    /// Plain HTTP/1.1, as a homeserver behind the proxy.
    pub async fn plain(addr: &str, handler: Handler) -> Site {
        Self::start(addr, None, handler).await
    }

    async fn start(addr: &str, tls: Option<TlsAcceptor>, handler: Handler) -> Site {
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_loopback(), "test sites bind loopback only");
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let seen = Visits::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (tls, handler, log) = (tls.clone(), handler.clone(), log.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            let Ok(Ok(stream)) =
                                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                                    .await
                            else {
                                return;
                            };
                            let sni = stream.get_ref().1.server_name().map(str::to_owned);
                            serve(stream, sni, handler, log).await;
                        }
                        None => serve(tcp, None, handler, log).await,
                    }
                });
            }
        });
        Site { addr, seen, task }
    }
}

async fn serve<S>(stream: S, sni: Option<String>, handler: Handler, log: Visits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let r = Req {
            target: target.clone(),
            headers: req.headers().clone(),
        };
        log.push(Seen {
            target,
            host: r
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned),
            sni: sni.clone(),
        });
        let resp = handler(&r);
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
}

/// The test CA's certificate as a checker trust anchor.
pub fn ca_der(ca: &TestCa, dir: &std::path::Path) -> Vec<CertificateDer<'static>> {
    let path = dir.join("ca.pem");
    ca.write_pem(&path);
    matrix_edge::check::load_ca(&path).unwrap()
}
