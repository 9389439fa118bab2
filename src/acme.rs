//! ACME: one certificate for `tls.names`, obtained, cached, renewed and swapped into the
//! certificate resolver while the proxy serves.
//!
//! rustls-acme runs the protocol (account, order, challenges, renewal at two thirds of the
//! lifetime, backoff after failures). This module owns what it leaves to us: the cache on disk
//! (a private directory, files written atomically with mode 0600), deploying every certificate
//! it issues or loads into [`tls::Resolver`], answering the two challenge types through
//! [`AcmeHandle`], and one clear log line per failure naming the directory, the names and the
//! failing step. It never blocks start-up: a failing CA leaves the proxy serving its cached
//! certificate, or no certificate at all until the first order succeeds.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_acme::{AccountCache, AcmeConfig, CertCache, EventOk, UseChallenge};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{Acme, Challenge};
use crate::metrics::{AcmeOutcome, Metrics};
use crate::tls::{self, CertSet, Resolver};

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("tls.acme.ca_roots {path}: {message}")]
    CaRoots { path: PathBuf, message: String },
    #[error("tls.acme.cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ACME client TLS configuration: {0}")]
    Client(#[from] rustls::Error),
}

/// What the rest of the proxy needs from ACME while it runs.
#[derive(Clone)]
pub struct AcmeHandle {
    challenge_config: Arc<ServerConfig>,
    challenge_resolver: Arc<rustls_acme::ResolvesServerCertAcme>,
    challenge: Challenge,
}

impl fmt::Debug for AcmeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeHandle")
            .field("challenge", &self.challenge)
            .finish()
    }
}

impl AcmeHandle {
    /// The rustls configuration for `acme-tls/1` handshakes (TLS-ALPN-01 validation).
    pub fn tls_alpn_config(&self) -> Option<Arc<ServerConfig>> {
        (self.challenge == Challenge::TlsAlpn01).then(|| self.challenge_config.clone())
    }

    /// The key authorization for an HTTP-01 token, while that challenge is pending.
    pub fn http01_key_auth(&self, token: &str) -> Option<String> {
        self.challenge_resolver.get_http_01_key_auth(token)
    }
}

/// Starts ACME for `names`: loads the cache, then orders or renews in the background.
/// Returns the handle and the background task (abort it on shutdown).
pub fn start(
    acme: &Acme,
    names: &[String],
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
) -> Result<(AcmeHandle, JoinHandle<()>), AcmeError> {
    let client = client_config(acme)?;
    let cache = DiskCache::open(&acme.cache, resolver, metrics.clone(), names.to_vec())?;
    let challenge = match acme.challenge {
        Challenge::TlsAlpn01 => UseChallenge::TlsAlpn01,
        Challenge::Http01 => UseChallenge::Http01,
    };
    let mut state = AcmeConfig::new_with_client_config(names.to_vec(), client)
        .directory(&acme.directory)
        .contact(acme.contact.iter())
        .challenge_type(challenge)
        .cache_option(Some(cache.clone()))
        .state();
    let handle = AcmeHandle {
        challenge_config: state.challenge_rustls_config_with_provider(tls::provider()),
        challenge_resolver: state.resolver(),
        challenge: acme.challenge,
    };
    let directory = acme.directory.clone();
    let names = names.join(", ");
    info!(%directory, %names, cache = %acme.cache.display(), "ACME: starting");
    let task = tokio::spawn(async move {
        let mut failures: u32 = 0;
        // Ends only when the task is aborted at shutdown: the stream is endless by design.
        while let Some(event) = state.next().await {
            match event {
                Ok(EventOk::DeployedCachedCert) => {
                    metrics.acme_event(AcmeOutcome::loaded_from_cache);
                    cache.deploy_loaded();
                }
                Ok(EventOk::DeployedNewCert) => {
                    metrics.acme_event(AcmeOutcome::issued);
                    failures = 0;
                    info!(%directory, %names, "ACME: new certificate issued");
                }
                Ok(EventOk::CertCacheStore) => debug!("ACME: certificate stored in the cache"),
                Ok(EventOk::AccountCacheStore) => debug!("ACME: account key stored in the cache"),
                Err(rustls_acme::EventError::Order(e)) => {
                    metrics.acme_event(AcmeOutcome::failed);
                    // rustls-acme waits 2^n seconds (n capped at 16) before the next attempt.
                    let retry = Duration::from_secs(1 << failures.min(16));
                    failures += 1;
                    warn!(
                        %directory, %names, step = step_of(&e), error = %e, retry_in = ?retry,
                        "ACME: order for {names} at {directory} failed while {}: {e}; retrying in {retry:?}",
                        step_of(&e)
                    );
                }
                Err(e) => warn!(%directory, %names, error = ?e, "ACME: {e:?}"),
            }
        }
    });
    Ok((handle, task))
}

/// Which step of an order failed, in the words of the ACME protocol.
fn step_of(e: &rustls_acme::OrderError) -> &'static str {
    use rustls_acme::OrderError::*;
    match e {
        Acme(_) => "talking to the ACME server (directory, account, order or finalize)",
        Rcgen(_) => "generating the certificate request",
        BadOrder(_) => "processing the order (the server refused it)",
        BadAuth(_) => "validating a name (the server refused the challenge)",
        TooManyAttemptsAuth(_) => "waiting for a name to be validated",
        ProcessingTimeout(_) => "waiting for the certificate to be issued",
    }
}

