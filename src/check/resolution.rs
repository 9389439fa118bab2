//! Judging what discovery saw: the well-known file, its redirects and cache headers, the SRV
//! answers, the address lookups, and whether anything was left to connect to.

use std::time::{Duration, SystemTime};

use super::{Check, CheckId};
use crate::discovery::https::{ConnectError, FetchError, RequestError, Session, Trust, Validity};
use crate::discovery::wellknown::{self, CachePolicy, Outcome};
use crate::discovery::{DeadEnd, HostRole, Resolution, Service, SrvAnswer};

/// Turns what discovery saw into checks.
pub(super) fn discovery_checks(r: &Resolution) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Some(lookup) = &r.well_known {
        well_known_checks(lookup, &mut checks);
    }
    for srv in &r.srv {
        let subject = Some(srv.name.clone());
        match &srv.answer {
            SrvAnswer::NotFound { .. } => {}
            SrvAnswer::Found(records)
                if matches!(records.as_slice(), [only] if only.is_unavailable_marker()) =>
            {
                checks.push(Check::failure(
                    CheckId::Srv,
                    subject,
                    "the SRV record has target `.`: federation is declared unavailable here",
                    "RFC 2782's `.` target tells homeservers not to connect, and they do not fall back to another rule; delete the record, or point it at the host that serves federation",
                ));
            }
            SrvAnswer::Found(records) => {
                let text = records
                    .iter()
                    .map(|s| format!("{}:{}", s.target.trim_end_matches('.'), s.port))
                    .collect::<Vec<_>>()
                    .join(", ");
                match srv.service {
                    Service::MatrixFed => checks.push(Check::ok(
                        CheckId::Srv,
                        subject,
                        format!("points to {text}"),
                    )),
                    Service::Matrix => checks.push(Check::warning(
                        CheckId::Srv,
                        subject,
                        format!("only the deprecated `_matrix._tcp` record exists: {text}"),
                        format!(
                            "publish the same record as `{}` too; `_matrix._tcp` is not an IANA service name and the spec keeps it only for old servers",
                            srv.name.replacen("_matrix._tcp", "_matrix-fed._tcp", 1)
                        ),
                    )),
                }
            }
            SrvAnswer::Failed(error) => checks.push(Check::failure(
                CheckId::Srv,
                subject,
                format!("the SRV lookup failed: {error}"),
                "homeservers move on to the next rule only when there is no record (NXDOMAIN or no SRV data); on an error they give up, so federation fails until this name answers. Fix the zone or its DNS servers (a broken DNSSEC chain or a lame delegation often gives SERVFAIL)",
            )),
        }
    }
    for host in &r.hosts {
        let subject = Some(host.host.clone());
        match &host.answer {
            Ok(found) => {
                if host.role == HostRole::SrvTarget && !found.aliases.is_empty() {
                    let canonical = found.aliases.last().map(String::as_str).unwrap_or_default();
                    checks.push(Check::warning(
                        CheckId::SrvTarget,
                        subject.clone(),
                        format!("the SRV target is an alias (CNAME to {})", canonical.trim_end_matches('.')),
                        format!(
                            "RFC 2782 forbids aliases as SRV targets; Synapse follows them but stricter peers (the public federation tester, gomatrixserverlib) refuse them: point the SRV record at {} directly",
                            canonical.trim_end_matches('.')
                        ),
                    ));
                }
                let ips = found
                    .ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                checks.push(Check::ok(
                    CheckId::Address,
                    subject,
                    format!("resolves to {ips}"),
                ));
            }
            Err(e) => {
                let message = format!("no address: {e}");
                let hint = format!(
                    "add an A record (and an AAAA record if the host is reachable over IPv6) for {}",
                    host.host
                );
                if host.role == HostRole::SrvTarget && !r.targets.is_empty() {
                    checks.push(Check::warning(CheckId::Address, subject, message, hint));
                } else {
                    checks.push(Check::failure(CheckId::Address, subject, message, hint));
                }
            }
        }
    }
    match &r.dead_end {
        // Reported by the SRV check above.
        Some(DeadEnd::SrvFailed { .. } | DeadEnd::SrvUnavailable { .. }) => {}
        Some(DeadEnd::NoAddress) => checks.push(Check::failure(
            CheckId::Targets,
            None,
            "discovery found no address to connect to",
            "homeservers cannot reach this server at all; see the address checks above",
        )),
        None => {
            let rule = r.targets.first().map(|t| t.rule);
            checks.push(Check::ok(
                CheckId::Targets,
                None,
                format!(
                    "{} address(es) to check{}",
                    r.targets.len(),
                    rule.map(|rule| format!(", by step {} of the spec", rule.spec_step()))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    checks
}

fn well_known_checks(lookup: &wellknown::Lookup, checks: &mut Vec<Check>) {
    let subject = Some(lookup.url.clone());
    for hop in &lookup.redirects {
        let message = format!("redirects ({}) to {}", hop.status, hop.location);
        if hop.status == 308 {
            checks.push(Check::failure(
                CheckId::WellKnownRedirect,
                Some(hop.from.clone()),
                message,
                "Synapse before 1.136 on Twisted older than 21.2 does not follow 308 and falls back to SRV/8448 (synapse#8098); serve the file itself with 200 on this URL (matrix-edge: `well_known.server`), or redirect with 301/302 (a 308 often comes from an http→https or apex→www rule in ingress-nginx or Traefik)",
            ));
        } else {
            checks.push(Check::warning(
                CheckId::WellKnownRedirect,
                Some(hop.from.clone()),
                message,
                "homeservers follow it, but every server pays an extra round trip and older clients follow none; serve the file itself with 200 (matrix-edge: `well_known.server`)",
            ));
        }
    }
    let content_type = lookup.content_type().unwrap_or("none").to_owned();
    match &lookup.outcome {
        Outcome::Delegated(d) => {
            checks.push(Check::ok(
                CheckId::WellKnownServer,
                subject.clone(),
                format!("delegates to `{d}`"),
            ));
            if !content_type.starts_with("application/json") {
                checks.push(Check::warning(
                    CheckId::WellKnownServer,
                    subject.clone(),
                    format!("Content-Type is {content_type}"),
                    "homeservers parse the body anyway, but the spec says application/json and browsers and tools rely on it",
                ));
            }
        }
        Outcome::Status(status) if (400..500).contains(status) => checks.push(Check::ok(
            CheckId::WellKnownServer,
            subject.clone(),
            format!("answered {status}: no delegation, SRV and port 8448 decide"),
        )),
        Outcome::Status(status) => checks.push(Check::warning(
            CheckId::WellKnownServer,
            subject.clone(),
            format!("answered {status}"),
            "Synapse treats 5xx as a temporary failure: it keeps a cached delegation if it has one and otherwise falls back to SRV/8448; serve 200 with the file, or 404 when you do not delegate",
        )),
        Outcome::Unreachable => {
            if let Some(error) = &lookup.error {
                checks.push(unreachable_check(error, subject.clone()));
            }
        }
        Outcome::NotJson(error) => checks.push(Check::warning(
            CheckId::WellKnownServer,
            subject.clone(),
            format!("answered 200 with a body that is not JSON ({error}); Content-Type {content_type}"),
            "homeservers ignore it and fall back to SRV/8448; a web site's catch-all page often answers every path: answer 404 here, or serve {\"m.server\": \"host:port\"} (matrix-edge: `well_known.server`)",
        )),
        Outcome::NoServerKey => checks.push(Check::failure(
            CheckId::WellKnownServer,
            subject.clone(),
            "the file is JSON but has no string `m.server`",
            "homeservers ignore it and fall back to SRV/8448; serve {\"m.server\": \"host:port\"} (matrix-edge: `well_known.server`)",
        )),
        Outcome::InvalidServerName { value, reason } => checks.push(Check::failure(
            CheckId::WellKnownServer,
            subject.clone(),
            format!("`m.server` is `{value}`: {reason}"),
            "`m.server` is a hostname with an optional port, no scheme and no path, e.g. \"matrix.example.com:443\"",
        )),
    }
    if let Some(cache) = &lookup.cache {
        checks.push(cache_check(cache, subject));
    }
}

fn unreachable_check(error: &FetchError, subject: Option<String>) -> Check {
    let message = format!("not fetched: {error}");
    match error {
        FetchError::Resolve { .. } => Check::ok(
            CheckId::WellKnownServer,
            subject,
            format!("{message}; SRV and port 8448 decide"),
        ),
        FetchError::Unreachable { errors, .. } => {
            if errors
                .iter()
                .any(|e| matches!(e, RequestError::TooLarge { .. }))
            {
                return Check::failure(
                    CheckId::WellKnownServer,
                    subject,
                    message,
                    "homeservers read at most 50 KiB of this file and drop larger ones; serve just {\"m.server\": \"host:port\"}",
                );
            }
            let refused = errors.iter().all(|e| {
                matches!(e, RequestError::Connect(ConnectError::Tcp { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused)
            });
            if refused {
                Check::ok(
                    CheckId::WellKnownServer,
                    subject,
                    format!("{message}; no HTTPS server, so SRV and port 8448 decide"),
                )
            } else {
                Check::warning(
                    CheckId::WellKnownServer,
                    subject,
                    message,
                    "homeservers count this as a temporary failure and fall back to SRV/8448 (or an old cached delegation); if you delegate with this file, make port 443 answer",
                )
            }
        }
        FetchError::Certificate { session, .. } => Check::warning(
            CheckId::WellKnownServer,
            subject,
            format!("{message}: {}", certificate_summary(session)),
            "homeservers ignore a well-known file behind a certificate they cannot verify and fall back to SRV/8448; fix the certificate on port 443",
        ),
        FetchError::TooManyRedirects { .. }
        | FetchError::RedirectLoop { .. }
        | FetchError::BadRedirect { .. } => Check::failure(
            CheckId::WellKnownServer,
            subject,
            message,
            "homeservers give up on this redirect chain and fall back to SRV/8448; serve the file itself with 200",
        ),
    }
}

fn certificate_summary(session: &Session) -> String {
    let Some(cert) = &session.certificate else {
        return "no certificate".into();
    };
    let mut problems = Vec::new();
    if let Trust::Untrusted(reason) = &cert.trust {
        problems.push(reason.clone());
    }
    if !cert.name_matches {
        problems.push(format!(
            "it covers {} but not {}",
            cert.names.join(", "),
            cert.expected_name
        ));
    }
    match cert.validity(SystemTime::now()) {
        Validity::Expired { .. } => problems.push("it has expired".into()),
        Validity::NotYetValid => problems.push("it is not valid yet".into()),
        Validity::Valid { .. } | Validity::Unknown => {}
    }
    problems.join("; ")
}

fn cache_check(cache: &CachePolicy, subject: Option<String>) -> Check {
    let headers = match (&cache.cache_control, &cache.expires) {
        (Some(cc), _) => format!("Cache-Control: {cc}"),
        (None, Some(ex)) => format!("Expires: {ex}"),
        (None, None) => "no cache headers".into(),
    };
    let kept = humantime::format_duration(Duration::from_secs(cache.synapse_seconds));
    let message = format!("{headers}; Synapse keeps it {kept}");
    match cache.requested_seconds {
        None => Check::warning(
            CheckId::WellKnownCache,
            subject,
            message,
            "without Cache-Control, remote servers keep the delegation for 24 h; send `Cache-Control: max-age=<seconds>` to choose (matrix-edge: `well_known.max_age`)",
        ),
        Some(n) if n < wellknown::MIN_CACHE.as_secs() as i64 => Check::warning(
            CheckId::WellKnownCache,
            subject,
            message,
            "Synapse keeps the answer at least 5 minutes whatever the headers say; a shorter max-age only makes other servers refetch more often",
        ),
        Some(n) if n > wellknown::MAX_CACHE.as_secs() as i64 => Check::warning(
            CheckId::WellKnownCache,
            subject,
            message,
            "Synapse keeps the answer at most 48 hours; a longer max-age is cut there",
        ),
        Some(_) => Check::ok(CheckId::WellKnownCache, subject, message),
    }
}
