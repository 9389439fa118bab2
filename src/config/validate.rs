//! Validation: from the raw TOML structs to a [`Config`], collecting every error and warning with
//! its key and line. Pure: reads no file and touches no socket.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use serde_json::{Map, Value, json};

use super::raw::{self, RawConfig, S};
use super::*;

/// Parses and validates config text into a [`Loaded`] config, or every error found.
pub(super) fn validate(text: &str) -> Result<Loaded, Vec<Finding>> {
    let lines = LineIndex::new(text);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        vec![Finding {
            line: e.span().map(|s| lines.line(s.start)),
            key: e.span().map(|s| key_at(text, s.start)).unwrap_or_default(),
            message: e.message().trim().to_owned(),
        }]
    })?;
    let mut v = Validator {
        lines,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let config = v.config(raw);
    match config {
        Some(config) if v.errors.is_empty() => Ok(Loaded {
            config,
            warnings: v.warnings,
        }),
        _ => Err(v.errors),
    }
}

/// The dotted key whose value or table starts at `offset`, read back from the text: serde
/// errors (wrong type, missing field) carry a span but no key path.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let header = |l: &str| -> Option<String> {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
    };
    if let Some(table) = header(line) {
        return table;
    }
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"')
        .to_owned();
    let table = text[..line_start].lines().rev().find_map(header);
    match table {
        Some(t) if !key.is_empty() => format!("{t}.{key}"),
        _ => key,
    }
}

/// Byte offset to 1-based line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

struct Validator {
    lines: LineIndex,
    errors: Vec<Finding>,
    warnings: Vec<Finding>,
}

const DEFAULT_HTTPS: &str = "[::]:443";
const DEFAULT_FEDERATION: &str = "[::]:8448";
const DEFAULT_HTTP: &str = "[::]:80";

impl Validator {
    fn finding(&self, span: Option<Range<usize>>, key: &str, message: String) -> Finding {
        Finding {
            line: span.map(|s| self.lines.line(s.start)),
            key: key.to_owned(),
            message,
        }
    }

    fn error(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let f = self.finding(span, key, message.into());
        self.errors.push(f);
    }

    fn warn(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let f = self.finding(span, key, message.into());
        self.warnings.push(f);
    }

