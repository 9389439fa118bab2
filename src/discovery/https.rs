//! The HTTPS client of a remote homeserver: TCP to one address, TLS with the SNI the spec's
//! table implies (none for IP literals), one HTTP/1.1 request with an explicit `Host`, and a
//! body read up to a limit.
//!
//! The certificate is verified right after the handshake instead of inside it. A handshake
//! that rejects the certificate only says "invalid certificate"; verifying afterwards lets the
//! report say which name, which date or which issuer is wrong, and still show what the server
//! would have answered. Nothing here trusts an unverified answer: [`Client::fetch`], whose
//! answers discovery acts on, refuses them exactly like a homeserver; the per-target probes of
//! [`crate::check`] only report them.
//!
//! The request-target is sent byte for byte as given (an `http::Uri` keeps its bytes), which is
//! what the path-integrity probe relies on.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap, LOCATION, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::dns::{AddrError, Dns};
use crate::config::{Host, ServerName as MatrixName, covers};

const USER_AGENT_VALUE: &str = concat!("matrix-edge-check/", env!("CARGO_PKG_VERSION"));

/// Redirects followed on a well-known file. Synapse stops after 20, Go's client (Dendrite, the
/// federation tester) after 10; a chain that only the laxer one follows is broken for the other.
pub const REDIRECT_LIMIT: usize = 10;

/// The name a certificate must cover; a DNS name is also the SNI, an IP address sends none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertName {
    Dns(String),
    Ip(IpAddr),
}

impl CertName {
    /// The host part of a server name.
    pub fn of(name: &MatrixName) -> CertName {
        match name.host() {
            Host::Dns(d) => CertName::Dns(d.clone()),
            Host::V4(ip) => CertName::Ip(IpAddr::V4(*ip)),
            Host::V6(ip) => CertName::Ip(IpAddr::V6(*ip)),
        }
    }

    /// The SNI sent: the DNS name; nothing for an IP address (spec "TLS").
    pub fn sni(&self) -> Option<&str> {
        match self {
            CertName::Dns(d) => Some(d),
            CertName::Ip(_) => None,
        }
    }

    fn server_name(&self) -> Option<ServerName<'static>> {
        match self {
            CertName::Dns(d) => ServerName::try_from(d.clone()).ok(),
            CertName::Ip(ip) => Some(ServerName::IpAddress((*ip).into())),
        }
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Dns(d) => f.write_str(d),
            CertName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Serialize for CertName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which TLS versions the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and 1.2, as any current homeserver.
    Current,
    /// TLS 1.2 only, as older peers.
    Tls12Only,
}

/// Whether the chain leads to a trusted root, judged apart from its names and dates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Trust {
    Trusted,
    Untrusted(String),
}

/// What a certificate says, and what a homeserver would make of it.
#[derive(Clone, Debug, Serialize)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    /// subjectAltName DNS names and IP addresses, lower case.
    pub names: Vec<String>,
    #[serde(serialize_with = "unix_seconds")]
    pub not_before: Option<SystemTime>,
    #[serde(serialize_with = "unix_seconds")]
    pub not_after: Option<SystemTime>,
    /// SHA-256 of the leaf, hex.
    pub sha256: String,
    /// Served chain length, leaf included.
    pub chain_length: usize,
    pub trust: Trust,
    /// The expected name is among `names` (wildcards apply).
    pub name_matches: bool,
    /// The name the certificate was checked against.
    pub expected_name: CertName,
}

impl CertFacts {
    pub fn validity(&self, now: SystemTime) -> Validity {
        if let Some(nb) = self.not_before
            && now < nb
        {
            return Validity::NotYetValid;
        }
        match self.not_after.map(|na| na.duration_since(now)) {
            None => Validity::Unknown,
            Some(Err(e)) => Validity::Expired {
                since: e.duration(),
            },
            Some(Ok(left)) => Validity::Valid { left },
        }
    }

