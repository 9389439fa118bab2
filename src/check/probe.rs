//! Probing each target the way a remote homeserver talks to it: TLS, certificate, version,
//! signing keys, path integrity.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::keys::{self, Signature};
use super::{Check, CheckId, EXPIRY_WARNING, ServerVersion, TargetReport};
use crate::config::ServerName;
use crate::discovery::https::{
    ConnectError, Exchange, RequestError, Session, Trust, Validity, Versions,
};
use crate::discovery::{Net, Rule, Target};

/// An unsigned federation request whose path holds percent-encoded bytes, `%2F` above all.
/// A homeserver that receives it intact routes it to the event endpoint and refuses it for
/// lack of an `Authorization` header (401 `M_UNAUTHORIZED`); anything in between that decodes
/// the path turns it into another path (Synapse: 404 `M_UNRECOGNIZED`), and the same decoding
/// breaks every X-Matrix signature over such a path.
pub const PATH_PROBE: &str = "/_matrix/federation/v1/event/%24matrix-edge-check%2Fpath%3Aintegrity";

const VERSION_PATH: &str = "/_matrix/federation/v1/version";
const KEYS_PATH: &str = "/_matrix/key/v2/server";
const SMALL_BODY: usize = 64 * 1024;
const KEYS_BODY: usize = 1024 * 1024;

/// Probes one target: TLS, certificate, version, keys, path integrity.
pub(super) async fn probe(
    target: &Target,
    net: &Net,
    name: &ServerName,
) -> (TargetReport, Vec<Check>) {
    let subject = Some(target.address.to_string());
    let mut report = TargetReport {
        target: target.clone(),
        tls: None,
        tls12: None,
        server: None,
        keys: None,
        path_probe_status: None,
    };
    let mut checks = Vec::new();
    let session = match net
        .https
        .handshake(target.address, &target.certificate_name, Versions::Current)
        .await
    {
        Ok((_stream, session)) => session,
        Err(e) => {
            checks.push(connect_failure(target, &e));
            return (report, checks);
        }
    };
    checks.push(Check::ok(
        CheckId::Connect,
        subject.clone(),
        format!(
            "TLS handshake with SNI {}",
            target.sni.as_deref().unwrap_or("none (IP literal)")
        ),
    ));
    certificate_checks(target, &session, &mut checks);

    let tls12 = net
        .https
        .handshake(
            target.address,
            &target.certificate_name,
            Versions::Tls12Only,
        )
        .await
        .is_ok();
    report.tls12 = Some(tls12);
    if tls12 || session.version == "TLS 1.2" {
        checks.push(Check::ok(
            CheckId::TlsVersion,
            subject.clone(),
            format!("{} ({}); TLS 1.2 accepted", session.version, session.cipher),
        ));
    } else {
        checks.push(Check::warning(
            CheckId::TlsVersion,
            subject.clone(),
            format!("{} ({}); TLS 1.2 refused", session.version, session.cipher),
            "peers whose TLS stack lacks TLS 1.3 cannot connect; Synapse's outgoing minimum is TLS 1.0 by default, and the spec's peers include old ones: accept TLS 1.2 as well",
        ));
    }
    checks.push(Check::ok(
        CheckId::Alpn,
        subject.clone(),
        match &session.alpn {
            Some(p) => format!("ALPN {p}"),
            None => "no ALPN selected; HTTP/1.1 assumed, as homeservers do".into(),
        },
    ));
    report.tls = Some(session);

    let host = target.host.as_str();
    let cert = &target.certificate_name;
    let version = net
        .https
        .get(target.address, cert, host, VERSION_PATH, SMALL_BODY)
        .await;
    let (server, check) = version_check(&version, subject.clone());
    report.server = server;
    checks.push(check);

    let key_answer = net
        .https
        .get(target.address, cert, host, KEYS_PATH, KEYS_BODY)
        .await;
    report.keys = keys_checks(&key_answer, name, subject.clone(), &mut checks);

    let path = net
        .https
        .get(target.address, cert, host, PATH_PROBE, SMALL_BODY)
        .await;
    report.path_probe_status = path.as_ref().ok().map(|e| e.status.as_u16());
    checks.push(path_check(&path, subject));
    (report, checks)
}