    /// Applies `parse` to a spanned value, recording an error naming `key` on failure.
    fn check<T, U>(
        &mut self,
        key: &str,
        value: &S<T>,
        parse: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match parse(value.get_ref()) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.error(Some(value.span()), key, msg);
                None
            }
        }
    }

    fn duration(&mut self, key: &str, value: &Option<S<String>>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => self
                .check(key, v, |s| units::parse_duration(s))
                .unwrap_or(default),
        }
    }

    fn size(&mut self, key: &str, value: &Option<S<String>>, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) => self
                .check(key, v, |s| ByteSize::parse(s).map(|b| b.0))
                .unwrap_or(default),
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let server_name = self.check("server_name", &raw.server_name, |s| {
            ServerName::parse(s).map_err(|e| format!("{e}; e.g. \"example.com\""))
        });
        if let Some(name) = &server_name
            && name.has_upper_case()
        {
            self.warn(
                    Some(raw.server_name.span()),
                    "server_name",
                    "contains upper-case letters; server names are case-sensitive in user IDs, the spec advises lower case",
                );
        }
        let backend = self.backend(&raw.backend);
        let listen = self.listen(&raw.listen);
        let well_known = self.well_known(&raw.well_known);
        let tls = self.tls(&raw.tls, server_name.as_ref(), &well_known);
        let limits = self.limits(&raw.limits);
        let forward = self.forward(&raw.forward);
        let allow = self.allow(&raw.allow);
        if let (
            Some(listen),
            Some(Tls {
                source: CertSource::Acme(acme),
                ..
            }),
        ) = (&listen, &tls)
        {
            self.acme_listen_checks(&raw, listen, acme);
        }
        if let (Some(server_name), Some(listen), Some(wk)) = (&server_name, &listen, &well_known) {
            self.federation_warnings(&raw, server_name, listen, wk);
        }
        let workers = match &raw.workers {
            None => default_workers(),
            Some(v) => self
                .check("workers", v, |n| match usize::try_from(*n) {
                    Ok(n @ 1..=MAX_WORKERS) => Ok(n),
                    _ => Err(format!("must be from 1 to {MAX_WORKERS}")),
                })
                .unwrap_or(1),
        };
        Some(Config {
            server_name: server_name?,
            backend: backend?,
            listen: listen?,
            tls: tls?,
            well_known: well_known?,
            limits,
            forward,
            allow,
            self_check: raw
                .self_check
                .as_ref()
                .map(|s| *s.get_ref())
                .unwrap_or(false),
            workers,
        })
    }

    fn backend(&mut self, raw: &S<raw::RawBackend>) -> Option<Backend> {
        let b = raw.get_ref();
        let target = self.check("backend.url", &b.url, |url| parse_backend_url(url));
        let connect_timeout =
            self.duration("backend.connect_timeout", &b.connect_timeout, secs(10));
        let response_timeout =
            self.duration("backend.response_timeout", &b.response_timeout, secs(600));
        let pool_idle_timeout =
            self.duration("backend.pool_idle_timeout", &b.pool_idle_timeout, secs(90));
        let pool_max_idle = match &b.pool_max_idle {
            None => 256,
            Some(v) => self
                .check("backend.pool_max_idle", v, |n| {
                    usize::try_from(*n).map_err(|_| "must be 0 or more".to_owned())
                })
                .unwrap_or(256),
        };
        if response_timeout < secs(60)
            && let Some(v) = &b.response_timeout
        {
            self.warn(
                    Some(v.span()),
                    "backend.response_timeout",
                    "is under 60s; remote servers give /send_join and /state up to 600s, joins of large rooms will fail with 504",
                );
        }
        Some(Backend {
            target: target?,
            connect_timeout,
            response_timeout,
            pool_idle_timeout,
            pool_max_idle,
        })
    }

    fn addr_list(
        &mut self,
        key: &str,
        raw: &Option<S<Vec<S<String>>>>,
        default: &str,
    ) -> Vec<SocketAddr> {
        match raw {
            None => default.parse().into_iter().collect(),
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|a| self.check(key, a, |s| parse_listen_addr(s)))
                .collect(),
        }
    }

    fn listen(&mut self, raw: &raw::RawListen) -> Option<Listen> {
        let errors_before = self.errors.len();
        let https = self.addr_list("listen.https", &raw.https, DEFAULT_HTTPS);
        let federation = self.addr_list("listen.federation", &raw.federation, DEFAULT_FEDERATION);
        let http = self.addr_list("listen.http", &raw.http, DEFAULT_HTTP);
        let admin = raw
            .admin
            .as_ref()
            .and_then(|a| self.check("listen.admin", a, |s| parse_listen_addr(s)));
        if let (Some(addr), Some(raw_admin)) = (admin, &raw.admin)
            && !addr.ip().is_loopback()
        {
            self.warn(
                    Some(raw_admin.span()),
                    "listen.admin",
                    format!("{addr} is not a loopback address; the admin listener must not be public (fine inside a Pod network)"),
                );
        }
        if https.is_empty() && federation.is_empty() && self.errors.len() == errors_before {
            self.error(
                None,
                "listen",
                "both `https` and `federation` are empty: nothing would be served",
            );
        }
        // The same address twice would fail at bind time with a less helpful message.
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        let roles = [
            ("listen.https", &https),
            ("listen.federation", &federation),
            ("listen.http", &http),
        ];
        let mut duplicate = Vec::new();
        for (role, addrs) in roles {
            // Port 0 (any free port, used in tests) can appear many times.
            for addr in addrs.iter().filter(|a| a.port() != 0) {
                if let Some((_, other)) = seen.iter().find(|(a, _)| a == addr) {
                    duplicate.push(format!("{addr} is listed in both `{other}` and `{role}`"));
                } else {
                    seen.push((*addr, role));
                }
            }
        }
        if let Some(admin) = admin.filter(|a| a.port() != 0)
            && let Some((_, other)) = seen.iter().find(|(a, _)| *a == admin)
        {
            duplicate.push(format!(
                "{admin} is listed in both `{other}` and `listen.admin`"
            ));
        }
        for message in duplicate {
            self.error(None, "listen", message);
        }
        (self.errors.len() == errors_before).then_some(Listen {
            https,
            federation,
            http,
            admin,
        })
    }

    fn tls(
        &mut self,
        raw: &raw::RawTls,
        server_name: Option<&ServerName>,
        well_known: &Option<WellKnown>,
    ) -> Option<Tls> {
        let errors_before = self.errors.len();
        let watch_interval = self.duration("tls.watch_interval", &raw.watch_interval, secs(10));
        let names: Vec<String> = match &raw.names {
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|n| {
                    self.check("tls.names", n, |s| {
                        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
                            return Ok(ip.to_string());
                        }
                        let parsed = ServerName::parse(s)?;
                        if parsed.port().is_some() {
                            return Err(format!(
                                "`{s}` has a port; certificate names are host names only"
                            ));
                        }
                        Ok(parsed.host_str())
                    })
                })
                .collect(),
            None => {
                let mut names: Vec<String> =
                    server_name.map(|n| n.host_str()).into_iter().collect();
                if let Some(delegated) = well_known.as_ref().and_then(|w| w.delegated.as_ref()) {
                    let host = delegated.host_str();
                    if !names.contains(&host) {
                        names.push(host);
                    }
                }
                names
            }
        };
        let mut pairs = Vec::new();
        match (&raw.cert, &raw.key) {
            (Some(cert), Some(key)) => pairs.push(CertFiles {
                cert: PathBuf::from(cert.get_ref()),
                key: PathBuf::from(key.get_ref()),
            }),
            (Some(cert), None) => self.error(
                Some(cert.span()),
                "tls.cert",
                "is set without `tls.key`; give both, the chain and its private key",
            ),
            (None, Some(key)) => self.error(
                Some(key.span()),
                "tls.key",
                "is set without `tls.cert`; give both, the chain and its private key",
            ),
            (None, None) => {}
        }
        for pair in &raw.certificates {
            pairs.push(CertFiles {
                cert: PathBuf::from(pair.get_ref().cert.get_ref()),
                key: PathBuf::from(pair.get_ref().key.get_ref()),
            });
        }
        let self_signed = raw
            .self_signed
            .as_ref()
            .map(|s| *s.get_ref())
            .unwrap_or(false);
        let acme = raw.acme.as_ref().and_then(|a| self.acme(a));
        let chosen: Vec<&str> = [
            (!pairs.is_empty() || raw.cert.is_some() || raw.key.is_some())
                .then_some("`tls.cert`/`tls.key`/`tls.certificates`"),
            self_signed.then_some("`tls.self_signed`"),
            raw.acme.is_some().then_some("`[tls.acme]`"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if chosen.len() > 1 {
            let (key, label, span) = match &raw.acme {
                Some(a) => ("tls.acme", "`[tls.acme]`", Some(a.span())),
                None => (
                    "tls.self_signed",
                    "`tls.self_signed`",
                    raw.self_signed.as_ref().map(|s| s.span()),
                ),
            };
            let others: Vec<&str> = chosen.iter().copied().filter(|c| *c != label).collect();
            self.error(
                span,
                key,
                format!(
                    "cannot be combined with {}; choose one certificate source",
                    others.join(" and ")
                ),
            );
            return None;
        }
        if let Some(a) = &raw.acme {
            if let Some(ip) = names.iter().find(|n| n.parse::<std::net::IpAddr>().is_ok()) {
                self.error(
                    Some(a.span()),
                    "tls.names",
                    format!("`{ip}` is an IP address; ACME certificates here cover DNS names only"),
                );
            }
            let defaulted_from_bad_name = raw.names.is_none() && server_name.is_none();
            if names.is_empty() && !defaulted_from_bad_name {
                self.error(None, "tls.names", "is empty; list at least the server name");
            }
            return (self.errors.len() == errors_before).then_some(Tls {
                names,
                source: CertSource::Acme(acme?),
                watch_interval,
            });
        }
        let source = match (self_signed, pairs.is_empty()) {
            (true, true) => {
                if let Some(s) = &raw.self_signed {
                    self.warn(
                        Some(s.span()),
                        "tls.self_signed",
                        "a self-signed certificate is for local trials: other homeservers verify certificates and will refuse it",
                    );
                }
                Some(CertSource::SelfSigned)
            }
            (true, false) => {
                let span = raw.self_signed.as_ref().map(|s| s.span());
                self.error(
                    span,
                    "tls.self_signed",
                    "cannot be combined with certificate files; remove one of them",
                );
                None
            }
            (false, false) => Some(CertSource::Files(pairs)),
            // Half a pair was reported above; "no certificate" would tell them to set what they set.
            (false, true) if raw.cert.is_some() || raw.key.is_some() => None,
            (false, true) => {
                self.error(
                    None,
                    "tls",
                    "no certificate configured: add `[tls.acme]`, or set `tls.cert` and `tls.key` (PEM files), or `tls.self_signed = true` for a local trial",
                );
                None
            }
        };
        let defaulted_from_bad_name = raw.names.is_none() && server_name.is_none();
        if names.is_empty() && self.errors.len() == errors_before && !defaulted_from_bad_name {
            self.error(None, "tls.names", "is empty; list at least the server name");
        }
        (self.errors.len() == errors_before).then_some(Tls {
            names,
            source: source?,
            watch_interval,
        })
    }

    fn acme(&mut self, raw: &S<raw::RawAcme>) -> Option<Acme> {
        let a = raw.get_ref();
        let errors_before = self.errors.len();
        let directory = match &a.directory {
            None => Some(LETS_ENCRYPT.to_owned()),
            Some(d) => self.check("tls.acme.directory", d, |s| match s.as_str() {
                "letsencrypt" => Ok(LETS_ENCRYPT.to_owned()),
                "letsencrypt-staging" => Ok(LETS_ENCRYPT_STAGING.to_owned()),
                url => match url.parse::<http::Uri>() {
                    Ok(u) if u.scheme_str() == Some("https") && u.authority().is_some() => Ok(url.to_owned()),
                    _ => Err(format!("`{url}` is not \"letsencrypt\", \"letsencrypt-staging\" or an https:// directory URL")),
                },
            }),
        };
        let contact = a
            .contact
            .iter()
            .filter_map(|c| {
                self.check("tls.acme.contact", c, |s| match s.strip_prefix("mailto:") {
                    Some(mail) if mail.contains('@') && !mail.contains(char::is_whitespace) => {
                        Ok(s.clone())
                    }
                    _ => Err(format!(
                        "`{s}` must be a mailto: URL, e.g. \"mailto:admin@example.com\""
                    )),
                })
            })
            .collect();
        let cache = match &a.cache {
            None => PathBuf::from("/var/lib/matrix-edge/acme"),
            Some(c) => self
                .check("tls.acme.cache", c, |s| {
                    if s.is_empty() {
                        Err("must name a directory, e.g. \"/var/lib/matrix-edge/acme\"".to_owned())
                    } else {
                        Ok(PathBuf::from(s))
                    }
                })
                .unwrap_or_default(),
        };
        let challenge = match &a.challenge {
            None => Some(Challenge::TlsAlpn01),
            Some(c) => self.check("tls.acme.challenge", c, |s| match s.as_str() {
                "tls-alpn-01" => Ok(Challenge::TlsAlpn01),
                "http-01" => Ok(Challenge::Http01),
                other => Err(format!("`{other}` is not a challenge; use \"tls-alpn-01\" or \"http-01\" (DNS-01 is not supported)")),
            }),
        };
        let ca_roots = a.ca_roots.as_ref().map(|p| PathBuf::from(p.get_ref()));
        (self.errors.len() == errors_before).then_some(Acme {
            directory: directory?,
            contact,
            cache,
            challenge: challenge?,
            ca_roots,
        })
    }

    /// The challenge must be answerable on the listeners this config has.
    fn acme_listen_checks(&mut self, raw: &RawConfig, listen: &Listen, acme: &Acme) {
        let span = raw.tls.acme.as_ref().map(|a| a.span());
        let challenge_span = raw
            .tls
            .acme
            .as_ref()
            .and_then(|a| a.get_ref().challenge.as_ref().map(|c| c.span()))
            .or(span.clone());
        match acme.challenge {
            Challenge::Http01 if listen.http.is_empty() => self.error(
                challenge_span,
                "tls.acme.challenge",
                "\"http-01\" is answered on the plain-HTTP listener, and `listen.http` is empty",
            ),
            Challenge::Http01 if acme.is_lets_encrypt() && !listen.http.iter().any(|a| a.port() == 80 || a.port() == 0) => self.warn(
                challenge_span,
                "tls.acme.challenge",
                "Let's Encrypt validates http-01 on port 80 only, and no http listener uses port 80 (fine behind a port forward)",
            ),
            Challenge::TlsAlpn01 if listen.https.is_empty() && listen.federation.is_empty() => {}
            Challenge::TlsAlpn01 if acme.is_lets_encrypt() && !listen.https.iter().any(|a| a.port() == 443 || a.port() == 0) => self.warn(
                challenge_span,
                "tls.acme.challenge",
                "Let's Encrypt validates tls-alpn-01 on port 443 only, and no https listener uses port 443 (fine behind a port forward); a host reachable only on 8448 cannot get a certificate this way",
            ),
            _ => {}
        }
    }

    fn well_known(&mut self, raw: &raw::RawWellKnown) -> Option<WellKnown> {
        let errors_before = self.errors.len();
        let delegated = raw.server.as_ref().and_then(|s| {
            self.check("well_known.server", s, |text| {
                ServerName::parse(text).map_err(|e| format!("{e}; e.g. \"matrix.example.com:443\""))
            })
        });
        let server = delegated
            .as_ref()
            .map(|d| json_bytes(&json!({ "m.server": d.as_str() })));
        let client = match &raw.client {
            None => {
                for (key, value) in [
                    (
                        "well_known.identity_server",
                        raw.identity_server.as_ref().map(|s| s.span()),
                    ),
                    (
                        "well_known.client_extra",
                        raw.client_extra.as_ref().map(|s| s.span()),
                    ),
                ] {
                    if value.is_some() {
                        self.error(
                            value,
                            key,
                            "needs `well_known.client` (the homeserver base URL) to be set as well",
                        );
                    }
                }
                None
            }
            Some(base) => {
                let base_url = self.check("well_known.client", base, |s| parse_base_url(s));
                if base.get_ref().starts_with("http://") {
                    self.warn(
                        Some(base.span()),
                        "well_known.client",
                        "is plain http://; clients and browsers expect the homeserver on https://",
                    );
                }
                let identity = raw.identity_server.as_ref().and_then(|s| {
                    self.check("well_known.identity_server", s, |s| parse_base_url(s))
                });
                let mut body = Map::new();
                if let Some(url) = base_url {
                    body.insert("m.homeserver".into(), json!({ "base_url": url }));
                }
                if let Some(url) = identity {
                    body.insert("m.identity_server".into(), json!({ "base_url": url }));
                }
                if let Some(extra) = &raw.client_extra {
                    for (k, v) in extra.get_ref() {
                        if k.starts_with("m.") || !k.contains('.') {
                            self.error(
                                Some(extra.span()),
                                "well_known.client_extra",
                                format!("key `{k}` must be namespaced like \"org.example.property\" and must not start with `m.`"),
                            );
                            continue;
                        }
                        match serde_json::to_value(v) {
                            Ok(json) => {
                                body.insert(k.clone(), json);
                            }
                            Err(e) => self.error(
                                Some(extra.span()),
                                "well_known.client_extra",
                                format!("key `{k}` cannot be written as JSON: {e}"),
                            ),
                        }
                    }
                }
                Some(json_bytes(&Value::Object(body)))
            }
        };
        let support = raw.support.as_ref().and_then(|s| self.support(s));
        let max_age = self.duration("well_known.max_age", &raw.max_age, secs(3600));
        if let Some(v) = &raw.max_age
            && (max_age < secs(300) || max_age > secs(48 * 3600))
        {
            self.warn(
                    Some(v.span()),
                    "well_known.max_age",
                    "homeservers clamp the cache time of the server file to 5m..48h; values outside have no effect there",
                );
        }
        (self.errors.len() == errors_before).then_some(WellKnown {
            server,
            client,
            support,
            delegated,
            max_age,
        })
    }

    fn support(&mut self, raw: &S<raw::RawSupport>) -> Option<Bytes> {
        let s = raw.get_ref();
        let errors_before = self.errors.len();
        let mut contacts = Vec::new();
        for c in &s.contacts {
            let contact = c.get_ref();
            let role = contact.role.get_ref();
            if !(role == "m.role.admin"
                || role == "m.role.security"
                || role.contains('.') && !role.starts_with("m."))
            {
                self.error(
                    Some(contact.role.span()),
                    "well_known.support.contacts.role",
                    format!("`{role}` is not a role: use \"m.role.admin\", \"m.role.security\" or a namespaced role like \"org.example.role\""),
                );
            }
            let mut obj = Map::new();
            obj.insert("role".into(), json!(role));
            if let Some(id) = &contact.matrix_id
                && let Some(id) = self.check("well_known.support.contacts.matrix_id", id, |v| {
                    match v.strip_prefix('@').and_then(|r| r.split_once(':')) {
                        Some((local, server))
                            if !local.is_empty() && ServerName::parse(server).is_ok() =>
                        {
                            Ok(v.clone())
                        }
                        _ => Err(format!(
                            "`{v}` is not a Matrix user ID like \"@admin:example.com\""
                        )),
                    }
                })
            {
                obj.insert("matrix_id".into(), json!(id));
            }
            if let Some(mail) = &contact.email_address
                && let Some(mail) = self.check(
                    "well_known.support.contacts.email_address",
                    mail,
                    |v| match v.split_once('@') {
                        Some((l, d))
                            if !l.is_empty()
                                && d.contains('.')
                                && !v.contains(char::is_whitespace) =>
                        {
                            Ok(v.clone())
                        }
                        _ => Err(format!("`{v}` is not an email address")),
                    },
                )
            {
                obj.insert("email_address".into(), json!(mail));
            }
            if contact.matrix_id.is_none() && contact.email_address.is_none() {
                self.error(
                    Some(c.span()),
                    "well_known.support.contacts",
                    "each contact needs `matrix_id` or `email_address` (or both)",
                );
            }
            contacts.push(Value::Object(obj));
        }
        let page = s
            .support_page
            .as_ref()
            .and_then(|p| self.check("well_known.support.support_page", p, |v| parse_base_url(v)));
        if s.contacts.is_empty() && s.support_page.is_none() {
            self.error(
                Some(raw.span()),
                "well_known.support",
                "needs `contacts` (at least one) or `support_page`",
            );
        }
        let mut body = Map::new();
        if !contacts.is_empty() {
            body.insert("contacts".into(), Value::Array(contacts));
        }
        if let Some(page) = page {
            body.insert("support_page".into(), json!(page));
        }
        (self.errors.len() == errors_before).then(|| json_bytes(&Value::Object(body)))
    }

    fn limits(&mut self, raw: &raw::RawLimits) -> Limits {
        let max_body = self.size("limits.max_body", &raw.max_body, 50 << 20);
        let max_header_size = self.size("limits.max_header_size", &raw.max_header_size, 64 << 10);
        if max_header_size < 8192
            && let Some(v) = &raw.max_header_size
        {
            self.error(
                Some(v.span()),
                "limits.max_header_size",
                "must be at least \"8k\"",
            );
        }
        if max_body < 12_800 << 10
            && let Some(v) = &raw.max_body
        {
            self.warn(
                    Some(v.span()),
                    "limits.max_body",
                    "is under 12.5M: a full federation /send transaction is up to about 12.5 MiB, and Synapse's default max_upload_size is 50M",
                );
        }
        Limits {
            max_body,
            max_header_size: usize::try_from(max_header_size.max(8192)).unwrap_or(usize::MAX),
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                &raw.header_read_timeout,
                secs(30),
            ),
            idle_timeout: self.duration("limits.idle_timeout", &raw.idle_timeout, secs(120)),
            shutdown_grace: self.duration("limits.shutdown_grace", &raw.shutdown_grace, secs(30)),
        }
    }

    fn forward(&mut self, raw: &raw::RawForward) -> Forward {
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .filter_map(|n| self.check("forward.trusted_proxies", n, |s| parse_net(s)))
            .collect();
        let extra_prefixes = raw
            .extra_prefixes
            .iter()
            .filter_map(|p| {
                self.check("forward.extra_prefixes", p, |s| {
                    let ok = s.starts_with("/_") && s.ends_with('/') && s.len() > 3
                        && !s.starts_with("/_synapse/")
                        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b));
                    if ok {
                        Ok(s.clone())
                    } else {
                        Err(format!("`{s}` must look like \"/_conduwuit/\": start with `/_`, end with `/`, not under `/_synapse/` (see `[allow]`)"))
                    }
                })
            })
            .collect();
        Forward {
            trusted_proxies,
            extra_prefixes,
        }
    }

    fn allow(&mut self, raw: &raw::RawAllow) -> Allow {
        let mut nets = |key: &str, list: &Option<Vec<S<String>>>| -> Option<Vec<IpNet>> {
            list.as_ref().map(|l| {
                l.iter()
                    .filter_map(|n| self.check(key, n, |s| parse_net(s)))
                    .collect()
            })
        };
        Allow {
            synapse_admin: nets("allow.synapse_admin", &raw.synapse_admin),
            synapse_metrics: nets("allow.synapse_metrics", &raw.synapse_metrics),
            synapse_replication: nets("allow.synapse_replication", &raw.synapse_replication),
        }
    }

    /// Setups that run but cannot federate, found from the config alone.
    fn federation_warnings(
        &mut self,
        raw: &RawConfig,
        server_name: &ServerName,
        listen: &Listen,
        wk: &WellKnown,
    ) {
        let fed_span = raw.listen.federation.as_ref().map(|f| f.span());
        let no_federation_listener = listen.federation.is_empty() && wk.delegated.is_none();
        if no_federation_listener {
            self.warn(
                fed_span.clone(),
                "listen.federation",
                format!("no federation listener and no `well_known.server` delegation: other servers look for {} on port 8448 and will not find it", server_name.host_str()),
            );
        }
        if let Some(port) = server_name.port() {
            if !listen
                .federation
                .iter()
                .chain(&listen.https)
                .any(|a| a.port() == port)
            {
                self.warn(
                    Some(raw.server_name.span()),
                    "server_name",
                    format!("has port {port}, which no https or federation listener uses; other servers connect to that port directly"),
                );
            }
        } else if wk.delegated.is_none()
            && !no_federation_listener
            && !listen.federation.iter().any(|a| a.port() == 8448)
        {
            self.warn(
                fed_span,
                "listen.federation",
                "no listener on port 8448 and no `well_known.server` delegation: other servers connect to port 8448 unless delegated (a port forward or a _matrix-fed._tcp SRV record may make this fine)",
            );
        }
        if let Some(delegated) = &wk.delegated {
            let span = raw.well_known.server.as_ref().map(|s| s.span());
            if let Some(names) = &raw.tls.names {
                let host = delegated.host_str();
                let covered = names.get_ref().iter().any(|n| covers(n.get_ref(), &host));
                if !covered {
                    self.warn(
                        span.clone(),
                        "well_known.server",
                        format!("`{host}` is not in `tls.names`: remote servers verify the certificate for the delegated host and will refuse the connection"),
                    );
                }
            }
            if delegated.port().is_none()
                && delegated.ip().is_none()
                && !listen.federation.iter().any(|a| a.port() == 8448)
            {
                self.warn(
                    span.clone(),
                    "well_known.server",
                    format!("has no port, so other servers connect to {}:8448 (or where its _matrix-fed._tcp SRV record points), and no listener here uses 8448; add the port you serve, e.g. \"{}:443\"", delegated.host_str(), delegated.as_str()),
                );
            }
            if let Some(port) = delegated.port() {
                let ours = listen
                    .federation
                    .iter()
                    .chain(&listen.https)
                    .any(|a| a.port() == port);
                if !ours {
                    self.warn(
                        span,
                        "well_known.server",
                        format!("delegates to port {port}, which no https or federation listener here uses (fine if another host serves it)"),
                    );
                }
            }
        }
        // The server name's host must be covered when this proxy serves it: the well-known files
        // on 443, or federation itself when undelegated.
        if let Some(names) = &raw.tls.names {
            let host = server_name.host_str();
            let serves_it = wk.delegated.is_none() || wk.server.is_some();
            if serves_it && !names.get_ref().iter().any(|n| covers(n.get_ref(), &host)) {
                self.warn(
                    Some(names.span()),
                    "tls.names",
                    format!("does not include the server name's host `{host}`: remote servers and clients verify the certificate for it (fine only if another host serves `{host}`)"),
                );
            }
        }
    }
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn parse_backend_url(url: &str) -> Result<BackendTarget, String> {
    if let Some(path) = url.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err(format!(
                "`{url}`: a unix socket path must be absolute, e.g. \"unix:/run/synapse/main.sock\""
            ));
        }
        return Ok(BackendTarget::Unix(PathBuf::from(path)));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL ({e}); write \"http://127.0.0.1:8008\" or \"unix:/run/synapse/main.sock\""))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{url}`: the backend is spoken to in plain HTTP/1.1 on a trusted network; use http:// (TLS to the backend is not supported)"
            ));
        }
        _ => return Err(format!("`{url}` must start with http:// or unix:")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(format!(
            "`{url}` has a path; give only scheme, host and port. A path would change the request-target and break federation signatures"
        ));
    }
    let authority = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.as_str()),
    };
    Ok(BackendTarget::Tcp { authority })
}

fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not an address with a port; write e.g. \"[::]:443\", \"0.0.0.0:8448\" or \"127.0.0.1:9000\"")
    })
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>().map(IpNet::from).map_err(|_| {
        format!(
            "`{s}` is not a network; write an address or a CIDR like \"10.0.0.0/8\" or \"fd00::/8\""
        )
    })
}

fn parse_base_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("`{s}` is not a URL; write e.g. \"https://matrix.example.com\""))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https"), Some(_)) => Ok(s.to_owned()),
        // Plain http is allowed for local trials; `Validator::well_known` warns about it.
        (Some("http"), Some(_)) => Ok(s.to_owned()),
        _ => Err(format!(
            "`{s}` must be an absolute https:// (or http://) URL, e.g. \"https://matrix.example.com\""
        )),
    }
}

/// More threads than this would only add switching: the work is bounded by the CPUs.
const MAX_WORKERS: usize = 1024;

/// One worker per CPU the process may use.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