/// The TLS client trust for the ACME server's own HTTPS: the public web roots, plus `ca_roots`.
fn client_config(acme: &Acme) -> Result<Arc<ClientConfig>, AcmeError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &acme.ca_roots {
        let err = |message: String| AcmeError::CaRoots {
            path: path.clone(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect())
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| err(e.to_string()))?;
        }
    }
    let config = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The ACME cache: a private directory holding the account key and the certificate, plus the
/// hook that deploys every certificate passing through it.
#[derive(Clone)]
struct DiskCache(Arc<CacheInner>);

struct CacheInner {
    dir: PathBuf,
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
    names: Vec<String>,
    /// The certificate last loaded from disk (path, PEM), deployed once rustls-acme accepts it.
    loaded: Mutex<Option<(PathBuf, Vec<u8>)>>,
}

impl DiskCache {
    fn open(
        dir: &Path,
        resolver: Arc<Resolver>,
        metrics: Arc<Metrics>,
        names: Vec<String>,
    ) -> Result<Self, AcmeError> {
        let err = |source| AcmeError::Cache {
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(cache = %dir.display(), mode = format!("{:o}", mode & 0o777), "the ACME cache holds private keys and is readable by others; restricting it to 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        Ok(DiskCache(Arc::new(CacheInner {
            dir: dir.to_owned(),
            resolver,
            metrics,
            names,
            loaded: Mutex::new(None),
        })))
    }

    fn deploy(&self, pem: &[u8], path: &Path) {
        match tls::from_pem_bundle(pem, path) {
            Ok(served) => {
                let expires = served
                    .not_after
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default();
                info!(names = ?served.names, %expires, "ACME: serving certificate");
                if let Some(set) = CertSet::new(vec![served]) {
                    self.0.metrics.certificates(&set, &self.0.names);
                    self.0.resolver.swap(set);
                }
            }
            Err(e) => warn!(error = %e, "ACME: the certificate cannot be served"),
        }
    }

    fn deploy_loaded(&self) {
        let loaded = self.0.loaded.lock().ok().and_then(|mut l| l.take());
        if let Some((path, pem)) = loaded {
            self.deploy(&pem, &path);
        }
    }

    async fn read(&self, name: String) -> std::io::Result<Option<Vec<u8>>> {
        let path = self.0.dir.join(name);
        let read = tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        });
        read.await.map_err(std::io::Error::other)?
    }

    async fn write(&self, name: String, bytes: Vec<u8>) -> std::io::Result<()> {
        let dir = self.0.dir.clone();
        let write = tokio::task::spawn_blocking(move || write_private(&dir, &name, &bytes));
        write.await.map_err(std::io::Error::other)?
    }
}

/// The cache's file names carry a fingerprint of the names (or contacts) and the directory URL,
/// so a changed config never picks up a certificate issued for another one.
/// The cache file holding the certificate for `domains` from `directory_url`: the account key
/// and the certificate live next to each other in `tls.acme.cache`.
pub fn certificate_file(domains: &[String], directory_url: &str) -> String {
    format!("certificate-{}.pem", fingerprint(domains, directory_url))
}

fn account_file(contact: &[String], directory_url: &str) -> String {
    format!("account-{}.key", fingerprint(contact, directory_url))
}

fn fingerprint(items: &[String], directory_url: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for item in items {
        ctx.update(item.as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(directory_url.as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a file readable only by its owner, atomically: a reader sees the old file or the new
/// one, never half of one, even if the process dies mid-write.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl CertCache for DiskCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let name = certificate_file(domains, directory_url);
        let pem = self.read(name.clone()).await?;
        if let (Some(pem), Ok(mut loaded)) = (&pem, self.0.loaded.lock()) {
            *loaded = Some((self.0.dir.join(name), pem.clone()));
        }
        Ok(pem)
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> std::io::Result<()> {
        // Serve it before writing it: a full disk must not keep a fresh certificate off the wire.
        let name = certificate_file(domains, directory_url);
        self.deploy(cert, &self.0.dir.join(&name));
        self.write(name, cert.to_vec()).await
    }
}

#[async_trait]
impl AccountCache for DiskCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        self.read(account_file(contact, directory_url)).await
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> std::io::Result<()> {
        self.write(account_file(contact, directory_url), account.to_vec())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        write_private(dir.path(), "a.pem", b"one").unwrap();
        write_private(dir.path(), "a.pem", b"two").unwrap();
        let meta = std::fs::metadata(dir.path().join("a.pem")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(dir.path().join("a.pem")).unwrap(), b"two");
        assert!(!dir.path().join(".a.pem.tmp").exists());
    }

    #[test]
    fn cache_directory_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("acme");
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        DiskCache::open(
            &cache,
            Resolver::new(None),
            Arc::new(Metrics::new()),
            Vec::new(),
        )
        .unwrap();
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn file_names_depend_on_names_and_directory() {
        let names = vec!["a.test".to_string(), "b.test".to_string()];
        let other = vec!["a.test".to_string()];
        assert_ne!(
            certificate_file(&names, "https://x/dir"),
            certificate_file(&other, "https://x/dir")
        );
        assert_ne!(
            certificate_file(&names, "https://x/dir"),
            certificate_file(&names, "https://y/dir")
        );
        assert_eq!(
            certificate_file(&names, "https://x/dir"),
            certificate_file(&names, "https://x/dir")
        );
    }
}
