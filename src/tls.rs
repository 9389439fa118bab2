//! TLS: the certificates served and the rustls configuration of every TLS listener.
//!
//! Owns certificate loading (PEM files, or a self-signed certificate for local trials), the
//! SNI-to-certificate map with a default for clients that send no SNI (IP-literal server names),
//! and the `rustls::ServerConfig` shared by 443 and 8448: TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`, aws-lc-rs as the only crypto provider. The certificate set sits behind an
//! `ArcSwap` ([`Resolver::swap`]) so that a renewed or reloaded set can replace the old one
//! without touching open connections. Nothing here speaks HTTP.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{CertFiles, CertSource, Tls, covers};

/// ALPN protocols offered to clients, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "{path} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks, leaf first)"
    )]
    NoCertificate { path: PathBuf },
    #[error("{path}: the key does not fit the rustls provider: {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{cert}: the certificate does not match the private key in {key}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: the leaf certificate cannot be parsed: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("cannot generate a self-signed certificate for {names:?}: {source}")]
    SelfSigned {
        names: Vec<String>,
        #[source]
        source: rcgen::Error,
    },
    #[error("rustls configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// One certificate with the names it covers, as read from its leaf.
#[derive(Clone)]
pub struct Served {
    pub key: Arc<CertifiedKey>,
    /// DNS names and IP addresses from the subjectAltName extension, lower case.
    pub names: Vec<String>,
    pub not_after: Option<SystemTime>,
    /// Where it came from, for messages.
    pub origin: String,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("names", &self.names)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The certificates served, looked up by SNI.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    certs: Vec<Served>,
}

impl CertSet {
    /// `certs[0]` is the default for clients without SNI or with an unknown name.
    pub fn new(certs: Vec<Served>) -> Option<Self> {
        if certs.is_empty() {
            return None;
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => {
                        wildcard.entry(suffix.to_owned()).or_insert(i);
                    }
                    None => {
                        exact.entry(name.clone()).or_insert(i);
                    }
                }
            }
        }
        Some(CertSet {
            exact,
            wildcard,
            certs,
        })
    }

    pub fn certs(&self) -> &[Served] {
        &self.certs
    }

    /// The certificate for an SNI name; the default one when nothing matches.
    pub fn pick(&self, sni: Option<&str>) -> &Served {
        let index = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                name.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            })
        });
        &self.certs[index.unwrap_or(0)]
    }

    /// Configured names that no served certificate covers.
    pub fn uncovered<'a>(&self, names: &'a [String]) -> Vec<&'a str> {
        names
            .iter()
            .filter(|n| {
                !self
                    .certs
                    .iter()
                    .any(|c| c.names.iter().any(|cn| covers(cn, n)))
            })
            .map(String::as_str)
            .collect()
    }
}

/// What an admin should hear about a loaded certificate set: names in `tls.names` that no
/// certificate covers, and certificates that expired or expire within 14 days.
pub fn warnings(set: &CertSet, tls: &Tls, now: SystemTime) -> Vec<String> {
    let mut out: Vec<String> = set
        .uncovered(&tls.names)
        .into_iter()
        .map(|name| {
            format!("no certificate covers `{name}`: clients asking for it get the default certificate and fail verification")
        })
        .collect();
    for cert in set.certs() {
        let Some(not_after) = cert.not_after else {
            continue;
        };
        match not_after.duration_since(now) {
            Err(_) => out.push(format!("certificate {} has expired", cert.origin)),
            Ok(left) if left < std::time::Duration::from_secs(14 * 86400) => out.push(format!(
                "certificate {} expires in {} day(s)",
                cert.origin,
                left.as_secs() / 86400
            )),
            Ok(_) => {}
        }
    }
    out
}

/// The rustls certificate resolver: reads the current [`CertSet`] on every handshake.
///
/// Empty until the first certificate exists (an ACME deployment before its first order
/// completes): handshakes then fail with a TLS alert rather than present a certificate that
/// every verifying peer would refuse anyway.
#[derive(Debug, Default)]
pub struct Resolver {
    current: ArcSwapOption<CertSet>,
}

impl Resolver {
    pub fn new(set: Option<CertSet>) -> Arc<Self> {
        Arc::new(Resolver {
            current: ArcSwapOption::from(set.map(Arc::new)),
        })
    }

    /// Replaces the served certificates; handshakes already done keep theirs.
    pub fn swap(&self, set: CertSet) {
        self.current.store(Some(Arc::new(set)));
    }

    pub fn current(&self) -> Option<Arc<CertSet>> {
        self.current.load_full()
    }

