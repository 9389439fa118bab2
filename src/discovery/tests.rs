use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::https::HttpsUrl;
use super::wellknown::{CachePolicy, Outcome, parse};
use super::*;

#[test]
fn urls_join_like_a_browser() {
    let base = HttpsUrl::parse("https://example.com/.well-known/matrix/server").unwrap();
    assert_eq!(base.port(), 443);
    assert_eq!(
        base.join("/other").unwrap().to_string(),
        "https://example.com/other"
    );
    assert_eq!(
        base.join("client").unwrap().to_string(),
        "https://example.com/.well-known/matrix/client"
    );
    let moved = base
        .join("https://www.example.com:8443/.well-known/matrix/server")
        .unwrap();
    assert_eq!(moved.authority.as_str(), "www.example.com:8443");
    assert_eq!(moved.port(), 8443);
    assert_eq!(
        base.join("//www.example.com/x").unwrap().to_string(),
        "https://www.example.com/x"
    );
    assert!(base.join("http://example.com/x").is_err(), "not https");
    assert!(HttpsUrl::parse("https://user@example.com/").is_err());
    let v6 = HttpsUrl::parse("https://[::1]:8448/x").unwrap();
    assert_eq!(v6.authority.ip(), Some("::1".parse().unwrap()));
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn cache_headers_read_like_synapse() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let c = CachePolicy::from_headers(&headers(&[("cache-control", "public, max-age=3600")]), now);
    assert_eq!((c.requested_seconds, c.synapse_seconds), (Some(3600), 3600));
    let c = CachePolicy::from_headers(&headers(&[]), now);
    assert_eq!((c.requested_seconds, c.synapse_seconds), (None, 86400));
    let c = CachePolicy::from_headers(&headers(&[("cache-control", "no-store, max-age=60")]), now);
    assert_eq!((c.requested_seconds, c.synapse_seconds), (Some(0), 300));
    let c = CachePolicy::from_headers(&headers(&[("cache-control", "max-age=999999")]), now);
    assert_eq!(c.synapse_seconds, 172800);
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(7200));
    let mut h = HeaderMap::new();
    h.insert("expires", expires.parse().unwrap());
    let c = CachePolicy::from_headers(&h, now);
    assert_eq!((c.requested_seconds, c.synapse_seconds), (Some(7200), 7200));
    let c = CachePolicy::from_headers(&headers(&[("expires", "0")]), now);
    assert_eq!((c.requested_seconds, c.synapse_seconds), (Some(0), 300));
}

#[test]
fn well_known_bodies() {
    assert_eq!(
        parse(br#"{"m.server": "matrix.example.com:443"}"#),
        Outcome::Delegated(crate::config::ServerName::parse("matrix.example.com:443").unwrap())
    );
    assert!(matches!(parse(b"<html></html>"), Outcome::NotJson(_)));
    assert!(matches!(parse(b"[]"), Outcome::NotJson(_)));
    assert_eq!(parse(br#"{"m.homeserver": {}}"#), Outcome::NoServerKey);
    assert_eq!(parse(br#"{"m.server": 8448}"#), Outcome::NoServerKey);
    assert!(matches!(
        parse(br#"{"m.server": "https://matrix.example.com"}"#),
        Outcome::InvalidServerName { .. }
    ));
}

#[test]
fn rules_name_their_spec_step() {
    assert_eq!(Rule::DelegatedLegacySrv.spec_step(), "3.4");
    assert!(Rule::LegacySrv.is_deprecated());
    assert!(!Rule::Srv.is_deprecated());
    assert_eq!(
        serde_json::to_value(Rule::DelegatedDefaultPort).unwrap(),
        "delegated_default_port"
    );
}

#[test]
fn srv_unavailable_marker() {
    let dot = SrvRecord {
        priority: 0,
        weight: 0,
        port: 0,
        target: ".".into(),
    };
    assert!(dot.is_unavailable_marker());
}