fn connect_failure(target: &Target, e: &ConnectError) -> Check {
    let subject = Some(target.address.to_string());
    let port = target.address.port();
    let hint = match e {
        ConnectError::Tcp { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            format!(
                "nothing listens on port {port} there: start the proxy's federation listener on it (matrix-edge: `listen.federation` for 8448, `listen.https` for 443) and open the port in the firewall"
            )
        }
        ConnectError::Tcp { .. } | ConnectError::TcpTimeout { .. } => format!(
            "packets to port {port} are dropped or the host is unreachable: a firewall, a port not forwarded by the router, or a CDN proxy (Cloudflare's proxied mode passes no 8448; use DNS-only mode or delegate to :443){}",
            if target.address.is_ipv6() {
                "; this is an IPv6 address: if the host does not serve IPv6, remove the AAAA record"
            } else {
                ""
            }
        ),
        ConnectError::Tls { .. } | ConnectError::TlsTimeout { .. } => format!(
            "the port answers but no TLS session comes up: it may speak plain HTTP, or have no certificate for SNI {}; put the TLS listener on this port",
            target
                .sni
                .as_deref()
                .unwrap_or("(none: IP literal; a default certificate is needed)")
        ),
        ConnectError::BadName { .. } => "the name cannot be used as a TLS server name".into(),
    };
    Check::failure(CheckId::Connect, subject, e.to_string(), hint)
}

fn certificate_checks(target: &Target, session: &Session, checks: &mut Vec<Check>) {
    let subject = Some(target.address.to_string());
    let Some(cert) = &session.certificate else {
        checks.push(Check::failure(
            CheckId::CertificateTrust,
            subject,
            "the server sent no certificate",
            "configure a certificate on this listener",
        ));
        return;
    };
    match &cert.trust {
        Trust::Trusted => checks.push(Check::ok(
            CheckId::CertificateTrust,
            subject.clone(),
            format!("chain of {} trusted (issuer {})", cert.chain_length, cert.issuer),
        )),
        Trust::Untrusted(reason) => checks.push(Check::failure(
            CheckId::CertificateTrust,
            subject.clone(),
            format!("the chain is not trusted: {reason} (issuer {})", cert.issuer),
            "serve the full chain, leaf first then the intermediates (fullchain.pem, not cert.pem), from a public CA; self-signed or private-CA certificates only work with peers told to trust them (here: --ca FILE)",
        )),
    }
    let expected = &target.certificate_name;
    if cert.name_matches {
        checks.push(Check::ok(
            CheckId::CertificateName,
            subject.clone(),
            format!("covers {expected}"),
        ));
    } else {
        let why = match target.rule {
            Rule::Srv | Rule::LegacySrv | Rule::DelegatedSrv | Rule::DelegatedLegacySrv => format!(
                "with SRV, the certificate must be valid for {expected} (the name delegated from), not for the {}",
                target.via
            ),
            Rule::DelegatedPort | Rule::DelegatedDefaultPort => format!(
                "the well-known file delegates to {expected}, so the certificate must cover that name"
            ),
            Rule::IpLiteral | Rule::DelegatedIp => format!(
                "the server name is an IP literal: no SNI is sent and the certificate must list {expected} as an IP address"
            ),
            Rule::ExplicitPort | Rule::DefaultPort => {
                format!(
                    "remote servers connect with SNI {expected} and require a certificate for it"
                )
            }
        };
        checks.push(Check::failure(
            CheckId::CertificateName,
            subject.clone(),
            format!(
                "the certificate covers {} but not {expected}",
                if cert.names.is_empty() {
                    "no subjectAltName".to_owned()
                } else {
                    cert.names.join(", ")
                }
            ),
            format!("{why}; add {expected} to the certificate (matrix-edge: `tls.names`)"),
        ));
    }
    let date = |t: Option<SystemTime>| {
        t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "?".into())
    };
    match cert.validity(SystemTime::now()) {
        Validity::Valid { left } if left < EXPIRY_WARNING => checks.push(Check::warning(
            CheckId::CertificateExpiry,
            subject,
            format!(
                "expires in {} day(s), on {}",
                left.as_secs() / 86400,
                date(cert.not_after)
            ),
            "renew it now; with ACME, renewal should have happened 30 days before expiry: check the proxy's ACME log lines and that the challenge port is reachable",
        )),
        Validity::Valid { left } => checks.push(Check::ok(
            CheckId::CertificateExpiry,
            subject,
            format!("valid until {} ({} days)", date(cert.not_after), left.as_secs() / 86400),
        )),
        Validity::Expired { since } => checks.push(Check::failure(
            CheckId::CertificateExpiry,
            subject,
            format!(
                "expired on {} ({} day(s) ago)",
                date(cert.not_after),
                since.as_secs() / 86400
            ),
            "homeservers refuse expired certificates: renew it and reload the proxy; with ACME, check the ACME log lines for why renewal failed",
        )),
        Validity::NotYetValid => checks.push(Check::failure(
            CheckId::CertificateExpiry,
            subject,
            format!("not valid before {}", date(cert.not_before)),
            "the certificate starts in the future: check this machine's clock and the server's",
        )),
        Validity::Unknown => checks.push(Check::warning(
            CheckId::CertificateExpiry,
            subject,
            "the validity dates cannot be read",
            "the certificate is malformed; reissue it",
        )),
    }
}

