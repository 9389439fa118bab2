//! Routing: from listener role, method, raw path and peer address to a [`Route`], a plain value.
//!
//! Nothing here touches a socket or builds a response, so every rule is unit tested on its own.
//! The raw path is never changed: matching works on a decoded *copy* (percent-decoded, repeated
//! slashes merged), so `/_synapse/%61dmin` or `//_synapse/admin` cannot slip past the internal
//! path rules, while the bytes forwarded stay exactly the client's.

use std::borrow::Cow;
use std::net::IpAddr;

use http::Method;
use ipnet::IpNet;
use percent_encoding::percent_decode_str;

use crate::config::Config;

/// What a listener is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Clients, well-known files, and federation delegated to 443.
    Https,
    /// Server-server traffic (8448).
    Federation,
    /// Plain HTTP: redirects to https.
    Http,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Https => "https",
            Role::Federation => "federation",
            Role::Http => "http",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WellKnownFile {
    Server,
    Client,
    Support,
}

/// What kind of traffic a forwarded request is; used for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Federation,
    Keys,
    Media,
    Client,
    /// Any other `/_matrix/` path (static, consent, policy, …).
    OtherMatrix,
    /// `/_synapse/client/` (SSO, password reset, …).
    SynapseClient,
    /// An internal path the config allows for this peer.
    Internal(InternalPath),
    /// A prefix from `forward.extra_prefixes`.
    Extra,
}

/// Homeserver paths that must not be public unless the config says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InternalPath {
    SynapseAdmin,
    SynapseMetrics,
    SynapseReplication,
}

impl InternalPath {
    pub fn prefix(self) -> &'static str {
        match self {
            InternalPath::SynapseAdmin => "/_synapse/admin",
            InternalPath::SynapseMetrics => "/_synapse/metrics",
            InternalPath::SynapseReplication => "/_synapse/replication",
        }
    }
}

/// Why a request is refused before anything else happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A segment decodes to `.` or `..`.
    DotSegment,
    /// An internal path from a network the config does not allow.
    Internal(InternalPath),
    /// A method other than GET/HEAD on the plain-HTTP listener.
    PlainHttp,
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    WellKnown(WellKnownFile),
    Forward(Class),
    /// Plain HTTP GET/HEAD: 301 to the same target on https.
    RedirectToHttps,
    /// Plain HTTP GET/HEAD of `/.well-known/acme-challenge/<token>`: an HTTP-01 validation.
    AcmeHttp01,
    Refuse(Refusal),
    NotFound,
}

/// The parts of the config routing depends on, prepared once.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub allow_admin: Vec<IpNet>,
    pub allow_metrics: Vec<IpNet>,
    pub allow_replication: Vec<IpNet>,
    pub extra_prefixes: Vec<String>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Self {
        Policy {
            allow_admin: config.allow.synapse_admin.clone().unwrap_or_default(),
            allow_metrics: config.allow.synapse_metrics.clone().unwrap_or_default(),
            allow_replication: config.allow.synapse_replication.clone().unwrap_or_default(),
            extra_prefixes: config.forward.extra_prefixes.clone(),
        }
    }

    fn allowed(&self, path: InternalPath, peer: IpAddr) -> bool {
        let nets = match path {
            InternalPath::SynapseAdmin => &self.allow_admin,
            InternalPath::SynapseMetrics => &self.allow_metrics,
            InternalPath::SynapseReplication => &self.allow_replication,
        };
        let peer = canonical_ip(peer);
        nets.iter().any(|n| n.contains(&peer))
    }
}

/// An IPv4 peer on a dual-stack socket shows up as `::ffff:a.b.c.d`; match it as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Where HTTP-01 tokens are fetched (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Decides what to do with a request. `path` is the raw path, without the query.
pub fn classify(role: Role, method: &Method, path: &str, peer: IpAddr, policy: &Policy) -> Route {
    if role == Role::Http {
        return if method == Method::GET || method == Method::HEAD {
            if path.starts_with(ACME_CHALLENGE_PREFIX) {
                return Route::AcmeHttp01;
            }
            Route::RedirectToHttps
        } else {
            Route::Refuse(Refusal::PlainHttp)
        };
    }
    if has_dot_segment(path) {
        return Route::Refuse(Refusal::DotSegment);
    }
    let key = match_key(path);
    let key = key.as_ref();

    if role == Role::Https {
        match key {
            "/.well-known/matrix/server" => return Route::WellKnown(WellKnownFile::Server),
            "/.well-known/matrix/client" => return Route::WellKnown(WellKnownFile::Client),
            "/.well-known/matrix/support" => return Route::WellKnown(WellKnownFile::Support),
            _ => {}
        }
    }

    for internal in [
        InternalPath::SynapseAdmin,
        InternalPath::SynapseMetrics,
        InternalPath::SynapseReplication,
    ] {
        if under(key, internal.prefix()) {
            return if role == Role::Https && policy.allowed(internal, peer) {
                Route::Forward(Class::Internal(internal))
            } else {
                Route::Refuse(Refusal::Internal(internal))
            };
        }
    }

    if let Some(rest) = key.strip_prefix("/_matrix/") {
        let class = match rest.split('/').next().unwrap_or("") {
            "federation" => Class::Federation,
            "key" => Class::Keys,
            "media" => Class::Media,
            "client" => Class::Client,
            _ => Class::OtherMatrix,
        };
        return Route::Forward(class);
    }
    if role == Role::Https {
        if under(key, "/_synapse/client") {
            return Route::Forward(Class::SynapseClient);
        }
        if policy
            .extra_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
        {
            return Route::Forward(Class::Extra);
        }
    }
    Route::NotFound
}

/// `path` is `prefix` or lies below it (`/_synapse/admin` and `/_synapse/admin/v1/...`, but not
/// `/_synapse/administrator`).
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The copy of the path that matching reads: percent-decoded, with runs of `/` merged.
fn match_key(path: &str) -> Cow<'_, str> {
    let decoded: Cow<'_, str> = if path.contains('%') {
        percent_decode_str(path).decode_utf8_lossy()
    } else {
        Cow::Borrowed(path)
    };
    if !decoded.contains("//") {
        return decoded;
    }
    let mut merged = String::with_capacity(decoded.len());
    let mut last_slash = false;
    for c in decoded.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        merged.push(c);
    }
    Cow::Owned(merged)
}

/// True if any segment of the raw path, once percent-decoded, is `.` or `..`, or holds such a
/// component behind an encoded slash or backslash (`..%2F`), which a backend that decodes before
/// routing would treat as a step up.
pub fn has_dot_segment(path: &str) -> bool {
    // Most paths have neither a dot nor an escape anywhere: one scan settles them.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(|segment| {
        if !segment.contains('.') && !segment.contains('%') {
            return false;
        }
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        decoded
            .split(['/', '\\'])
            .any(|component| component == "." || component == "..")
    })
}

#[cfg(test)]
mod tests;