    /// True once there is a certificate to serve.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        current
            .as_ref()
            .map(|set| set.pick(hello.server_name()).key.clone())
    }
}

/// The process's crypto provider: aws-lc-rs, and nothing else.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads the certificates a config names; `None` for ACME, whose certificates arrive later.
pub fn load(tls: &Tls) -> Result<Option<CertSet>, TlsError> {
    let provider = provider();
    let certs = match &tls.source {
        CertSource::Files(pairs) => pairs
            .iter()
            .map(|p| load_pair(p, &provider))
            .collect::<Result<Vec<_>, _>>()?,
        CertSource::SelfSigned => vec![self_signed(&tls.names, &provider)?],
        CertSource::Acme(_) => return Ok(None),
    };
    // `new` is None only for an empty list, which config validation rules out.
    CertSet::new(certs)
        .map(Some)
        .ok_or_else(|| TlsError::Config(rustls::Error::General("no certificate configured".into())))
}

fn load_pair(files: &CertFiles, provider: &CryptoProvider) -> Result<Served, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect())
        .map_err(|source| TlsError::Read {
            path: files.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Read {
        path: files.key.clone(),
        source,
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            path: files.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            });
        }
        // Unknown: the provider cannot tell; the handshake will.
        Err(_) => {}
    }
    served(certified, &files.cert)
}

/// A certificate from one PEM bundle: the private key (PKCS#8) first, then the chain, leaf
/// first. This is how the ACME cache stores what the CA issued.
pub fn from_pem_bundle(pem: &[u8], origin: &Path) -> Result<Served, TlsError> {
    let read_err = |source| TlsError::Read {
        path: origin.to_owned(),
        source,
    };
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(read_err)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: origin.to_owned(),
        });
    }
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            path: origin.to_owned(),
            source,
        })?;
    served(CertifiedKey::new(chain, signing), origin)
}

fn served(certified: CertifiedKey, path: &Path) -> Result<Served, TlsError> {
    let (names, not_after) =
        leaf_facts(&certified.cert[0]).map_err(|message| TlsError::BadCertificate {
            path: path.to_owned(),
            message,
        })?;
    Ok(Served {
        key: Arc::new(certified),
        names,
        not_after,
        origin: path.display().to_string(),
    })
}

/// Names (subjectAltName DNS and IP entries) and expiry of a leaf certificate.
pub fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, Option<SystemTime>), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
    Ok((names, not_after))
}

/// A certificate for `names`, signed by itself, generated in memory at start.
pub fn self_signed(names: &[String], provider: &CryptoProvider) -> Result<Served, TlsError> {
    let err = |source| TlsError::SelfSigned {
        names: names.to_vec(),
        source,
    };
    let generated = rcgen::generate_simple_self_signed(names.to_vec()).map_err(err)?;
    let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
        .map_err(|e| err(rcgen::Error::PemError(e.to_string())))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            path: PathBuf::from("<self-signed>"),
            source,
        })?;
    let certified = CertifiedKey::new(vec![generated.cert.der().clone()], signing);
    let mut s = served(certified, Path::new("<self-signed>"))?;
    s.origin = "self-signed".into();
    Ok(s)
}

/// The rustls configuration of every TLS listener, reading certificates from `resolver`.
pub fn server_config(resolver: Arc<Resolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Stateless resumption tickets make reconnecting clients and servers cheap.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Served {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        self_signed(&names, &provider()).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let set = CertSet::new(vec![
            cert(&["example.com"]),
            cert(&["matrix.example.org", "*.example.net"]),
        ])
        .unwrap();
        assert_eq!(set.pick(Some("example.com")).names, vec!["example.com"]);
        assert_eq!(
            set.pick(Some("MATRIX.example.org")).names[0],
            "matrix.example.org"
        );
        assert_eq!(
            set.pick(Some("a.example.net")).names[0],
            "matrix.example.org"
        );
        assert_eq!(set.pick(Some("unknown.test")).names, vec!["example.com"]);
        assert_eq!(set.pick(None).names, vec!["example.com"]);
        let names = vec![
            "example.com".to_string(),
            "x.example.net".into(),
            "nope.test".into(),
        ];
        assert_eq!(set.uncovered(&names), vec!["nope.test"]);
    }

    #[test]
    fn self_signed_lists_ip_names() {
        let c = cert(&["localhost", "127.0.0.1"]);
        assert_eq!(c.names, vec!["localhost", "127.0.0.1"]);
        assert!(c.not_after.is_some());
    }
}