/// What a response body looks like, for hints about who answered.
fn body_kind(exchange: &Exchange) -> String {
    let content_type = exchange.header("content-type").unwrap_or("no content type");
    match errcode(exchange) {
        Some(code) => format!("JSON {code}"),
        None if looks_like_html(exchange) => format!("HTML ({content_type})"),
        None => content_type.to_owned(),
    }
}

fn errcode(exchange: &Exchange) -> Option<String> {
    serde_json::from_slice::<Value>(&exchange.body)
        .ok()
        .and_then(|v| v.get("errcode").and_then(Value::as_str).map(str::to_owned))
}

fn looks_like_html(exchange: &Exchange) -> bool {
    exchange
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html"))
        || exchange.body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
}

fn request_failure_hint(e: &RequestError) -> String {
    match e {
        RequestError::Connect(_) => "the second connection failed where the first worked: the server is overloaded or rate-limits connections".into(),
        RequestError::Timeout { .. } => "the proxy accepted the request but nothing answered in time: the homeserver is down, slow, or the proxy cannot reach it".into(),
        RequestError::Http { .. } => "the answer is not valid HTTP/1.1: check what listens on this port".into(),
        RequestError::TooLarge { .. } => "the answer is far larger than this endpoint ever is: something else answers on this path".into(),
        RequestError::BadTarget { .. } => "this is a bug in matrix-edge check".into(),
    }
}

fn version_check(
    answer: &Result<Exchange, RequestError>,
    subject: Option<String>,
) -> (Option<ServerVersion>, Check) {
    let id = CheckId::FederationVersion;
    let exchange = match answer {
        Ok(e) => e,
        Err(e) => {
            return (
                None,
                Check::failure(
                    id,
                    subject,
                    format!("GET {VERSION_PATH}: {e}"),
                    request_failure_hint(e),
                ),
            );
        }
    };
    if exchange.status.is_redirection() {
        return (None, redirect_failure(id, subject, VERSION_PATH, exchange));
    }
    if exchange.status != http::StatusCode::OK {
        return (
            None,
            Check::failure(
                id,
                subject,
                format!(
                    "GET {VERSION_PATH} answered {} ({})",
                    exchange.status.as_u16(),
                    body_kind(exchange)
                ),
                "the homeserver does not get federation requests: forward /_matrix/federation/ and /_matrix/key/ on this port to it, and check that federation is enabled in the homeserver",
            ),
        );
    }
    let value: Option<Value> = serde_json::from_slice(&exchange.body).ok();
    let server = value
        .as_ref()
        .and_then(|v| v.get("server"))
        .map(|s| ServerVersion {
            name: s.get("name").and_then(Value::as_str).map(str::to_owned),
            version: s.get("version").and_then(Value::as_str).map(str::to_owned),
        });
    match &server {
        Some(s) => {
            let text = format!(
                "{} {}",
                s.name.as_deref().unwrap_or("unnamed server"),
                s.version.as_deref().unwrap_or("(no version)")
            );
            (
                server.clone(),
                Check::ok(id, subject, format!("federation answers: {text}")),
            )
        }
        None => (
            None,
            Check::failure(
                id,
                subject,
                format!(
                    "GET {VERSION_PATH} answered 200 without a `server` object ({})",
                    body_kind(exchange)
                ),
                "something other than the homeserver answers federation requests on this port; forward /_matrix/ to the homeserver",
            ),
        ),
    }
}

