//! `matrix-edge check`: a federation tester that resolves, connects and verifies exactly like a
//! remote homeserver, and says what to fix.
//!
//! Owns the probes run against every target [`crate::discovery`] finds (TLS, certificate,
//! version, signing keys, path integrity), the client-side discovery checks
//! (`/.well-known/matrix/client` and `/support`), the [`Report`] with its stable `--json`
//! schema (documented in `docs/check.md`), the text rendering, and the exit-code decision.
//!
//! Must not: change anything anywhere. It only sends GET requests that any stranger on the
//! internet could send, never signs a request, never follows a redirect on a federation
//! endpoint (homeservers follow none), and never reads the proxy's own configuration: it sees
//! the deployment from outside, as a remote server does.

pub mod client;
pub mod keys;
mod probe;
pub mod render;
mod resolution;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;

use crate::config::ServerName;
use crate::discovery::{self, Net, ResolverSource, Step, Target};

pub use probe::PATH_PROBE;

/// The version of the `--json` schema; bumped only on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Certificates expiring sooner than this get a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86400);

/// How the check reaches the network.
#[derive(Clone, Debug)]
pub struct Options {
    pub resolver: ResolverSource,
    /// Trusted in addition to the system roots (`--ca`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// For each DNS query, connect, handshake and request.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resolver: ResolverSource::System,
            extra_roots: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a `--ca` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no PEM certificate")]
    Empty { path: PathBuf },
}

/// Reads the PEM certificates of a `--ca` file.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|source| CaError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CaError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// ok / warning / failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warning,
    Failure,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failure => "failure",
        }
    }
}

/// The stable identifier of each check (`id` in `--json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckId {
    ServerName,
    TrustStore,
    WellKnownServer,
    WellKnownRedirect,
    WellKnownCache,
    Srv,
    SrvTarget,
    Address,
    Targets,
    Connect,
    CertificateTrust,
    CertificateName,
    CertificateExpiry,
    TlsVersion,
    Alpn,
    FederationVersion,
    ServerKeys,
    KeysServerName,
    KeysValidity,
    KeysSignature,
    PathIntegrity,
    WellKnownClient,
    ClientCors,
    ClientBaseUrl,
    WellKnownSupport,
}

impl CheckId {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::ServerName => "server_name",
            CheckId::TrustStore => "trust_store",
            CheckId::WellKnownServer => "well_known_server",
            CheckId::WellKnownRedirect => "well_known_redirect",
            CheckId::WellKnownCache => "well_known_cache",
            CheckId::Srv => "srv",
            CheckId::SrvTarget => "srv_target",
            CheckId::Address => "address",
            CheckId::Targets => "targets",
            CheckId::Connect => "connect",
            CheckId::CertificateTrust => "certificate_trust",
            CheckId::CertificateName => "certificate_name",
            CheckId::CertificateExpiry => "certificate_expiry",
            CheckId::TlsVersion => "tls_version",
            CheckId::Alpn => "alpn",
            CheckId::FederationVersion => "federation_version",
            CheckId::ServerKeys => "server_keys",
            CheckId::KeysServerName => "keys_server_name",
            CheckId::KeysValidity => "keys_validity",
            CheckId::KeysSignature => "keys_signature",
            CheckId::PathIntegrity => "path_integrity",
            CheckId::WellKnownClient => "well_known_client",
            CheckId::ClientCors => "client_cors",
            CheckId::ClientBaseUrl => "client_base_url",
            CheckId::WellKnownSupport => "well_known_support",
        }
    }

    /// Whether the check is about server-server federation (the rest is client discovery).
    pub fn is_federation(self) -> bool {
        !matches!(
            self,
            CheckId::WellKnownClient
                | CheckId::ClientCors
                | CheckId::ClientBaseUrl
                | CheckId::WellKnownSupport
        )
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub id: CheckId,
    pub status: Status,
    /// What the check looked at: a target address, a URL; `None` for the whole server.
    pub subject: Option<String>,
    pub message: String,
    /// The likely cause and the fix; present on warnings and failures.
    pub hint: Option<String>,
}

