//! Server discovery: resolving a Matrix server name exactly as a remote homeserver does (spec
//! "Resolving server names"), with every step and every target returned as values.
//!
//! Owns the order of the spec's rules: IP literal; explicit port;
//! `https://<hostname>/.well-known/matrix/server`; `_matrix-fed._tcp` SRV, then the deprecated
//! `_matrix._tcp` only when the first has no record; A/AAAA on 8448. For each target it fixes
//! the `Host` header, the SNI and the name the certificate must cover, per the spec's table (an
//! SRV target keeps the original name). [`dns`] and [`https`] are the plumbing a remote server
//! uses for this, shared with [`crate::check`].
//!
//! Must not judge: it records what was asked and what came back. Whether an answer is a
//! problem, and what to do about it, is [`crate::check`]'s business. It keeps no cache and sends
//! nothing but DNS queries and the well-known GET.

pub mod dns;
pub mod https;
pub mod wellknown;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls::RootCertStore;
use serde::Serialize;

use crate::config::ServerName;
pub use dns::{AddrError, Addresses, Dns, DnsSetupError, ResolverSource, SrvAnswer, SrvRecord};
pub use https::{CertName, Client};

/// The IANA-registered federation port, used when nothing names another.
pub const DEFAULT_PORT: u16 = 8448;

/// The network a check goes through: a resolver and an HTTPS client.
#[derive(Clone)]
pub struct Net {
    pub dns: Dns,
    pub https: Client,
}

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl Net {
    pub fn new(
        resolver: &ResolverSource,
        roots: RootCertStore,
        timeout: Duration,
    ) -> Result<Net, NetError> {
        Ok(Net {
            dns: Dns::new(resolver, timeout)?,
            https: Client::new(roots, timeout)?,
        })
    }
}

/// The rows of the spec's resolution table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// 1: the server name is an IP literal.
    IpLiteral,
    /// 2: the server name has an explicit port.
    ExplicitPort,
    /// 3.1: `m.server` is an IP literal.
    DelegatedIp,
    /// 3.2: `m.server` has an explicit port.
    DelegatedPort,
    /// 3.3: `_matrix-fed._tcp` SRV of the delegated host.
    DelegatedSrv,
    /// 3.4 (deprecated): `_matrix._tcp` SRV of the delegated host.
    DelegatedLegacySrv,
    /// 3.5: the delegated host on 8448.
    DelegatedDefaultPort,
    /// 4: `_matrix-fed._tcp` SRV of the server name.
    Srv,
    /// 5 (deprecated): `_matrix._tcp` SRV of the server name.
    LegacySrv,
    /// 6: the server name on 8448.
    DefaultPort,
}

impl Rule {
    /// The step number in the spec's list.
    pub fn spec_step(self) -> &'static str {
        match self {
            Rule::IpLiteral => "1",
            Rule::ExplicitPort => "2",
            Rule::DelegatedIp => "3.1",
            Rule::DelegatedPort => "3.2",
            Rule::DelegatedSrv => "3.3",
            Rule::DelegatedLegacySrv => "3.4",
            Rule::DelegatedDefaultPort => "3.5",
            Rule::Srv => "4",
            Rule::LegacySrv => "5",
            Rule::DefaultPort => "6",
        }
    }

    /// `_matrix._tcp` is not an IANA service name; the spec keeps it only for old servers.
    pub fn is_deprecated(self) -> bool {
        matches!(self, Rule::DelegatedLegacySrv | Rule::LegacySrv)
    }
}

/// What kind of question a step asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    ServerName,
    WellKnown,
    Srv,
    Address,
}

/// One question a remote homeserver asks while resolving, and what it did with the answer.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub kind: StepKind,
    pub asked: String,
    pub answer: String,
    pub chose: String,
}

/// One address a remote homeserver connects to, and how it talks to it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub address: SocketAddr,
    /// The `Host` header sent.
    pub host: String,
    /// The TLS SNI sent; none for IP literals.
    pub sni: Option<String>,
    /// The name the certificate must cover.
    pub certificate_name: CertName,
    pub rule: Rule,
    /// How the address was reached, for people.
    pub via: String,
}