    /// What a verifying homeserver requires: trusted, for this name, in date.
    pub fn acceptable(&self, now: SystemTime) -> bool {
        self.trust == Trust::Trusted
            && self.name_matches
            && matches!(self.validity(now), Validity::Valid { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    Valid { left: Duration },
    Expired { since: Duration },
    NotYetValid,
    Unknown,
}

fn unix_seconds<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

/// The facts of one TLS session.
#[derive(Clone, Debug, Serialize)]
pub struct Session {
    /// "TLS 1.3", "TLS 1.2".
    pub version: String,
    pub cipher: String,
    /// The ALPN protocol the server selected, if any.
    pub alpn: Option<String>,
    /// Facts of the leaf; `None` when the server sent no certificate.
    pub certificate: Option<CertFacts>,
}

impl Session {
    pub fn acceptable(&self, now: SystemTime) -> bool {
        self.certificate.as_ref().is_some_and(|c| c.acceptable(now))
    }
}

/// Why no TLS session came up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connect to {addr} failed: {source}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TCP connect to {addr} timed out after {}", humantime::format_duration(*.timeout))]
    TcpTimeout { addr: SocketAddr, timeout: Duration },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} timed out after {}", humantime::format_duration(*.timeout))]
    TlsTimeout { addr: SocketAddr, timeout: Duration },
    #[error("`{name}` cannot be sent as a TLS server name")]
    BadName { name: String },
}

/// Why one request got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("`{target}` is not a valid request-target")]
    BadTarget { target: String },
    #[error("HTTP/1.1 exchange with {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("{addr} sent no complete response within {}", humantime::format_duration(*.timeout))]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the response body from {addr} is larger than {limit} bytes")]
    TooLarge { addr: SocketAddr, limit: usize },
}

/// One response, with the TLS session that carried it.
#[derive(Debug)]
pub struct Exchange {
    pub addr: SocketAddr,
    pub session: Session,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Exchange {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An `https://` URL as a homeserver handles it: a server-name-shaped authority and a raw
/// path-and-query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsUrl {
    pub authority: MatrixName,
    pub path: String,
}

impl HttpsUrl {
    pub fn new(authority: MatrixName, path: &str) -> HttpsUrl {
        HttpsUrl {
            authority,
            path: path.to_owned(),
        }
    }

    /// An absolute `https://` URL. Other schemes are refused: homeservers fetch well-known files
    /// over HTTPS only.
    pub fn parse(text: &str) -> Result<HttpsUrl, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => return Err(format!("`{text}` uses {other}, not https")),
            None => return Err(format!("`{text}` is not an absolute URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{text}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{text}` carries credentials"));
        }
        let authority = MatrixName::parse(authority.as_str())?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        Ok(HttpsUrl { authority, path })
    }

    /// Resolves a `Location` value against this URL (absolute, or absolute-path, or relative).
    pub fn join(&self, location: &str) -> Result<HttpsUrl, String> {
        if location.contains("://") {
            return HttpsUrl::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            return HttpsUrl::parse(&format!("https://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let dir = match self.path.split('?').next().unwrap_or("/").rfind('/') {
                Some(i) => &self.path[..=i],
                None => "/",
            };
            format!("{dir}{location}")
        };
        Ok(HttpsUrl {
            authority: self.authority.clone(),
            path,
        })
    }

    pub fn port(&self) -> u16 {
        self.authority.port().unwrap_or(443)
    }
}

impl fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority, self.path)
    }
}

/// One redirect followed.
#[derive(Clone, Debug, Serialize)]
pub struct Redirect {
    pub from: String,
    pub status: u16,
    pub location: String,
}

/// A GET that follows redirects like a homeserver's well-known lookup.
#[derive(Debug)]
pub struct Fetch {
    pub url: String,
    pub redirects: Vec<Redirect>,
    pub result: Result<Exchange, FetchError>,
}

/// Why a fetch that follows redirects has no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: AddrError,
    },
    #[error("no address of {host} answered: {}", join_errors(.errors))]
    Unreachable {
        host: String,
        errors: Vec<RequestError>,
    },
    #[error("the certificate of {host} at {addr} is not acceptable")]
    Certificate {
        host: String,
        addr: SocketAddr,
        session: Box<Session>,
    },
    #[error("more than {limit} redirects")]
    TooManyRedirects { limit: usize },
    #[error("redirect loop back to {url}")]
    RedirectLoop { url: String },
    #[error("unusable redirect to `{location}`: {reason}")]
    BadRedirect { location: String, reason: String },
}

