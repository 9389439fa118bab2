use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const PUBLIC: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
const LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

fn policy() -> Policy {
    Policy {
        allow_admin: vec!["10.0.0.0/8".parse().unwrap()],
        extra_prefixes: vec!["/_conduwuit/".into()],
        ..Policy::default()
    }
}

fn get(role: Role, path: &str) -> Route {
    classify(role, &Method::GET, path, PUBLIC, &policy())
}

#[test]
fn well_known_only_on_https() {
    assert_eq!(
        get(Role::Https, "/.well-known/matrix/server"),
        Route::WellKnown(WellKnownFile::Server)
    );
    assert_eq!(
        get(Role::Https, "/.well-known/matrix/client"),
        Route::WellKnown(WellKnownFile::Client)
    );
    assert_eq!(
        get(Role::Https, "/.well-known/matrix/support"),
        Route::WellKnown(WellKnownFile::Support)
    );
    assert_eq!(
        get(Role::Federation, "/.well-known/matrix/server"),
        Route::NotFound
    );
    assert_eq!(
        get(Role::Https, "/.well-known/matrix/other"),
        Route::NotFound
    );
}

#[test]
fn matrix_paths_forwarded() {
    for role in [Role::Https, Role::Federation] {
        assert_eq!(
            get(role, "/_matrix/federation/v1/version"),
            Route::Forward(Class::Federation)
        );
        assert_eq!(
            get(role, "/_matrix/key/v2/server"),
            Route::Forward(Class::Keys)
        );
        assert_eq!(
            get(role, "/_matrix/media/v3/download/a/b"),
            Route::Forward(Class::Media)
        );
        assert_eq!(
            get(role, "/_matrix/client/versions"),
            Route::Forward(Class::Client)
        );
        assert_eq!(
            get(role, "/_matrix/static/"),
            Route::Forward(Class::OtherMatrix)
        );
    }
    assert_eq!(
        get(Role::Https, "/_synapse/client/pick_idp"),
        Route::Forward(Class::SynapseClient)
    );
    assert_eq!(
        get(Role::Federation, "/_synapse/client/pick_idp"),
        Route::NotFound
    );
    assert_eq!(
        get(Role::Https, "/_conduwuit/server_version"),
        Route::Forward(Class::Extra)
    );
    assert_eq!(
        get(Role::Federation, "/_conduwuit/server_version"),
        Route::NotFound
    );
}

#[test]
fn everything_else_not_found() {
    for path in [
        "/",
        "/index.html",
        "/_matrixx/",
        "/_matrix",
        "/health",
        "/_synapse/clientx",
    ] {
        assert_eq!(get(Role::Https, path), Route::NotFound, "{path}");
    }
}

#[test]
fn internal_paths_refused_unless_allowed() {
    for path in [
        "/_synapse/admin/v1/users",
        "/_synapse/admin",
        "/_synapse/%61dmin/v1/users",
        "//_synapse/admin/v1",
        "/_synapse//admin/v1",
        "/_synapse%2Fadmin/v1",
    ] {
        assert_eq!(
            get(Role::Https, path),
            Route::Refuse(Refusal::Internal(InternalPath::SynapseAdmin)),
            "{path}"
        );
    }
    assert_eq!(
        get(Role::Https, "/_synapse/metrics"),
        Route::Refuse(Refusal::Internal(InternalPath::SynapseMetrics))
    );
    assert_eq!(
        get(Role::Https, "/_synapse/replication/x"),
        Route::Refuse(Refusal::Internal(InternalPath::SynapseReplication))
    );
    let p = policy();
    assert_eq!(
        classify(
            Role::Https,
            &Method::GET,
            "/_synapse/admin/v1/users",
            LAN,
            &p
        ),
        Route::Forward(Class::Internal(InternalPath::SynapseAdmin))
    );
    // An IPv4 peer seen through a dual-stack socket matches IPv4 networks.
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 9, 9, 9).to_ipv6_mapped());
    assert_eq!(
        classify(
            Role::Https,
            &Method::GET,
            "/_synapse/admin/v1/users",
            mapped,
            &p
        ),
        Route::Forward(Class::Internal(InternalPath::SynapseAdmin))
    );
    // Allowed networks apply to the https listener only; federation never exposes them.
    assert_eq!(
        classify(
            Role::Federation,
            &Method::GET,
            "/_synapse/admin/v1/users",
            LAN,
            &p
        ),
        Route::Refuse(Refusal::Internal(InternalPath::SynapseAdmin))
    );
    // Metrics are not allowed for anyone in this policy.
    assert_eq!(
        classify(Role::Https, &Method::GET, "/_synapse/metrics", LAN, &p),
        Route::Refuse(Refusal::Internal(InternalPath::SynapseMetrics))
    );
    assert_eq!(
        classify(
            Role::Https,
            &Method::GET,
            "/_synapse/admin",
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            &p
        ),
        Route::Refuse(Refusal::Internal(InternalPath::SynapseAdmin))
    );
}

#[test]
fn dot_segments_refused() {
    for path in [
        "/_matrix/../_synapse/admin",
        "/_matrix/./client",
        "/_matrix/%2e%2e/_synapse/admin",
        "/_matrix/%2E%2E/x",
        "/_matrix/.%2e/x",
        "/_matrix/%2e/x",
        "/_matrix/client/..",
        "/_matrix/client/..%2F..%2F_synapse/admin",
        "/_matrix/client/..%5C_synapse",
    ] {
        assert_eq!(
            get(Role::Https, path),
            Route::Refuse(Refusal::DotSegment),
            "{path}"
        );
        assert_eq!(
            get(Role::Federation, path),
            Route::Refuse(Refusal::DotSegment),
            "{path}"
        );
    }
    for path in [
        "/_matrix/client/v3/rooms/!a:b.c/state/m.room.name/",
        "/_matrix/federation/v1/event/$abc%2Bdef%2F...x",
        "/_matrix/client/r0/.well-known",
        "/_matrix/media/v3/download/example.com/a..b",
    ] {
        assert!(
            matches!(get(Role::Https, path), Route::Forward(_)),
            "{path}"
        );
    }
}

#[test]
fn acme_http01_on_plain_http_only() {
    let p = policy();
    let path = "/.well-known/acme-challenge/tok_en-123";
    assert_eq!(
        classify(Role::Http, &Method::GET, path, PUBLIC, &p),
        Route::AcmeHttp01
    );
    assert_eq!(
        classify(Role::Http, &Method::POST, path, PUBLIC, &p),
        Route::Refuse(Refusal::PlainHttp)
    );
    assert_eq!(
        classify(Role::Https, &Method::GET, path, PUBLIC, &p),
        Route::NotFound
    );
}

#[test]
fn plain_http_redirects_get_and_head_only() {
    let p = policy();
    for m in [Method::GET, Method::HEAD] {
        assert_eq!(
            classify(Role::Http, &m, "/_matrix/client/versions", PUBLIC, &p),
            Route::RedirectToHttps
        );
    }
    for m in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        assert_eq!(
            classify(Role::Http, &m, "/_matrix/client/versions", PUBLIC, &p),
            Route::Refuse(Refusal::PlainHttp)
        );
    }
}
