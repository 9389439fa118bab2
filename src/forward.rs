//! Forwarding: one client request to the backend and its response back, both bodies streamed.
//!
//! The request-target goes out byte for byte (X-Matrix signatures cover it), and so do the
//! method, the body and every `Authorization` header. What changes is only what must: hop-by-hop
//! headers go, `X-Forwarded-For` is the peer (appended to only behind a trusted proxy),
//! `X-Forwarded-Proto` is `https`, and `Host` is the client's, taken from `:authority` for h2.
//! Failures become a [`ProxyError`]; this module never builds an error body itself.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, Version};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::respond::{ProxyError, ResponseBody};
use crate::route::canonical_ip;
use crate::upstream::{BodySlot, ClientBody, RequestBody, Upstream, UpstreamError};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Forwards requests to one backend.
#[derive(Clone)]
pub struct Forwarder {
    upstream: Upstream,
    trusted_proxies: Vec<IpNet>,
    max_body: u64,
    response_timeout: Duration,
}

impl Forwarder {
    pub fn new(
        upstream: Upstream,
        trusted_proxies: Vec<IpNet>,
        max_body: u64,
        response_timeout: Duration,
    ) -> Self {
        Forwarder {
            upstream,
            trusted_proxies,
            max_body,
            response_timeout,
        }
    }

    /// Forwards `req`; `forwarded_for` is the peer as [`forwarded_for_value`] writes it;
    /// `bytes_in` is set, for a request with a body, to the count of its bytes streamed to the
    /// backend.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
        forwarded_for: &HeaderValue,
        bytes_in: &OnceLock<Arc<AtomicU64>>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if declared_length(req.headers()).is_some_and(|n| n > self.max_body) {
            return Err(ProxyError::TooLarge {
                limit: self.max_body,
            });
        }
        let (mut parts, body) = req.into_parts();
        // Origin-form, the client's bytes: h2's scheme and authority are not part of it.
        let uri = http::Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        let host = client_host(&parts);
        let trusted = self.is_trusted(peer);
        let headers = &mut parts.headers;
        prepare_request_headers(headers, forwarded_for, trusted);
        if let Some(host) = host {
            headers.insert(HOST, host);
        }

        // Most requests have no body: they go on a backend connection the relay drives, with
        // their head written once and the response read in place.
        if http_body::Body::is_end_stream(&body) {
            let head = crate::relay::request_head(&parts.method, uri_target(&uri), &parts.headers);
            let sent = crate::relay::send(&self.upstream, &head, &parts.method);
            let resp = tokio::select! {
                result = sent => result.map_err(|e| self.classify_error(&e))?,
                _ = tokio::time::sleep(self.response_timeout) => {
                    return Err(ProxyError::BackendTimeout(self.response_timeout));
                }
            };
            // Its hop-by-hop headers were left out as it was read.
            return Ok(resp.map(ResponseBody::raw));
        }
        let (body, slot) = {
            let slot = BodySlot::new(body, parts.version);
            let count = bytes_in.get_or_init(Default::default).clone();
            let client = ClientBody::new(slot.clone(), count);
            let limited = Limited::new(client, self.max_body as usize);
            (RequestBody::Client(limited), Some(slot))
        };
        let mut upstream_req = Request::new(body);
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = Version::HTTP_11;
        *upstream_req.headers_mut() = parts.headers;

        // The timeout covers the backend's thinking, not the client's upload: it starts once
        // the request body has been handed over in full (at once for a request without one).
        let sent = self.upstream.send(upstream_req);
        let backend_slow = async {
            if let Some(slot) = &slot {
                slot.sent().await;
            }
            tokio::time::sleep(self.response_timeout).await;
        };
        let resp = tokio::select! {
            result = sent => match result {
                Ok(resp) => resp,
                Err(e) => return Err(self.classify_error(&e)),
            },
            _ = backend_slow => return Err(ProxyError::BackendTimeout(self.response_timeout)),
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = ResponseBody::upstream(body);
        Ok(Response::from_parts(
            parts,
            match slot {
                Some(slot) => body.with_request_body(slot),
                None => body,
            },
        ))
    }

    pub(crate) fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Whether `peer` is one of `forward.trusted_proxies`.
    pub(crate) fn is_trusted(&self, peer: IpAddr) -> bool {
        if self.trusted_proxies.is_empty() {
            return false;
        }
        let peer = canonical_ip(peer);
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }

    fn classify_error(&self, e: &UpstreamError) -> ProxyError {
        let detail = error_chain(e);
        let exchange = match e {
            UpstreamError::Connect(_) => return ProxyError::BackendUnreachable(detail),
            UpstreamError::Relay(_) => return ProxyError::BackendFailed(detail),
            UpstreamError::Exchange(h) => h,
        };
        // A user error is the request body we were streaming: the client's side, or over the
        // limit if that is what ended it.
        let mut source: Option<&(dyn StdError + 'static)> = exchange.source();
        while let Some(s) = source {
            if s.is::<LengthLimitError>() {
                return ProxyError::TooLarge {
                    limit: self.max_body,
                };
            }
            source = s.source();
        }
        if exchange.is_user() {
            ProxyError::ClientBody(detail)
        } else {
            ProxyError::BackendFailed(detail)
        }
    }
}

fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An origin-form URI as it goes on the request line.
fn uri_target(uri: &http::Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// The `Host` the client addressed: `:authority` for h2 (and absolute-form h1), else `Host`.
fn client_host(parts: &http::request::Parts) -> Option<HeaderValue> {
    if let Some(authority) = parts.uri.authority()
        && (parts.version == Version::HTTP_2 || !parts.headers.contains_key(HOST))
    {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    parts.headers.get(HOST).cloned()
}

/// The hop-by-hop headers of RFC 9110 §7.6.1 and their old relatives; `Connection` first.
/// `Expect` is among them: the proxy answers `100-continue` itself.
static HOP_BY_HOP: [HeaderName; 10] = [
    CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    EXPECT,
    http::header::PROXY_AUTHORIZATION,
    http::header::PROXY_AUTHENTICATE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// Forwarding headers a client may not set itself unless it is a trusted proxy. Synapse believes
/// the leftmost `X-Forwarded-For` entry; the others are dropped from an untrusted peer.
static SPOOFABLE: [HeaderName; 3] = [X_FORWARDED_HOST, X_REAL_IP, FORWARDED];

/// Removes the headers that describe one hop, not the message, including any named in
/// `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, false);
}

// One pass over the names, no hashing, finds what to remove: most messages carry nothing of it
// but `Connection: keep-alive`, whose token names no other header.
fn strip(headers: &mut HeaderMap, spoofable_too: bool) {
    let mut found: u16 = 0;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found |= 1 << i;
        } else if spoofable_too && let Some(i) = SPOOFABLE.iter().position(|h| h == name) {
            found |= 1 << (HOP_BY_HOP.len() + i);
        }
    }
    if found == 0 {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    if found & 1 != 0 {
        let tokens = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            // `close` names no header, and the fixed ones go anyway.
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            {
                continue;
            }
            // Never let a client strip what the proxy vouches for or what signs the request.
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                && name != http::header::AUTHORIZATION
                && name != HOST
            {
                named.push(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().chain(SPOOFABLE.iter()).enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
}

/// A peer address as `X-Forwarded-For` writes it: IPv4 for an IPv4-mapped IPv6 peer. Made once
/// per connection.
pub fn forwarded_for_value(peer: IpAddr) -> HeaderValue {
    let text = canonical_ip(peer).to_string();
    // An IP address is always a valid header value; the fallback is never taken.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Prepares a request's headers for the backend: hop-by-hop headers go, `X-Forwarded-For` is the
/// peer (appended to the client's list only behind a trusted proxy), `X-Forwarded-Proto` is
/// `https`, and from an untrusted peer every other forwarding header is dropped.
pub fn prepare_request_headers(headers: &mut HeaderMap, peer: &HeaderValue, trusted: bool) {
    strip(headers, !trusted);
    let xff = if trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut list = String::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(v) = value.to_str() {
                list.push_str(v);
                list.push_str(", ");
            }
        }
        list.push_str(peer.to_str().unwrap_or(""));
        HeaderValue::try_from(list).unwrap_or_else(|_| peer.clone())
    } else {
        peer.clone()
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn hop_by_hop_removed_authorization_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            "keep-alive, x-secret, authorization".parse().unwrap(),
        );
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(KEEP_ALIVE.clone(), "timeout=5".parse().unwrap());
        h.insert(TE, "trailers".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        h.append(
            "authorization",
            "X-Matrix origin=a,key=\"k1\",sig=\"s1\"".parse().unwrap(),
        );
        h.append(
            "authorization",
            "X-Matrix origin=a,key=\"k2\",sig=\"s2\"".parse().unwrap(),
        );
        h.insert("x-matrix-other", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get(CONNECTION).is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get(&KEEP_ALIVE).is_none());
        assert!(h.get(TE).is_none());
        assert!(h.get(UPGRADE).is_none());
        assert_eq!(h.get_all("authorization").iter().count(), 2);
        assert_eq!(h["x-matrix-other"], "kept");
    }

    #[test]
    fn forwarded_for_overwritten_unless_trusted() {
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        h.append(&X_FORWARDED_FOR, "7.7.7.7".parse().unwrap());
        h.insert(&X_FORWARDED_PROTO, "http".parse().unwrap());
        h.insert(&X_REAL_IP, "6.6.6.6".parse().unwrap());
        let peer = forwarded_for_value(peer);
        let mut untrusted = h.clone();
        prepare_request_headers(&mut untrusted, &peer, false);
        assert_eq!(untrusted.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(untrusted[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(untrusted[&X_FORWARDED_PROTO], "https");
        assert!(untrusted.get(&X_REAL_IP).is_none());
        let mut trusted = h;
        prepare_request_headers(&mut trusted, &peer, true);
        assert_eq!(trusted[&X_FORWARDED_FOR], "6.6.6.6, 7.7.7.7, 192.0.2.1");
    }

    #[test]
    fn mapped_ipv4_peer_written_as_ipv4() {
        let peer = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
        assert_eq!(forwarded_for_value(peer), "192.0.2.9");
    }
}
