//! Configuration: one TOML file, read once, turned into validated types.
//!
//! Two layers: [`raw`] mirrors the file (serde, unknown keys refused, every field spanned), and
//! [`Config`] holds what the rest of the proxy uses: parsed addresses, durations, sizes, server
//! names and pre-rendered well-known bodies. A TOML syntax error, an unknown key or a wrong type
//! stops parsing at the first one (the TOML parser's limit); past that, every semantic problem is
//! reported at once, each with its key, its line where it has one, and what would be valid. This module reads files only to load the config
//! itself; certificates are read by `tls`.

mod raw;
pub mod server_name;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;

pub use server_name::{Host, ServerName};
pub use units::ByteSize;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server_name: ServerName,
    pub backend: Backend,
    pub listen: Listen,
    pub tls: Tls,
    pub well_known: WellKnown,
    pub limits: Limits,
    pub forward: Forward,
    pub allow: Allow,
    /// Check the deployment from outside once certificates are served (`self_check`).
    pub self_check: bool,
    /// Threads serving connections, each with its own share of the connections (`workers`).
    pub workers: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendTarget {
    /// `http://host:port`; `authority` is `host:port` as written.
    Tcp { authority: String },
    /// `unix:/path`.
    Unix(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Backend {
    pub target: BackendTarget,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Listen {
    pub https: Vec<SocketAddr>,
    pub federation: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the served certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files; the first pair is the default for clients that send no SNI.
    Files(Vec<CertFiles>),
    /// One certificate generated at start for `Tls::names`.
    SelfSigned,
    /// One certificate for `Tls::names`, obtained and renewed by ACME.
    Acme(Acme),
}

/// Which ACME challenge proves control of the names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Answered on the TLS listeners (ALPN `acme-tls/1`); Let's Encrypt validates on 443.
    TlsAlpn01,
    /// Answered on the plain-HTTP listener; Let's Encrypt validates on 80.
    Http01,
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// The directory URL.
    pub directory: String,
    pub contact: Vec<String>,
    pub cache: PathBuf,
    pub challenge: Challenge,
    pub ca_roots: Option<PathBuf>,
}

impl Acme {
    /// Let's Encrypt, which validates only on ports 443 and 80.
    pub fn is_lets_encrypt(&self) -> bool {
        self.directory == LETS_ENCRYPT || self.directory == LETS_ENCRYPT_STAGING
    }
}

#[derive(Clone, Debug)]
pub struct Tls {
    /// Names the certificates are expected to cover (DNS names or IP addresses, no port).
    pub names: Vec<String>,
    pub source: CertSource,
    /// How often certificate files are checked for changes; zero turns the check off.
    pub watch_interval: Duration,
}

/// The three well-known files, rendered once at load so serving them is a copy of `Bytes`.
#[derive(Clone, Debug)]
pub struct WellKnown {
    pub server: Option<Bytes>,
    pub client: Option<Bytes>,
    pub support: Option<Bytes>,
    /// The delegated name from `well_known.server`, kept for checks and defaults.
    pub delegated: Option<ServerName>,
    pub max_age: Duration,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body: u64,
    pub max_header_size: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct Forward {
    pub trusted_proxies: Vec<IpNet>,
    pub extra_prefixes: Vec<String>,
}

/// Which networks may reach the homeserver's internal paths through the public listeners.
/// `None` means nobody; an empty list also means nobody.
#[derive(Clone, Debug, Default)]
pub struct Allow {
    pub synapse_admin: Option<Vec<IpNet>>,
    pub synapse_metrics: Option<Vec<IpNet>>,
    pub synapse_replication: Option<Vec<IpNet>>,
}

/// One finding about a config file: an error (it cannot run) or a warning (it runs but likely
/// cannot federate, or is unwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: `{}`: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "`{}`: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {} error(s):\n{}", .errors.len(), render_list(.path, .errors))]
    Invalid { path: PathBuf, errors: Vec<Finding> },
}

fn render_list(path: &Path, findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("  {}: {f}", path.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A loaded config and the warnings found while validating it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Finding>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|errors| ConfigError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }

    /// Validates config text; on failure returns the errors found.
    pub fn parse(text: &str) -> Result<Loaded, Vec<Finding>> {
        validate::validate(text)
    }
}

/// Whether a certificate name (possibly a `*.` wildcard) covers a host.
pub fn covers(cert_name: &str, host: &str) -> bool {
    if cert_name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (cert_name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && suffix.eq_ignore_ascii_case(rest)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