impl Check {
    pub fn ok(id: CheckId, subject: Option<String>, message: impl Into<String>) -> Check {
        Check {
            id,
            status: Status::Ok,
            subject,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(
        id: CheckId,
        subject: Option<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            id,
            status: Status::Warning,
            subject,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn failure(
        id: CheckId,
        subject: Option<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            id,
            status: Status::Failure,
            subject,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// The overall outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed.
    Ok,
    /// Nothing failed, but something deserves attention.
    Warnings,
    /// At least one check failed.
    Failed,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub warning: usize,
    pub failure: usize,
}

/// What discovery did, for the report. The default is "nothing was done".
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiscoveryReport {
    /// The `m.server` value used, when the well-known file delegated.
    pub delegated_to: Option<String>,
    /// The `/.well-known/matrix/server` lookup; `None` when the rules skip it.
    pub well_known: Option<WellKnownReport>,
    pub steps: Vec<Step>,
    pub targets: Vec<Target>,
}

/// The `/.well-known/matrix/server` lookup, for machines.
#[derive(Clone, Debug, Serialize)]
pub struct WellKnownReport {
    pub url: String,
    /// Every redirect followed, in order.
    pub redirects: Vec<discovery::https::Redirect>,
    /// Final HTTP status; `None` when nothing answered.
    pub status: Option<u16>,
    pub content_type: Option<String>,
    /// The `m.server` value, when valid.
    pub m_server: Option<String>,
    /// Cache headers and what Synapse makes of them; only for a 200.
    pub cache: Option<discovery::wellknown::CachePolicy>,
    /// Why nothing usable came back, when that is the case.
    pub error: Option<String>,
}

impl WellKnownReport {
    fn of(lookup: &discovery::wellknown::Lookup) -> WellKnownReport {
        WellKnownReport {
            url: lookup.url.clone(),
            redirects: lookup.redirects.clone(),
            status: lookup.response.as_ref().map(|r| r.status.as_u16()),
            content_type: lookup.content_type().map(str::to_owned),
            m_server: lookup.outcome.delegated().map(|d| d.as_str().to_owned()),
            cache: lookup.cache.clone(),
            error: lookup.error.as_ref().map(|e| e.to_string()),
        }
    }
}

/// What one target answered.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    #[serde(flatten)]
    pub target: Target,
    /// `None` when no TLS session came up.
    pub tls: Option<discovery::https::Session>,
    /// Whether a TLS 1.2-only client could connect; `None` when not tried.
    pub tls12: Option<bool>,
    /// `server` of `/_matrix/federation/v1/version`.
    pub server: Option<ServerVersion>,
    pub keys: Option<keys::ServerKeys>,
    /// Status of the path-integrity probe.
    pub path_probe_status: Option<u16>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerVersion {
    pub name: Option<String>,
    pub version: Option<String>,
}

/// The whole result; serialised as the `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub server_name: String,
    /// Unix seconds.
    pub checked_at: u64,
    pub verdict: Verdict,
    /// No federation check failed.
    pub federation_ok: bool,
    /// No client-discovery check failed.
    pub client_ok: bool,
    pub counts: Counts,
    pub discovery: DiscoveryReport,
    pub targets: Vec<TargetReport>,
    pub client: client::ClientReport,
    pub checks: Vec<Check>,
}

impl Report {
    fn assemble(
        name: &ServerName,
        discovery: DiscoveryReport,
        targets: Vec<TargetReport>,
        client: client::ClientReport,
        checks: Vec<Check>,
    ) -> Report {
        let mut counts = Counts::default();
        for c in &checks {
            match c.status {
                Status::Ok => counts.ok += 1,
                Status::Warning => counts.warning += 1,
                Status::Failure => counts.failure += 1,
            }
        }
        let failed = |federation: bool| {
            checks
                .iter()
                .any(|c| c.status == Status::Failure && c.id.is_federation() == federation)
        };
        let verdict = if counts.failure > 0 {
            Verdict::Failed
        } else if counts.warning > 0 {
            Verdict::Warnings
        } else {
            Verdict::Ok
        };
        Report {
            schema_version: SCHEMA_VERSION,
            server_name: name.as_str().to_owned(),
            checked_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            verdict,
            federation_ok: !failed(true),
            client_ok: !failed(false),
            counts,
            discovery,
            targets,
            client,
            checks,
        }
    }

    /// The process exit code: 0 when nothing failed, 1 otherwise. (Usage errors, 2, never get
    /// this far.)
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Verdict::Ok | Verdict::Warnings => 0,
            Verdict::Failed => 1,
        }
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Failure)
    }

    /// Logs the report through `tracing`: failures as errors, warnings as warnings, one summary
    /// line. For `run`'s preflight, where there is no terminal to print to.
    pub fn log(&self) {
        for c in &self.checks {
            let subject = c.subject.as_deref().unwrap_or("");
            let hint = c.hint.as_deref().unwrap_or("");
            match c.status {
                Status::Ok => {}
                Status::Warning => tracing::warn!(
                    check = c.id.as_str(),
                    subject,
                    hint,
                    "preflight: {}",
                    c.message
                ),
                Status::Failure => tracing::error!(
                    check = c.id.as_str(),
                    subject,
                    hint,
                    "preflight: {}",
                    c.message
                ),
            }
        }
        tracing::info!(
            server_name = %self.server_name,
            ok = self.counts.ok,
            warnings = self.counts.warning,
            failures = self.counts.failure,
            "preflight check: {}",
            render::summary(self)
        );
    }
}