/// The SRV services, in the order asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// `_matrix-fed._tcp`, spec v1.8 on.
    MatrixFed,
    /// `_matrix._tcp`, deprecated.
    Matrix,
}

impl Service {
    pub fn prefix(self) -> &'static str {
        match self {
            Service::MatrixFed => "_matrix-fed._tcp",
            Service::Matrix => "_matrix._tcp",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SrvLookup {
    pub service: Service,
    pub name: String,
    pub answer: SrvAnswer,
}

/// Why a host was looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRole {
    /// The server name or the delegated name itself: CNAMEs are fine.
    Named,
    /// An SRV target, which RFC 2782 forbids to be an alias.
    SrvTarget,
}

/// What an SRV target, delegated host or server name resolved to.
#[derive(Clone, Debug)]
pub struct HostLookup {
    pub host: String,
    pub role: HostRole,
    pub answer: Result<Addresses, AddrError>,
}

/// Where a host's addresses lead: the port, and how a homeserver talks to them.
struct Plan<'a> {
    role: HostRole,
    port: u16,
    host_header: &'a str,
    cert: CertName,
    rule: Rule,
}

/// Why resolution ended without a single target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadEnd {
    /// A `_matrix-fed._tcp` (or `_matrix._tcp`) lookup failed; homeservers do not fall back
    /// on an error, only on "no such record".
    SrvFailed { name: String, error: String },
    /// The SRV set is RFC 2782's "not available here" (a lone record with target `.`).
    SrvUnavailable { name: String },
    /// Every host looked up had no address.
    NoAddress,
}

/// The complete account of one resolution.
#[derive(Debug)]
pub struct Resolution {
    pub server_name: ServerName,
    /// `None` when the rules skip it (IP literal, explicit port).
    pub well_known: Option<wellknown::Lookup>,
    pub delegated: Option<ServerName>,
    pub srv: Vec<SrvLookup>,
    pub hosts: Vec<HostLookup>,
    pub steps: Vec<Step>,
    pub targets: Vec<Target>,
    pub dead_end: Option<DeadEnd>,
}

impl Resolution {
    fn new(name: &ServerName) -> Self {
        Resolution {
            server_name: name.clone(),
            well_known: None,
            delegated: None,
            srv: Vec::new(),
            hosts: Vec::new(),
            steps: Vec::new(),
            targets: Vec::new(),
            dead_end: None,
        }
    }

    fn step(&mut self, kind: StepKind, asked: String, answer: String, chose: String) {
        self.steps.push(Step {
            kind,
            asked,
            answer,
            chose,
        });
    }

    fn target(&mut self, address: SocketAddr, host: &str, name: CertName, rule: Rule, via: String) {
        self.targets.push(Target {
            address,
            host: host.to_owned(),
            sni: name.sni().map(str::to_owned),
            certificate_name: name,
            rule,
            via,
        });
    }
}

/// How a target will be talked to, for the "chose" column.
fn describe_target(t: &Target) -> String {
    format!(
        "{} with Host: {}, SNI: {}, certificate for {} (step {})",
        t.address,
        t.host,
        t.sni.as_deref().unwrap_or("none"),
        t.certificate_name,
        t.rule.spec_step()
    )
}