fn join_errors(errors: &[RequestError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// TLS client settings and the post-handshake verifier.
#[derive(Clone)]
pub struct Client {
    current: Arc<ClientConfig>,
    tls12: Arc<ClientConfig>,
    verifier: Arc<WebPkiServerVerifier>,
    timeout: Duration,
}

impl Client {
    /// `roots`: the trust anchors (system roots plus `--ca`); `timeout`: for each of connect,
    /// handshake, and request with its body.
    pub fn new(roots: RootCertStore, timeout: Duration) -> Result<Client, rustls::Error> {
        let provider = crate::tls::provider();
        let roots = Arc::new(roots);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let deferred = Arc::new(DeferredVerification {
            provider: provider.clone(),
        });
        let build = |versions: &[&'static rustls::SupportedProtocolVersion]| {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)?
                .dangerous()
                .with_custom_certificate_verifier(deferred.clone())
                .with_no_client_auth();
            // Synapse's federation client is HTTP/1.1 only; offering h2 would test a path no
            // homeserver takes.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            // Each probe is judged on a full handshake, not a resumed one.
            config.resumption = rustls::client::Resumption::disabled();
            Ok::<_, rustls::Error>(Arc::new(config))
        };
        Ok(Client {
            current: build(&[&rustls::version::TLS13, &rustls::version::TLS12])?,
            tls12: build(&[&rustls::version::TLS12])?,
            verifier,
            timeout,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// TCP and TLS to `addr`, then the certificate facts for `name`.
    pub async fn handshake(
        &self,
        addr: SocketAddr,
        name: &CertName,
        versions: Versions,
    ) -> Result<(TlsStream<TcpStream>, Session), ConnectError> {
        let server_name = name.server_name().ok_or_else(|| ConnectError::BadName {
            name: name.to_string(),
        })?;
        let timeout = self.timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::TcpTimeout { addr, timeout }),
            Ok(Err(source)) => return Err(ConnectError::Tcp { addr, source }),
            Ok(Ok(tcp)) => tcp,
        };
        let config = match versions {
            Versions::Current => self.current.clone(),
            Versions::Tls12Only => self.tls12.clone(),
        };
        let connector = TlsConnector::from(config);
        let tls = match tokio::time::timeout(timeout, connector.connect(server_name, tcp)).await {
            Err(_) => return Err(ConnectError::TlsTimeout { addr, timeout }),
            Ok(Err(source)) => return Err(ConnectError::Tls { addr, source }),
            Ok(Ok(tls)) => tls,
        };
        let session = self.session(tls.get_ref().1, name);
        Ok((tls, session))
    }

    fn session(&self, conn: &rustls::ClientConnection, name: &CertName) -> Session {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_owned(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_else(|| "unknown".to_owned());
        let alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let certificate = conn
            .peer_certificates()
            .and_then(|chain| self.assess(chain, name, SystemTime::now()));
        Session {
            version,
            cipher,
            alpn,
            certificate,
        }
    }

    /// Judges trust, name and dates separately, so that an expired certificate is reported as
    /// expired and not also as untrusted.
    fn assess(
        &self,
        chain: &[CertificateDer<'static>],
        name: &CertName,
        now: SystemTime,
    ) -> Option<CertFacts> {
        let (leaf, intermediates) = chain.split_first()?;
        let parsed = parse_leaf(leaf);
        let (names, not_after) = crate::tls::leaf_facts(leaf).unwrap_or_default();
        let expected = name.to_string();
        let name_matches = names.iter().any(|n| covers(n, &expected));
        // Trust is asked with a name the certificate does cover and a time inside its validity,
        // because the verifier stops at the first problem and those two are reported apart.
        let check_name = if name_matches {
            name.server_name()
        } else {
            names
                .iter()
                .find(|n| !n.starts_with("*."))
                .and_then(|n| ServerName::try_from(n.clone()).ok())
                .or_else(|| name.server_name())
        };
        let check_time = match (parsed.not_before, not_after) {
            (Some(nb), Some(na)) if now < nb || now > na => {
                nb + na.duration_since(nb).unwrap_or_default() / 2
            }
            _ => now,
        };
        let unix = UnixTime::since_unix_epoch(
            check_time
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let trust = match check_name {
            None => Trust::Untrusted("the certificate names no usable host".into()),
            Some(server_name) => {
                match self
                    .verifier
                    .verify_server_cert(leaf, intermediates, &server_name, &[], unix)
                {
                    Ok(_) => Trust::Trusted,
                    Err(e) => Trust::Untrusted(describe_cert_error(&e)),
                }
            }
        };
        Some(CertFacts {
            subject: parsed.subject,
            issuer: parsed.issuer,
            names,
            not_before: parsed.not_before,
            not_after,
            sha256: hex(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref()).as_ref(),
            ),
            chain_length: chain.len(),
            trust,
            name_matches,
            expected_name: name.clone(),
        })
    }

    /// One GET of `target` (sent byte for byte) with `Host: host`, body up to `limit` bytes.
    pub async fn get(
        &self,
        addr: SocketAddr,
        name: &CertName,
        host: &str,
        target: &str,
        limit: usize,
    ) -> Result<Exchange, RequestError> {
        let uri: http::Uri = target.parse().map_err(|_| RequestError::BadTarget {
            target: target.to_owned(),
        })?;
        let request = Request::get(uri)
            .header(HOST, host)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|_| RequestError::BadTarget {
                target: target.to_owned(),
            })?;
        let (tls, session) = self.handshake(addr, name, Versions::Current).await?;
        let timeout = self.timeout;
        let exchange = async {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|source| RequestError::Http { addr, source })?;
            let driver = tokio::spawn(conn);
            let result = async {
                let response = send
                    .send_request(request)
                    .await
                    .map_err(|source| RequestError::Http { addr, source })?;
                let (parts, body) = response.into_parts();
                let body = match Limited::new(body, limit).collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) => {
                        if e.downcast_ref::<LengthLimitError>().is_some() {
                            return Err(RequestError::TooLarge { addr, limit });
                        }
                        match e.downcast::<hyper::Error>() {
                            Ok(source) => {
                                return Err(RequestError::Http {
                                    addr,
                                    source: *source,
                                });
                            }
                            Err(_) => return Err(RequestError::TooLarge { addr, limit }),
                        }
                    }
                };
                Ok((parts, body))
            }
            .await;
            driver.abort();
            result
        };
        let (parts, body) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(RequestError::Timeout { addr, timeout }),
            Ok(result) => result?,
        };
        Ok(Exchange {
            addr,
            session,
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// GET `url` as a homeserver fetches a well-known file: every address of the host tried in
    /// order until one answers, the certificate required to be acceptable, redirects followed
    /// up to [`REDIRECT_LIMIT`].
    pub async fn fetch(&self, dns: &Dns, url: &HttpsUrl, limit: usize) -> Fetch {
        let mut redirects = Vec::new();
        let result = self.follow(dns, url, limit, &mut redirects).await;
        Fetch {
            url: url.to_string(),
            redirects,
            result,
        }
    }

    async fn follow(
        &self,
        dns: &Dns,
        url: &HttpsUrl,
        limit: usize,
        redirects: &mut Vec<Redirect>,
    ) -> Result<Exchange, FetchError> {
        let mut current = url.clone();
        let mut seen = vec![current.to_string()];
        loop {
            let exchange = self.fetch_once(dns, &current, limit).await?;
            let location = match exchange.header(LOCATION.as_str()) {
                Some(location) if is_redirect(exchange.status) => location.to_owned(),
                // A 3xx without Location is a final answer, as in browsers.
                _ => return Ok(exchange),
            };
            redirects.push(Redirect {
                from: current.to_string(),
                status: exchange.status.as_u16(),
                location: location.clone(),
            });
            let next = current
                .join(&location)
                .map_err(|reason| FetchError::BadRedirect { location, reason })?;
            if seen.contains(&next.to_string()) {
                return Err(FetchError::RedirectLoop {
                    url: next.to_string(),
                });
            }
            if redirects.len() > REDIRECT_LIMIT {
                return Err(FetchError::TooManyRedirects {
                    limit: REDIRECT_LIMIT,
                });
            }
            seen.push(next.to_string());
            current = next;
        }
    }

    async fn fetch_once(
        &self,
        dns: &Dns,
        url: &HttpsUrl,
        limit: usize,
    ) -> Result<Exchange, FetchError> {
        let host = url.authority.host_str();
        let ips = match url.authority.ip() {
            Some(ip) => vec![ip],
            None => {
                dns.addresses(&host)
                    .await
                    .map_err(|source| FetchError::Resolve {
                        host: host.clone(),
                        source,
                    })?
                    .ips
            }
        };
        let name = CertName::of(&url.authority);
        let mut errors = Vec::new();
        for ip in ips {
            let addr = SocketAddr::new(ip, url.port());
            match self
                .get(addr, &name, url.authority.as_str(), &url.path, limit)
                .await
            {
                Ok(exchange) => {
                    if !exchange.session.acceptable(SystemTime::now()) {
                        return Err(FetchError::Certificate {
                            host,
                            addr,
                            session: Box::new(exchange.session),
                        });
                    }
                    return Ok(exchange);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(FetchError::Unreachable { host, errors })
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

struct LeafText {
    subject: String,
    issuer: String,
    not_before: Option<SystemTime>,
}

fn parse_leaf(der: &CertificateDer<'_>) -> LeafText {
    use x509_parser::prelude::*;
    match X509Certificate::from_der(der.as_ref()) {
        Ok((_, cert)) => LeafText {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: u64::try_from(cert.validity().not_before.timestamp())
                .ok()
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        },
        Err(e) => LeafText {
            subject: format!("<unparsable certificate: {e}>"),
            issuer: String::new(),
            not_before: None,
        },
    }
}

fn describe_cert_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the chain does not lead to a trusted root (unknown issuer, or the intermediate certificates are missing)".into()
        }
        rustls::Error::InvalidCertificate(C::BadSignature) => {
            "a signature in the chain does not verify".into()
        }
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the handshake signature (the server holds the key) but leaves the chain and the
/// name to [`Client::assess`], right after the handshake.
#[derive(Debug)]
struct DeferredVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DeferredVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