/// Checks `name` from outside, as a remote homeserver and a client would see it.
pub async fn check(name: &ServerName, options: &Options) -> Report {
    let mut checks = vec![server_name_check(name)];
    let roots = trust_anchors(options, &mut checks);
    let net = match Net::new(&options.resolver, roots, options.timeout) {
        Ok(net) => net,
        Err(e) => {
            checks.push(Check::failure(
                CheckId::Address,
                None,
                format!("cannot set up DNS and TLS for the check: {e}"),
                "give a DNS server explicitly with --resolver IP:PORT, or fix /etc/resolv.conf",
            ));
            return Report::assemble(
                name,
                DiscoveryReport::default(),
                Vec::new(),
                client::ClientReport::default(),
                checks,
            );
        }
    };

    let ((resolution, targets, federation_checks), (client_report, client_checks)) =
        tokio::join!(federation(name, &net), client::check(name, &net));
    checks.extend(federation_checks);
    checks.extend(client_checks);

    Report::assemble(
        name,
        DiscoveryReport {
            delegated_to: resolution.delegated.as_ref().map(|d| d.as_str().to_owned()),
            well_known: resolution.well_known.as_ref().map(WellKnownReport::of),
            steps: resolution.steps.clone(),
            targets: resolution.targets.clone(),
        },
        targets,
        client_report,
        checks,
    )
}

/// Discovery, then every target probed at once; results in discovery order.
async fn federation(
    name: &ServerName,
    net: &Net,
) -> (discovery::Resolution, Vec<TargetReport>, Vec<Check>) {
    let resolution = discovery::resolve(name, net).await;
    let mut checks = resolution::discovery_checks(&resolution);
    // A JoinSet aborts the probes if the caller gives up on the check.
    let mut probes = tokio::task::JoinSet::new();
    let mut order = Vec::new();
    for target in &resolution.targets {
        let (target, net, name) = (target.clone(), net.clone(), name.clone());
        let handle = probes.spawn(async move { probe::probe(&target, &net, &name).await });
        order.push(handle.id());
    }
    let mut done = Vec::new();
    while let Some(joined) = probes.join_next_with_id().await {
        match joined {
            Ok((id, result)) => done.push((id, Ok(result))),
            Err(e) => done.push((e.id(), Err(e.to_string()))),
        }
    }
    let mut targets = Vec::new();
    for (id, target) in order.iter().zip(&resolution.targets) {
        let Some(i) = done.iter().position(|(done_id, _)| done_id == id) else {
            continue;
        };
        match done.swap_remove(i).1 {
            Ok((report, target_checks)) => {
                targets.push(report);
                checks.extend(target_checks);
            }
            Err(e) => checks.push(Check::failure(
                CheckId::Connect,
                Some(target.address.to_string()),
                format!("the probe did not complete: {e}"),
                "this is a bug in matrix-edge check",
            )),
        }
    }
    (resolution, targets, checks)
}

/// `run`'s preflight: waits until `certificates_ready` says the listeners serve a certificate
/// (polled each second, at most `wait`), checks `name` once from outside, and logs the report
/// through `tracing`. `None` when the certificates did not come in time. Meant to be spawned
/// after the listeners are up; it sends only what [`check`] sends.
pub async fn preflight(
    name: ServerName,
    options: Options,
    certificates_ready: impl Fn() -> bool + Send,
    wait: Duration,
) -> Option<Report> {
    let deadline = tokio::time::Instant::now() + wait;
    while !certificates_ready() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                server_name = %name,
                "preflight check skipped: no certificate within {}",
                humantime::format_duration(wait)
            );
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1).min(wait)).await;
    }
    let report = check(&name, &options).await;
    report.log();
    Some(report)
}

fn server_name_check(name: &ServerName) -> Check {
    if name.has_upper_case() {
        return Check::warning(
            CheckId::ServerName,
            None,
            format!("`{name}` has upper-case letters"),
            "server names are case-sensitive in user IDs while DNS is not; the spec advises lower case",
        );
    }
    if name.as_str().len() > 230 {
        return Check::warning(
            CheckId::ServerName,
            None,
            format!("`{name}` is {} characters long", name.as_str().len()),
            "the spec advises at most 230 characters, so user IDs stay under 255",
        );
    }
    Check::ok(
        CheckId::ServerName,
        None,
        format!("`{name}` is a valid server name"),
    )
}

/// The system roots plus `--ca`, as a homeserver on this host trusts.
fn trust_anchors(options: &Options, checks: &mut Vec<Check>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (system, _) = roots.add_parsable_certificates(native.certs);
    let (extra, bad_extra) = roots.add_parsable_certificates(options.extra_roots.iter().cloned());
    if system == 0 {
        checks.push(Check::warning(
            CheckId::TrustStore,
            None,
            format!(
                "no system root certificates could be loaded{}",
                native
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            "install the ca-certificates package; only --ca roots are trusted now, so public certificates will look untrusted",
        ));
    } else if bad_extra > 0 {
        checks.push(Check::warning(
            CheckId::TrustStore,
            None,
            format!("{bad_extra} --ca certificate(s) could not be used as roots"),
            "give CA certificates (PEM), not leaf certificates or keys",
        ));
    } else {
        checks.push(Check::ok(
            CheckId::TrustStore,
            None,
            format!("{system} system root(s) and {extra} --ca root(s) trusted"),
        ));
    }
    roots
}

#[cfg(test)]
mod tests;