/// Resolves `name` as a remote homeserver would.
pub async fn resolve(name: &ServerName, net: &Net) -> Resolution {
    let mut r = Resolution::new(name);
    if let Some(ip) = name.ip() {
        let port = name.port().unwrap_or(DEFAULT_PORT);
        r.target(
            SocketAddr::new(ip, port),
            name.as_str(),
            CertName::Ip(ip),
            Rule::IpLiteral,
            "the server name is an IP literal".into(),
        );
        let chose = r.targets.last().map(describe_target).unwrap_or_default();
        r.step(
            StepKind::ServerName,
            format!("is `{name}` an IP literal?"),
            "yes: no well-known, no SRV".into(),
            chose,
        );
        return r;
    }
    let host = name.host_str();
    if let Some(port) = name.port() {
        r.step(
            StepKind::ServerName,
            format!("does `{name}` have an explicit port?"),
            format!("yes, {port}: no well-known, no SRV"),
            format!("A/AAAA of {host}, port {port}"),
        );
        addresses(
            &mut r,
            net,
            &host,
            Plan {
                role: HostRole::Named,
                port,
                host_header: name.as_str(),
                cert: CertName::Dns(host.clone()),
                rule: Rule::ExplicitPort,
            },
        )
        .await;
        finish(&mut r);
        return r;
    }

    let lookup = wellknown::lookup(&net.https, &net.dns, name).await;
    let delegated = lookup.outcome.delegated().cloned();
    let chose = match &delegated {
        Some(d) => format!("delegate to `{d}`"),
        None => format!("no delegation: SRV and A/AAAA of {host}"),
    };
    r.step(
        StepKind::WellKnown,
        format!("GET {}", lookup.url),
        describe_well_known(&lookup),
        chose,
    );
    r.well_known = Some(lookup);

    match delegated {
        Some(d) => {
            r.delegated = Some(d.clone());
            let dhost = d.host_str();
            if let Some(ip) = d.ip() {
                let port = d.port().unwrap_or(DEFAULT_PORT);
                r.target(
                    SocketAddr::new(ip, port),
                    d.as_str(),
                    CertName::Ip(ip),
                    Rule::DelegatedIp,
                    format!("m.server `{d}` is an IP literal"),
                );
                let chose = r.targets.last().map(describe_target).unwrap_or_default();
                r.step(
                    StepKind::ServerName,
                    format!("is m.server `{d}` an IP literal?"),
                    "yes: no SRV".into(),
                    chose,
                );
            } else if let Some(port) = d.port() {
                addresses(
                    &mut r,
                    net,
                    &dhost,
                    Plan {
                        role: HostRole::Named,
                        port,
                        host_header: d.as_str(),
                        cert: CertName::Dns(dhost.clone()),
                        rule: Rule::DelegatedPort,
                    },
                )
                .await;
            } else {
                srv_chain(
                    &mut r,
                    net,
                    &dhost,
                    [
                        Rule::DelegatedSrv,
                        Rule::DelegatedLegacySrv,
                        Rule::DelegatedDefaultPort,
                    ],
                )
                .await;
            }
        }
        None => {
            srv_chain(
                &mut r,
                net,
                &host,
                [Rule::Srv, Rule::LegacySrv, Rule::DefaultPort],
            )
            .await
        }
    }
    finish(&mut r);
    r
}

fn finish(r: &mut Resolution) {
    if r.targets.is_empty() && r.dead_end.is_none() {
        r.dead_end = Some(DeadEnd::NoAddress);
    }
}

