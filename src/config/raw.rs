//! The config file as written: serde structs that mirror the TOML, every field spanned so that a
//! semantic error can still name its line. Nothing here decides what a value means; that is
//! `Config::from_raw`'s job.

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// The name in `@user:example.com`. Required.
    pub server_name: S<String>,
    /// Where the homeserver listens. Required.
    pub backend: S<RawBackend>,
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub well_known: RawWellKnown,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub forward: RawForward,
    #[serde(default)]
    pub allow: RawAllow,
    /// Once a certificate is served, run `matrix-edge check` against `server_name` and log the
    /// report. Default false.
    pub self_check: Option<S<bool>>,
    /// Threads serving connections. Default: one per CPU.
    pub workers: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    /// `http://host:port` or `unix:/path/to.sock`.
    pub url: S<String>,
    /// Time to open a connection to the backend. Default `"10s"`.
    pub connect_timeout: Option<S<String>>,
    /// Time from sending a request to receiving the response head. Default `"600s"`.
    pub response_timeout: Option<S<String>>,
    /// How long an idle keep-alive connection to the backend is kept. Default `"90s"`.
    pub pool_idle_timeout: Option<S<String>>,
    /// Idle keep-alive connections kept to the backend. Default 256.
    pub pool_max_idle: Option<S<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    /// Client traffic, well-known files, and federation delegated to 443. Default `["[::]:443"]`.
    pub https: Option<S<Vec<S<String>>>>,
    /// Server-server traffic. Default `["[::]:8448"]`.
    pub federation: Option<S<Vec<S<String>>>>,
    /// Plain HTTP: 301 to https for GET/HEAD, 403 otherwise. Default `["[::]:80"]`; `[]` turns it off.
    pub http: Option<S<Vec<S<String>>>>,
    /// `/health` and `/ready`. Off unless set; keep it on loopback or a Pod network (warned otherwise).
    pub admin: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// Names the certificates are expected to cover; a name no certificate covers is warned about
    /// at start. Default: the server name and the `m.server` host.
    pub names: Option<S<Vec<S<String>>>>,
    /// PEM certificate chain (leaf first). Goes with `key`.
    pub cert: Option<S<String>>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Goes with `cert`.
    pub key: Option<S<String>>,
    /// More certificate/key pairs; each is served for the names in its certificate.
    #[serde(default)]
    pub certificates: Vec<S<RawCertPair>>,
    /// Generate a self-signed certificate for `names` at start. For local trials only.
    pub self_signed: Option<S<bool>>,
    /// Get and renew one certificate for `names` by ACME.
    pub acme: Option<S<RawAcme>>,
    /// How often `cert`/`key` files are checked for changes on disk. Default `"10s"`; `"0s"`
    /// turns the check off.
    pub watch_interval: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    /// `"letsencrypt"`, `"letsencrypt-staging"`, or the https URL of an ACME directory.
    /// Default `"letsencrypt"`.
    pub directory: Option<S<String>>,
    /// Account contacts, e.g. `["mailto:admin@example.com"]`. Default: none.
    #[serde(default)]
    pub contact: Vec<S<String>>,
    /// Directory for the account key and certificates. Default `"/var/lib/matrix-edge/acme"`.
    pub cache: Option<S<String>>,
    /// `"tls-alpn-01"` (on the https listeners) or `"http-01"` (on the http listener).
    /// Default `"tls-alpn-01"`.
    pub challenge: Option<S<String>>,
    /// PEM file of extra roots to trust for the ACME server's own HTTPS (a private CA).
    pub ca_roots: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertPair {
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWellKnown {
    /// `m.server` in `/.well-known/matrix/server`: `host[:port]`. Absent: that file is a 404.
    pub server: Option<S<String>>,
    /// `m.homeserver.base_url` in `/.well-known/matrix/client`. Absent: that file is a 404.
    pub client: Option<S<String>>,
    /// `m.identity_server.base_url` in the client file.
    pub identity_server: Option<S<String>>,
    /// Extra namespaced keys merged into the client file, e.g. `"org.matrix.msc2965.authentication"`.
    pub client_extra: Option<S<toml::Table>>,
    /// `Cache-Control: max-age` of the three files. Default `"1h"`.
    pub max_age: Option<S<String>>,
    /// `/.well-known/matrix/support`.
    pub support: Option<S<RawSupport>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSupport {
    #[serde(default)]
    pub contacts: Vec<S<RawContact>>,
    pub support_page: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContact {
    pub role: S<String>,
    pub matrix_id: Option<S<String>>,
    pub email_address: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    /// Largest request body. Default `"50M"` (Synapse's `max_upload_size`).
    pub max_body: Option<S<String>>,
    /// Largest request head (request line and headers). Default `"64k"`.
    pub max_header_size: Option<S<String>>,
    /// Time a client has to finish the TLS handshake, and to send a complete request head. On
    /// HTTP/1.1 it also closes a keep-alive connection silent for that long. Default `"30s"`.
    pub header_read_timeout: Option<S<String>>,
    /// Time a connection (h1 or h2) with no request in flight is kept open. Default `"120s"`.
    pub idle_timeout: Option<S<String>>,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT. Default `"30s"`.
    pub shutdown_grace: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForward {
    /// Peers whose `X-Forwarded-For` is kept and appended to (addresses or CIDRs). Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
    /// More path prefixes forwarded on the https listeners, e.g. `"/_conduwuit/"`.
    #[serde(default)]
    pub extra_prefixes: Vec<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    /// Networks allowed to reach `/_synapse/admin` through the https listeners (federation
    /// listeners never forward it). Default: none.
    pub synapse_admin: Option<Vec<S<String>>>,
    /// Networks allowed to reach `/_synapse/metrics`. Default: none.
    pub synapse_metrics: Option<Vec<S<String>>>,
    /// Networks allowed to reach `/_synapse/replication`. Default: none.
    pub synapse_replication: Option<Vec<S<String>>>,
}
