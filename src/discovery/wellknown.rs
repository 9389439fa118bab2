//! `/.well-known/matrix/server`: fetched, parsed and cached the way homeservers do (spec step
//! 3; Synapse `well_known_resolver.py` for the numbers the spec leaves open).

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde::Serialize;

use super::dns::Dns;
use super::https::{Client, Exchange, FetchError, HttpsUrl, Redirect};
use crate::config::ServerName;

/// Bodies above this are refused by Synapse and gomatrixserverlib alike.
pub const MAX_SIZE: usize = 50 * 1024;

pub const PATH: &str = "/.well-known/matrix/server";

/// Synapse's cache bounds for a valid answer, and its default without cache headers.
pub const MIN_CACHE: Duration = Duration::from_secs(5 * 60);
pub const MAX_CACHE: Duration = Duration::from_secs(48 * 3600);
pub const DEFAULT_CACHE: Duration = Duration::from_secs(24 * 3600);

/// What the file said, as far as discovery is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A valid `m.server`: discovery continues with the delegated name.
    Delegated(ServerName),
    /// A final status other than 200 (most often 404: no delegation).
    Status(u16),
    /// No HTTP answer could be used (see [`Lookup::error`]).
    Unreachable,
    /// 200, but the body is not a JSON object.
    NotJson(String),
    /// 200 JSON without a string `m.server`.
    NoServerKey,
    /// `m.server` that is not a server name.
    InvalidServerName { value: String, reason: String },
}

impl Outcome {
    pub fn delegated(&self) -> Option<&ServerName> {
        match self {
            Outcome::Delegated(name) => Some(name),
            _ => None,
        }
    }
}

/// How long homeservers keep the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CachePolicy {
    pub cache_control: Option<String>,
    pub expires: Option<String>,
    /// Seconds the headers ask for (`no-store` is 0); `None` without usable headers.
    pub requested_seconds: Option<i64>,
    /// Seconds Synapse keeps it: the request clamped to 5 min..48 h, 24 h without headers.
    pub synapse_seconds: u64,
}

impl CachePolicy {
    /// Synapse's reading of the headers: `no-store`, then `max-age`, then `Expires` (an invalid
    /// date counts as already expired).
    pub fn from_headers(headers: &http::HeaderMap, now: SystemTime) -> CachePolicy {
        let cache_control = joined(headers, "cache-control");
        let expires = headers
            .get_all("expires")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut requested = None;
        if let Some(cc) = &cache_control {
            for directive in cc.split(',').map(str::trim) {
                let (key, value) = match directive.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (directive, None),
                };
                if key.eq_ignore_ascii_case("no-store") {
                    requested = Some(0);
                    break;
                }
                if key.eq_ignore_ascii_case("max-age")
                    && let Some(n) = value.and_then(|v| v.parse::<i64>().ok())
                {
                    requested = Some(n);
                }
            }
        }
        if requested.is_none()
            && let Some(text) = &expires
        {
            requested = Some(match httpdate::parse_http_date(text) {
                Ok(at) => match at.duration_since(now) {
                    Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
                },
                Err(_) => 0,
            });
        }
        let synapse_seconds = match requested {
            None => DEFAULT_CACHE.as_secs(),
            Some(n) => {
                let n = u64::try_from(n).unwrap_or(0);
                n.clamp(MIN_CACHE.as_secs(), MAX_CACHE.as_secs())
            }
        };
        CachePolicy {
            cache_control,
            expires,
            requested_seconds: requested,
            synapse_seconds,
        }
    }
}

fn joined(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The well-known lookup with everything a report shows about it.
#[derive(Debug)]
pub struct Lookup {
    pub url: String,
    pub redirects: Vec<Redirect>,
    /// The final answer, when there was one.
    pub response: Option<Exchange>,
    /// Why there is no usable answer, when there is none.
    pub error: Option<FetchError>,
    pub outcome: Outcome,
    /// Only for a 200 answer.
    pub cache: Option<CachePolicy>,
}

impl Lookup {
    pub fn content_type(&self) -> Option<&str> {
        self.response
            .as_ref()
            .and_then(|r| r.header("content-type"))
    }
}

/// Fetches and interprets `https://<host>/.well-known/matrix/server`.
pub async fn lookup(client: &Client, dns: &Dns, name: &ServerName) -> Lookup {
    // The well-known file lives on the hostname alone, on 443, whatever port the name has.
    let host = match ServerName::parse(&bracketed_host(name)) {
        Ok(host) => host,
        Err(_) => name.clone(),
    };
    let url = HttpsUrl::new(host, PATH);
    let fetch = client.fetch(dns, &url, MAX_SIZE).await;
    let (response, error) = match fetch.result {
        Ok(exchange) => (Some(exchange), None),
        Err(e) => (None, Some(e)),
    };
    let (outcome, cache) = match &response {
        None => (Outcome::Unreachable, None),
        Some(r) if r.status != StatusCode::OK => (Outcome::Status(r.status.as_u16()), None),
        Some(r) => (
            parse(&r.body),
            Some(CachePolicy::from_headers(&r.headers, SystemTime::now())),
        ),
    };
    Lookup {
        url: fetch.url,
        redirects: fetch.redirects,
        response,
        error,
        outcome,
        cache,
    }
}

/// The host of a server name as written in a URL authority.
pub fn bracketed_host(name: &ServerName) -> String {
    match name.host() {
        crate::config::Host::V6(ip) => format!("[{ip}]"),
        _ => name.host_str(),
    }
}

/// Interprets a 200 body; the content type does not matter (spec: parse it as JSON whatever it
/// says).
pub fn parse(body: &[u8]) -> Outcome {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Outcome::NotJson(e.to_string()),
    };
    let Some(object) = value.as_object() else {
        return Outcome::NotJson("the body is JSON but not an object".into());
    };
    let Some(text) = object.get("m.server").and_then(|v| v.as_str()) else {
        return Outcome::NoServerKey;
    };
    match ServerName::parse(text) {
        Ok(name) => Outcome::Delegated(name),
        Err(reason) => Outcome::InvalidServerName {
            value: text.to_owned(),
            reason,
        },
    }
}