/// Rules 3.3-3.5 or 4-6: `_matrix-fed._tcp`, then `_matrix._tcp` only when the first has no
/// record, then A/AAAA on 8448. `host` is both the `Host` header and the certificate name.
async fn srv_chain(r: &mut Resolution, net: &Net, host: &str, rules: [Rule; 3]) {
    let [srv_rule, legacy_rule, default_rule] = rules;
    for (service, rule) in [
        (Service::MatrixFed, srv_rule),
        (Service::Matrix, legacy_rule),
    ] {
        let name = format!("{}.{host}", service.prefix());
        let answer = net.dns.srv(&name).await;
        r.srv.push(SrvLookup {
            service,
            name: name.clone(),
            answer: answer.clone(),
        });
        match answer {
            SrvAnswer::NotFound { nxdomain } => {
                let next = match service {
                    Service::MatrixFed => format!("try {}.{host}", Service::Matrix.prefix()),
                    Service::Matrix => format!("A/AAAA of {host}, port {DEFAULT_PORT}"),
                };
                r.step(
                    StepKind::Srv,
                    format!("SRV {name}"),
                    if nxdomain {
                        "NXDOMAIN".into()
                    } else {
                        "no SRV record".into()
                    },
                    next,
                );
            }
            SrvAnswer::Failed(error) => {
                r.step(
                    StepKind::Srv,
                    format!("SRV {name}"),
                    format!("error: {error}"),
                    "stop: homeservers fall back only when there is no record, not on an error"
                        .into(),
                );
                r.dead_end = Some(DeadEnd::SrvFailed { name, error });
                return;
            }
            SrvAnswer::Found(records) => {
                let text = records
                    .iter()
                    .map(|s| format!("{} {} {} {}", s.priority, s.weight, s.port, s.target))
                    .collect::<Vec<_>>()
                    .join(", ");
                if let [only] = records.as_slice()
                    && only.is_unavailable_marker()
                {
                    r.step(
                        StepKind::Srv,
                        format!("SRV {name}"),
                        text,
                        "stop: target `.` means the service is not available here".into(),
                    );
                    r.dead_end = Some(DeadEnd::SrvUnavailable { name });
                    return;
                }
                r.step(
                    StepKind::Srv,
                    format!("SRV {name}"),
                    text,
                    format!("connect to the targets, sending Host and SNI {host}"),
                );
                for record in records.iter().filter(|s| !s.is_unavailable_marker()) {
                    let target = record.target.trim_end_matches('.').to_owned();
                    addresses(
                        r,
                        net,
                        &target,
                        Plan {
                            role: HostRole::SrvTarget,
                            port: record.port,
                            host_header: host,
                            cert: CertName::Dns(host.to_owned()),
                            rule,
                        },
                    )
                    .await;
                }
                return;
            }
        }
    }
    addresses(
        r,
        net,
        host,
        Plan {
            role: HostRole::Named,
            port: DEFAULT_PORT,
            host_header: host,
            cert: CertName::Dns(host.to_owned()),
            rule: default_rule,
        },
    )
    .await;
}

/// Looks up `lookup_host` and adds a target per address, as `plan` says.
async fn addresses(r: &mut Resolution, net: &Net, lookup_host: &str, plan: Plan<'_>) {
    let Plan {
        role,
        port,
        host_header,
        cert,
        rule,
    } = plan;
    let answer = net.dns.addresses(lookup_host).await;
    let asked = format!("A/AAAA {lookup_host}");
    match &answer {
        Ok(found) => {
            let mut text = found
                .ips
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            if !found.aliases.is_empty() {
                text = format!("CNAME {} → {text}", found.aliases.join(" → "));
            }
            let first = r.targets.len();
            for ip in &found.ips {
                let via = match role {
                    HostRole::SrvTarget => format!("SRV target {lookup_host}:{port}"),
                    HostRole::Named => format!("{lookup_host}:{port}"),
                };
                r.target(
                    SocketAddr::new(*ip, port),
                    host_header,
                    cert.clone(),
                    rule,
                    via,
                );
            }
            let chose = r.targets[first..]
                .iter()
                .map(describe_target)
                .collect::<Vec<_>>()
                .join("; ");
            r.step(StepKind::Address, asked, text, chose);
        }
        Err(e) => {
            r.step(
                StepKind::Address,
                asked,
                e.to_string(),
                "nothing to connect to".into(),
            );
        }
    }
    r.hosts.push(HostLookup {
        host: lookup_host.to_owned(),
        role,
        answer,
    });
}

fn describe_well_known(lookup: &wellknown::Lookup) -> String {
    use wellknown::Outcome;
    let mut parts: Vec<String> = lookup
        .redirects
        .iter()
        .map(|h| format!("{} → {}", h.status, h.location))
        .collect();
    let last = match &lookup.outcome {
        Outcome::Delegated(d) => format!("200, m.server `{d}`"),
        Outcome::Status(s) => format!("{s}"),
        Outcome::Unreachable => match &lookup.error {
            Some(e) => e.to_string(),
            None => "no answer".into(),
        },
        Outcome::NotJson(e) => format!("200, not JSON ({e})"),
        Outcome::NoServerKey => "200, no `m.server` string".into(),
        Outcome::InvalidServerName { value, reason } => {
            format!("200, m.server `{value}` is not a server name ({reason})")
        }
    };
    parts.push(last);
    parts.join(", then ")
}

#[cfg(test)]
mod tests;