fn redirect_failure(
    id: CheckId,
    subject: Option<String>,
    path: &str,
    exchange: &Exchange,
) -> Check {
    Check::failure(
        id,
        subject,
        format!(
            "GET {path} answered {} to {}",
            exchange.status.as_u16(),
            exchange.header("location").unwrap_or("nowhere")
        ),
        "homeservers follow no redirect on federation requests: remove the redirect rule for /_matrix/ on this port (often an http→https, host-canonicalisation or trailing-slash rule)",
    )
}

fn keys_checks(
    answer: &Result<Exchange, RequestError>,
    name: &ServerName,
    subject: Option<String>,
    checks: &mut Vec<Check>,
) -> Option<keys::ServerKeys> {
    let exchange = match answer {
        Ok(e) => e,
        Err(e) => {
            checks.push(Check::failure(
                CheckId::ServerKeys,
                subject,
                format!("GET {KEYS_PATH}: {e}"),
                request_failure_hint(e),
            ));
            return None;
        }
    };
    if exchange.status.is_redirection() {
        checks.push(redirect_failure(
            CheckId::ServerKeys,
            subject,
            KEYS_PATH,
            exchange,
        ));
        return None;
    }
    if exchange.status != http::StatusCode::OK {
        checks.push(Check::failure(
            CheckId::ServerKeys,
            subject,
            format!("GET {KEYS_PATH} answered {} ({})", exchange.status.as_u16(), body_kind(exchange)),
            "remote servers cannot verify anything this server signs: forward /_matrix/key/ to the homeserver",
        ));
        return None;
    }
    let keys = match keys::check_server_keys(&exchange.body) {
        Ok(k) => k,
        Err(e) => {
            checks.push(Check::failure(
                CheckId::ServerKeys,
                subject,
                format!("GET {KEYS_PATH}: {e}"),
                "something other than the homeserver answers /_matrix/key/; forward it to the homeserver",
            ));
            return None;
        }
    };
    checks.push(Check::ok(
        CheckId::ServerKeys,
        subject.clone(),
        format!(
            "{} ed25519 key(s): {}",
            keys.ed25519.len(),
            keys.ed25519
                .iter()
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    match keys.server_name.as_deref() {
        Some(claimed) if claimed == name.as_str() => checks.push(Check::ok(
            CheckId::KeysServerName,
            subject.clone(),
            format!("the keys are for `{claimed}`"),
        )),
        claimed => checks.push(Check::failure(
            CheckId::KeysServerName,
            subject.clone(),
            format!(
                "the keys are for `{}`, not `{name}`",
                claimed.unwrap_or("(no server_name)")
            ),
            "this address serves another homeserver, or the homeserver's `server_name` setting differs from the name users have: check the delegation (well-known, SRV) points here, that the proxy sends this Host to the right backend, and the homeserver's configured server_name",
        )),
    }
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    match keys.valid_until_ts {
        None => checks.push(Check::failure(
            CheckId::KeysValidity,
            subject.clone(),
            "no `valid_until_ts`",
            "the key response is not what a homeserver sends; forward /_matrix/key/ to the homeserver",
        )),
        Some(ts) if ts <= now_ms => checks.push(Check::failure(
            CheckId::KeysValidity,
            subject.clone(),
            format!("`valid_until_ts` {ts} is in the past"),
            "remote servers refuse expired keys: the homeserver's clock is wrong, or a cache in between serves an old response",
        )),
        Some(ts) if ts - now_ms < 3_600_000 => checks.push(Check::warning(
            CheckId::KeysValidity,
            subject.clone(),
            format!("the keys expire within the hour ({ts})"),
            "the spec asks servers not to publish keys that expire within an hour; check the homeserver's key refresh settings and clock",
        )),
        Some(ts) => checks.push(Check::ok(
            CheckId::KeysValidity,
            subject.clone(),
            format!("valid for {} more", approx(Duration::from_millis(ts - now_ms))),
        )),
    }
    if keys.ed25519.is_empty() {
        checks.push(Check::failure(
            CheckId::KeysSignature,
            subject,
            "no ed25519 key in `verify_keys`",
            "homeservers need an ed25519 key; the response is not from a working homeserver",
        ));
    } else if keys.all_signatures_valid() {
        checks.push(Check::ok(
            CheckId::KeysSignature,
            subject,
            "every ed25519 key's self-signature verifies over the canonical JSON",
        ));
    } else {
        let bad = keys
            .ed25519
            .iter()
            .filter(|k| k.signature != Signature::Valid)
            .map(|k| format!("{}: {}", k.id, signature_text(&k.signature)))
            .collect::<Vec<_>>()
            .join("; ");
        checks.push(Check::failure(
            CheckId::KeysSignature,
            subject,
            format!("self-signature check failed ({bad})"),
            "remote servers will not trust these keys: something in between changed the JSON (re-serialised, injected fields), or the homeserver signs with a key it does not publish",
        ));
    }
    Some(keys)
}

/// A duration in its largest sensible unit: "3 days", "5 hours", "12 minutes".
fn approx(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s} seconds"),
        120..7200 => format!("{} minutes", s / 60),
        7200..172_800 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

fn signature_text(s: &Signature) -> &'static str {
    match s {
        Signature::Valid => "valid",
        Signature::Missing => "no signature by this key under the server name",
        Signature::Invalid => "the signature does not match",
        Signature::Malformed => "the signature is not base64 of 64 bytes",
        Signature::BadKey => "the key is not base64 of 32 bytes",
        Signature::NotCanonical => "the JSON has a non-integer number and no canonical form",
    }
}

fn path_check(answer: &Result<Exchange, RequestError>, subject: Option<String>) -> Check {
    let id = CheckId::PathIntegrity;
    let exchange = match answer {
        Ok(e) => e,
        Err(e) => {
            return Check::failure(
                id,
                subject,
                format!("GET {PATH_PROBE}: {e}"),
                request_failure_hint(e),
            );
        }
    };
    let status = exchange.status.as_u16();
    let code = errcode(exchange);
    let what = format!(
        "an unsigned request with %2F in the path got {status} ({})",
        body_kind(exchange)
    );
    if status == 401 && code.is_some() {
        return Check::ok(
            id,
            subject,
            format!(
                "an unsigned request with %2F in the path reached the homeserver intact (401 {})",
                code.unwrap_or_default()
            ),
        );
    }
    if exchange.status.is_redirection() {
        return redirect_failure(id, subject, PATH_PROBE, exchange);
    }
    let decoded = "the homeserver answered, but for another path: something in between decodes %2F (and likely %24, %3A, %40) before forwarding, which breaks every X-Matrix signature over such a path (invites and v3-room event IDs fail with 401 \"Invalid signature\"). nginx: `proxy_pass http://backend;` with no URI part; Apache: `nocanon` and `AllowEncodedSlashes NoDecode`; matrix-edge forwards the path byte for byte";
    let between = "this answer is not from a homeserver: a proxy, WAF or CDN in between refused or rerouted a path with %2F. Let /_matrix/ through unchanged (Apache: `AllowEncodedSlashes NoDecode`; WAF: no URL normalisation on /_matrix/)";
    match (status, code.as_deref()) {
        (404 | 400 | 405, Some(_)) => Check::failure(id, subject, what, decoded),
        (200..=299, _) => Check::failure(
            id,
            subject,
            what,
            "an unsigned federation request should be refused with 401; something in between answers federation requests itself, or the homeserver does not authenticate them",
        ),
        (500..=599, Some(_)) => Check::failure(
            id,
            subject,
            what,
            "the homeserver failed on this path: it may be receiving a mangled path; check the homeserver log for this request",
        ),
        _ => Check::failure(id, subject, what, between),
    }
}
