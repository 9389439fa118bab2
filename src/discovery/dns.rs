//! DNS as a remote homeserver uses it: SRV lookups whose "no such record" is told apart from
//! "the lookup failed", and A/AAAA lookups that keep the CNAME chain for the report.
//!
//! Names are always queried fully qualified (with the trailing dot), so the search list in
//! `/etc/resolv.conf` can never turn `example.com` into `example.com.corp.internal`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use serde::Serialize;

/// Which DNS server answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResolverSource {
    /// The system's resolver configuration (`/etc/resolv.conf`), as a homeserver on this host
    /// would use.
    #[default]
    System,
    /// One server, over UDP and TCP (`--resolver IP:PORT`).
    At(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("cannot read the system resolver configuration: {0}")]
    System(#[source] NetError),
    #[error("cannot set up the resolver: {0}")]
    Build(#[source] NetError),
}

/// A DNS resolver with the check's timeout.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

/// One SRV record, as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Fully qualified, with the trailing dot.
    pub target: String,
}

impl SrvRecord {
    /// RFC 2782: a lone record with target `.` means "decidedly not available at this domain".
    pub fn is_unavailable_marker(&self) -> bool {
        self.target == "."
    }
}

/// What an SRV lookup came back with, in the three ways a homeserver tells apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SrvAnswer {
    /// Records, ordered by priority, then by descending weight.
    Found(Vec<SrvRecord>),
    /// NXDOMAIN, or the name exists without SRV records: the only answer after which a
    /// homeserver moves on to the next rule.
    NotFound { nxdomain: bool },
    /// The lookup itself failed (SERVFAIL, REFUSED, timeout, ...).
    Failed(String),
}

/// The addresses of a host, and the aliases followed to reach them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// CNAME targets in the order followed; empty when the name has addresses itself.
    pub aliases: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// Why a host has no address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("no A or AAAA record (NXDOMAIN)")]
    NxDomain,
    #[error("no A or AAAA record")]
    NoRecords,
    #[error("lookup failed: {0}")]
    Failed(String),
}

impl Dns {
    pub fn new(source: &ResolverSource, timeout: Duration) -> Result<Dns, DnsSetupError> {
        let mut builder = match source {
            ResolverSource::System => {
                TokioResolver::builder_tokio().map_err(DnsSetupError::System)?
            }
            ResolverSource::At(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in server.connections.iter_mut() {
                    connection.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let options = builder.options_mut();
        options.timeout = timeout;
        // Every address matters: a peer with IPv6 tries the AAAA record, one without the A.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // A check reports what the network says now, not what it said a minute ago.
        options.cache_size = 0;
        options.preserve_intermediates = true;
        if matches!(source, ResolverSource::At(_)) {
            // With an explicit server the answer must come from it alone.
            options.use_hosts_file = ResolveHosts::Never;
        }
        let resolver = builder.build().map_err(DnsSetupError::Build)?;
        Ok(Dns { resolver })
    }

    /// `SRV <name>`; `name` without the trailing dot is fine.
    pub async fn srv(&self, name: &str) -> SrvAnswer {
        match self.resolver.srv_lookup(fqdn(name)).await {
            Ok(lookup) => {
                let mut records: Vec<SrvRecord> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(SrvRecord {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            target: srv.target.to_ascii(),
                        }),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    return SrvAnswer::NotFound { nxdomain: false };
                }
                records.sort_by(|a, b| {
                    a.priority
                        .cmp(&b.priority)
                        .then(b.weight.cmp(&a.weight))
                        .then(a.target.cmp(&b.target))
                });
                SrvAnswer::Found(records)
            }
            Err(e) if e.is_no_records_found() => SrvAnswer::NotFound {
                nxdomain: e.is_nx_domain(),
            },
            Err(e) => SrvAnswer::Failed(e.to_string()),
        }
    }

    /// A and AAAA of `host`, following CNAMEs.
    pub async fn addresses(&self, host: &str) -> Result<Addresses, AddrError> {
        match self.resolver.lookup_ip(fqdn(host)).await {
            Ok(lookup) => {
                let aliases = lookup
                    .as_lookup()
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::CNAME(target) => Some(target.0.to_ascii()),
                        _ => None,
                    })
                    .fold(Vec::new(), |mut seen, alias| {
                        if !seen.contains(&alias) {
                            seen.push(alias);
                        }
                        seen
                    });
                let mut ips: Vec<IpAddr> = lookup.iter().collect();
                ips.dedup();
                if ips.is_empty() {
                    return Err(AddrError::NoRecords);
                }
                Ok(Addresses { aliases, ips })
            }
            Err(e) if e.is_nx_domain() => Err(AddrError::NxDomain),
            Err(e) if e.is_no_records_found() => Err(AddrError::NoRecords),
            Err(e) => Err(AddrError::Failed(e.to_string())),
        }
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}
