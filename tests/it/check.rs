//! `matrix-edge check` against deployments built inside the test: a DNS server with a zone per
//! case, TLS sites with certificates from a test CA on 127.0.N.x:443 and :8448 (each test its
//! own N, so tests run in parallel), and a homeserver stand-in that signs its keys.
//!
//! Every correct deployment must pass, every broken one must fail on the right check with the
//! right hint. One deployment is the real proxy in front of the homeserver.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};
use std::time::Duration;

use matrix_edge::check::{self, Check, CheckId, Options, PATH_PROBE, Report, Status};
use matrix_edge::config::ServerName;
use matrix_edge::discovery::{ResolverSource, Rule};

use crate::support::Proxy;
use crate::support::dns::{TestDns, Zone};
use crate::support::homeserver::{
    Cert, Handler, Homeserver, Req, Routes, Site, ca_der, json_response, mangle,
};
use crate::support::pki::TestCa;
use crate::support::proxy::Ports;

const BIN: &str = env!("CARGO_BIN_EXE_matrix-edge");

fn ip(n: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, n, host))
}

fn at(n: u8, host: u8, port: u16) -> String {
    format!("127.0.{n}.{host}:{port}")
}

/// One test's deployment on 127.0.`n`.x: its DNS server, the CA every site's certificate comes
/// from, and the checker's `--ca`.
struct World {
    n: u8,
    ca: TestCa,
    dir: tempfile::TempDir,
    dns: TestDns,
}

impl World {
    /// Serves `zone` and starts an empty deployment on 127.0.`n`.x.
    async fn new(n: u8, zone: Zone) -> World {
        World {
            n,
            ca: TestCa::new(),
            dir: tempfile::tempdir().unwrap(),
            dns: zone.serve().await,
        }
    }

    fn cert(&self, names: &[&str]) -> Cert {
        Cert::new(&self.ca, names)
    }

    fn options(&self) -> Options {
        Options {
            resolver: ResolverSource::At(self.dns.addr),
            extra_roots: ca_der(&self.ca, self.dir.path()),
            timeout: Duration::from_secs(5),
        }
    }

    async fn check(&self, name: &str) -> Report {
        run_check(name, &self.options()).await
    }

    /// `handler` over TLS on 127.0.`n`.`host`:`port` with `cert`.
    async fn site(&self, host: u8, port: u16, cert: &Cert, handler: Handler) -> Site {
        Site::tls(&at(self.n, host, port), cert, handler).await
    }

    /// The well-known files of `routes` on 127.0.`n`.`host`:443, its certificate for `name`.
    async fn front(&self, host: u8, name: &str, routes: Routes) -> Site {
        self.site(host, 443, &self.cert(&[name]), routes.handler())
            .await
    }

    /// A homeserver for `server_name` on 127.0.`n`.`host`:`port`, its certificate for
    /// `cert_names`.
    async fn homeserver(
        &self,
        server_name: &str,
        host: u8,
        port: u16,
        cert_names: &[&str],
    ) -> Site {
        self.homeserver_with(server_name, host, port, &self.cert(cert_names))
            .await
    }

    /// The same with a certificate of the test's own making.
    async fn homeserver_with(&self, server_name: &str, host: u8, port: u16, cert: &Cert) -> Site {
        let hs = Homeserver::new(server_name);
        self.site(host, port, cert, hs.handler()).await
    }
}

/// `check::check` for `name`, given 90s to finish.
async fn run_check(name: &str, options: &Options) -> Report {
    let name = ServerName::parse(name).unwrap();
    tokio::time::timeout(Duration::from_secs(90), check::check(&name, options))
        .await
        .expect("the check finished within 90s")
}

/// The `matrix-edge` binary with `args`, off the async runtime.
async fn run_bin(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(args).output().unwrap())
        .await
        .unwrap()
}

fn checks(r: &Report, id: CheckId) -> Vec<&Check> {
    r.checks.iter().filter(|c| c.id == id).collect()
}

fn text(r: &Report) -> String {
    check::render::text(r)
}

/// Nothing failed, nothing warned.
fn assert_clean(r: &Report) {
    assert!(
        r.checks.iter().all(|c| c.status == Status::Ok),
        "expected a clean pass:\n{}",
        text(r)
    );
    assert_eq!(r.exit_code(), 0);
}

/// `id` failed (on some subject) with a hint containing every one of `words`; exit code 1.
fn assert_fails(r: &Report, id: CheckId, words: &[&str]) {
    let failed: Vec<&Check> = checks(r, id)
        .into_iter()
        .filter(|c| c.status == Status::Failure)
        .collect();
    assert!(!failed.is_empty(), "expected {id:?} to fail:\n{}", text(r));
    let hint = failed[0].hint.clone().unwrap_or_default();
    for w in words {
        assert!(
            hint.contains(w),
            "hint of {id:?} lacks `{w}`: {hint}\n{}",
            text(r)
        );
    }
    assert_eq!(r.exit_code(), 1, "{}", text(r));
}

/// No discovery step asked anything containing `what`.
fn assert_never_asked(r: &Report, what: &str) {
    assert!(
        !r.discovery.steps.iter().any(|s| s.asked.contains(what)),
        "asked for {what}: {}",
        text(r)
    );
}

/// The federation checks of one target all passed.
fn assert_target_ok(r: &Report, addr: &str) {
    for id in [
        CheckId::Connect,
        CheckId::CertificateTrust,
        CheckId::CertificateName,
        CheckId::CertificateExpiry,
        CheckId::FederationVersion,
        CheckId::ServerKeys,
        CheckId::KeysServerName,
        CheckId::KeysValidity,
        CheckId::KeysSignature,
        CheckId::PathIntegrity,
    ] {
        let c = checks(r, id)
            .into_iter()
            .find(|c| c.subject.as_deref() == Some(addr))
            .unwrap_or_else(|| panic!("no {id:?} check for {addr}:\n{}", text(r)));
        assert_eq!(c.status, Status::Ok, "{id:?} on {addr}:\n{}", text(r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_well_known_with_port_passes() {
    let n = 11;
    let zone = Zone::default()
        .addr("wkport.test", ip(n, 1))
        .addr("hs.wkport.test", ip(n, 2));
    let w = World::new(n, zone).await;
    let _front = w
        .front(
            1,
            "wkport.test",
            Routes::new()
                .server_file("hs.wkport.test:443")
                .client_file("https://hs.wkport.test", true)
                .support_file(serde_json::json!({"contacts": [{"role": "m.role.admin", "email_address": "admin@wkport.test"}]})),
        )
        .await;
    let back = w
        .homeserver("wkport.test", 2, 443, &["hs.wkport.test"])
        .await;

    let r = w.check("wkport.test").await;
    assert_clean(&r);
    assert_eq!(
        r.discovery.delegated_to.as_deref(),
        Some("hs.wkport.test:443")
    );
    assert_eq!(r.discovery.targets.len(), 1);
    let t = &r.discovery.targets[0];
    assert_eq!(t.address.to_string(), at(n, 2, 443));
    assert_eq!(
        t.host, "hs.wkport.test:443",
        "step 3.2 sends the port in Host"
    );
    assert_eq!(t.sni.as_deref(), Some("hs.wkport.test"));
    assert_eq!(t.rule, Rule::DelegatedPort);
    assert_target_ok(&r, &at(n, 2, 443));
    assert!(r.federation_ok && r.client_ok);
    assert_eq!(r.client.base_url.as_deref(), Some("https://hs.wkport.test"));
    assert_eq!(r.client.support_status, Some(200));
    // What the homeserver saw is what the report says was sent.
    let seen = back.seen.all();
    assert!(seen.iter().any(|s| s.target == "/_matrix/key/v2/server"
        && s.host.as_deref() == Some("hs.wkport.test:443")
        && s.sni.as_deref() == Some("hs.wkport.test")));
    assert!(seen.iter().any(|s| s.target == PATH_PROBE), "{seen:?}");
    let text = text(&r);
    assert!(
        text.contains("asked   GET https://wkport.test/.well-known/matrix/server"),
        "{text}"
    );
    assert!(
        text.contains("Host: hs.wkport.test:443, SNI: hs.wkport.test"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_well_known_without_port_falls_to_8448() {
    let n = 12;
    let zone = Zone::default()
        .addr("wknoport.test", ip(n, 1))
        .addr("hs.wknoport.test", ip(n, 2));
    let w = World::new(n, zone).await;
    let _front = w
        .front(
            1,
            "wknoport.test",
            Routes::new().server_file("hs.wknoport.test"),
        )
        .await;
    let _hs = w
        .homeserver("wknoport.test", 2, 8448, &["hs.wknoport.test"])
        .await;

    let r = w.check("wknoport.test").await;
    assert_clean(&r);
    let t = &r.discovery.targets[0];
    assert_eq!(t.address.to_string(), at(n, 2, 8448));
    assert_eq!(
        t.host, "hs.wknoport.test",
        "no port in Host after a port-less m.server"
    );
    assert_eq!(t.rule, Rule::DelegatedDefaultPort);
    // Both SRV names of the delegated host were asked, in order, before 8448.
    let asked: Vec<&str> = r.discovery.steps.iter().map(|s| s.asked.as_str()).collect();
    let fed = asked
        .iter()
        .position(|a| *a == "SRV _matrix-fed._tcp.hs.wknoport.test")
        .unwrap();
    let legacy = asked
        .iter()
        .position(|a| *a == "SRV _matrix._tcp.hs.wknoport.test")
        .unwrap();
    assert!(fed < legacy, "{asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_delegated_matrix_fed_srv_passes() {
    let n = 13;
    let zone = Zone::default()
        .addr("wksrv.test", ip(n, 1))
        .srv(
            "_matrix-fed._tcp.hs.wksrv.test",
            10,
            5,
            8449,
            "box.wksrv.test",
        )
        .addr("box.wksrv.test", ip(n, 2));
    let w = World::new(n, zone).await;
    let _front = w
        .front(1, "wksrv.test", Routes::new().server_file("hs.wksrv.test"))
        .await;
    // With SRV the certificate covers the delegated name, not the SRV target.
    let _hs = w
        .homeserver("wksrv.test", 2, 8449, &["hs.wksrv.test"])
        .await;
    let r = w.check("wksrv.test").await;
    assert_clean(&r);
    let t = &r.discovery.targets[0];
    assert_eq!(t.address.to_string(), at(n, 2, 8449));
    assert_eq!(
        (t.host.as_str(), t.rule),
        ("hs.wksrv.test", Rule::DelegatedSrv)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_matrix_fed_srv_keeps_the_server_name() {
    let n = 14;
    let zone = Zone::default()
        .srv("_matrix-fed._tcp.srv.test", 10, 0, 8448, "box.srv.test")
        .addr("box.srv.test", ip(n, 2));
    let w = World::new(n, zone).await;
    // No well-known at all: nothing listens on srv.test:443.
    let hs = w.homeserver("srv.test", 2, 8448, &["srv.test"]).await;
    let r = w.check("srv.test").await;
    assert_clean(&r);
    let t = &r.discovery.targets[0];
    assert_eq!(
        (t.host.as_str(), t.sni.as_deref()),
        ("srv.test", Some("srv.test"))
    );
    assert_eq!(t.rule, Rule::Srv);
    assert!(
        hs.seen
            .all()
            .iter()
            .all(|s| s.sni.as_deref() == Some("srv.test"))
    );
    // The legacy name is never asked once `_matrix-fed` has a record.
    assert_never_asked(&r, "_matrix._tcp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_legacy_srv_only_passes_with_a_deprecation_warning() {
    let n = 15;
    let zone = Zone::default()
        .srv("_matrix._tcp.legacy.test", 10, 0, 8448, "box.legacy.test")
        .addr("box.legacy.test", ip(n, 2));
    let w = World::new(n, zone).await;
    let _hs = w.homeserver("legacy.test", 2, 8448, &["legacy.test"]).await;
    let r = w.check("legacy.test").await;
    assert_eq!(r.exit_code(), 0, "{}", text(&r));
    assert_eq!(r.discovery.targets[0].rule, Rule::LegacySrv);
    assert_target_ok(&r, &at(n, 2, 8448));
    let srv = checks(&r, CheckId::Srv);
    assert_eq!(srv.len(), 1);
    assert_eq!(srv[0].status, Status::Warning);
    assert!(
        srv[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("_matrix-fed._tcp.legacy.test")
    );
}

/// "Broken but present": the `_matrix-fed._tcp` name answers, but with SERVFAIL. Homeservers
/// (Synapse since #16137, gomatrixserverlib) fall back only on NXDOMAIN/no data, so the working
/// legacy record and the working port 8448 must both be left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_servfail_on_matrix_fed_does_not_fall_through() {
    let n = 16;
    let zone = Zone::default()
        .servfail("_matrix-fed._tcp.broken.test")
        .srv("_matrix._tcp.broken.test", 10, 0, 8448, "box.broken.test")
        .addr("box.broken.test", ip(n, 2))
        .addr("broken.test", ip(n, 3));
    let w = World::new(n, zone).await;
    let legacy = w.homeserver("broken.test", 2, 8448, &["broken.test"]).await;
    let plain = w.homeserver("broken.test", 3, 8448, &["broken.test"]).await;
    let r = w.check("broken.test").await;
    assert_fails(&r, CheckId::Srv, &["no record", "error", "SERVFAIL"]);
    assert!(r.discovery.targets.is_empty(), "{}", text(&r));
    assert!(!r.federation_ok);
    assert!(
        legacy.seen.all().is_empty() && plain.seen.all().is_empty(),
        "nothing may be contacted after a failed _matrix-fed lookup"
    );
    assert_never_asked(&r, "_matrix._tcp");
}

/// The other "present but unusable" answer: RFC 2782's `.` target.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_srv_dot_target_means_unavailable() {
    let n = 17;
    let zone = Zone::default()
        .srv("_matrix-fed._tcp.dot.test", 0, 0, 0, ".")
        .srv("_matrix._tcp.dot.test", 10, 0, 8448, "box.dot.test")
        .addr("box.dot.test", ip(n, 2));
    let w = World::new(n, zone).await;
    let legacy = w.homeserver("dot.test", 2, 8448, &["dot.test"]).await;
    let r = w.check("dot.test").await;
    assert_fails(&r, CheckId::Srv, &["`.`", "delete the record"]);
    assert!(legacy.seen.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_a_record_only_uses_8448() {
    let n = 18;
    let w = World::new(n, Zone::default().addr("aonly.test", ip(n, 1))).await;
    let _hs = w.homeserver("aonly.test", 1, 8448, &["aonly.test"]).await;
    let r = w.check("aonly.test").await;
    assert_clean(&r);
    let t = &r.discovery.targets[0];
    assert_eq!(t.address.to_string(), at(n, 1, 8448));
    assert_eq!((t.host.as_str(), t.rule), ("aonly.test", Rule::DefaultPort));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_ip_literal_sends_no_sni() {
    let n = 19;
    let w = World::new(n, Zone::default()).await;
    // With an explicit port (rule 1 with port): the server name is IP:port, any port works.
    let name = at(n, 1, 8449);
    let site = w.homeserver(&name, 1, 8449, &["127.0.19.1"]).await;
    let r = w.check(&name).await;
    assert_clean(&r);
    let t = &r.discovery.targets[0];
    assert_eq!(
        (t.host.as_str(), t.sni.as_deref(), t.rule),
        (name.as_str(), None, Rule::IpLiteral)
    );
    let seen = site.seen.all();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.sni.is_none()), "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.host.as_deref() == Some(name.as_str()))
    );
    assert_never_asked(&r, "well-known");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_cname_is_followed_and_shown() {
    let n = 20;
    let zone = Zone::default()
        .cname("cname.test", "real.cname.test")
        .addr("real.cname.test", ip(n, 1));
    let w = World::new(n, zone).await;
    let _hs = w.homeserver("cname.test", 1, 8448, &["cname.test"]).await;
    let r = w.check("cname.test").await;
    assert_clean(&r);
    assert_eq!(r.discovery.targets[0].host, "cname.test");
    let step = r
        .discovery
        .steps
        .iter()
        .find(|s| s.asked == "A/AAAA cname.test")
        .unwrap();
    assert!(
        step.answer.contains("CNAME real.cname.test"),
        "{}",
        step.answer
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_srv_target_alias_is_a_warning() {
    let n = 21;
    let zone = Zone::default()
        .srv("_matrix-fed._tcp.alias.test", 10, 0, 8448, "fed.alias.test")
        .cname("fed.alias.test", "box.alias.test")
        .addr("box.alias.test", ip(n, 1));
    let w = World::new(n, zone).await;
    let _hs = w.homeserver("alias.test", 1, 8448, &["alias.test"]).await;
    let r = w.check("alias.test").await;
    assert_eq!(r.exit_code(), 0, "{}", text(&r));
    let alias = checks(&r, CheckId::SrvTarget);
    assert_eq!(alias.len(), 1, "{}", text(&r));
    assert_eq!(alias[0].status, Status::Warning);
    assert!(alias[0].hint.as_deref().unwrap().contains("box.alias.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_expired_certificate_fails() {
    let n = 22;
    let w = World::new(n, Zone::default().addr("expired.test", ip(n, 1))).await;
    let cert = Cert::expired(&w.ca, &["expired.test"]);
    let _site = w.homeserver_with("expired.test", 1, 8448, &cert).await;
    let r = w.check("expired.test").await;
    assert_fails(&r, CheckId::CertificateExpiry, &["renew"]);
    let expiry = &checks(&r, CheckId::CertificateExpiry)[0];
    assert!(expiry.message.contains("expired on"), "{}", expiry.message);
    // Reported as expired, not also as untrusted or misnamed.
    for id in [CheckId::CertificateTrust, CheckId::CertificateName] {
        assert_eq!(checks(&r, id)[0].status, Status::Ok, "{}", text(&r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_certificate_expiring_soon_warns() {
    let n = 23;
    let w = World::new(n, Zone::default().addr("soon.test", ip(n, 1))).await;
    let now = time::OffsetDateTime::now_utc();
    let cert = Cert::between(
        &w.ca,
        &["soon.test"],
        now - time::Duration::days(80),
        now + time::Duration::days(5),
    );
    let _site = w.homeserver_with("soon.test", 1, 8448, &cert).await;
    let r = w.check("soon.test").await;
    assert_eq!(r.exit_code(), 0);
    let expiry = &checks(&r, CheckId::CertificateExpiry)[0];
    assert_eq!(expiry.status, Status::Warning, "{}", text(&r));
}

/// With SRV the certificate must cover the server name; one for the SRV target is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_certificate_for_srv_target_fails_with_srv_hint() {
    let n = 24;
    let zone = Zone::default()
        .srv(
            "_matrix-fed._tcp.wrongname.test",
            10,
            0,
            8448,
            "box.wrongname.test",
        )
        .addr("box.wrongname.test", ip(n, 1));
    let w = World::new(n, zone).await;
    let _hs = w
        .homeserver("wrongname.test", 1, 8448, &["box.wrongname.test"])
        .await;
    let r = w.check("wrongname.test").await;
    assert_fails(
        &r,
        CheckId::CertificateName,
        &[
            "with SRV",
            "wrongname.test",
            "not for the SRV target",
            "tls.names",
        ],
    );
    assert_eq!(checks(&r, CheckId::CertificateTrust)[0].status, Status::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_untrusted_certificate_fails() {
    let n = 25;
    let w = World::new(n, Zone::default().addr("selfsigned.test", ip(n, 1))).await;
    let stranger = TestCa::new();
    let cert = Cert::new(&stranger, &["selfsigned.test"]);
    let _site = w.homeserver_with("selfsigned.test", 1, 8448, &cert).await;
    let r = w.check("selfsigned.test").await;
    assert_fails(&r, CheckId::CertificateTrust, &["full chain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_308_on_well_known_fails() {
    let n = 26;
    let zone = Zone::default()
        .addr("r308.test", ip(n, 1))
        .addr("www.r308.test", ip(n, 2))
        .addr("hs.r308.test", ip(n, 3));
    let w = World::new(n, zone).await;
    let _apex = w
        .front(
            1,
            "r308.test",
            Routes::new().redirect(
                "/.well-known/matrix/server",
                308,
                "https://www.r308.test/.well-known/matrix/server",
            ),
        )
        .await;
    let _www = w
        .front(
            2,
            "www.r308.test",
            Routes::new().server_file("hs.r308.test:443"),
        )
        .await;
    let _hs = w.homeserver("r308.test", 3, 443, &["hs.r308.test"]).await;
    let r = w.check("r308.test").await;
    assert_fails(&r, CheckId::WellKnownRedirect, &["308", "Synapse", "301"]);
    let wk = r.discovery.well_known.as_ref().unwrap();
    assert_eq!((wk.redirects.len(), wk.redirects[0].status), (1, 308));
    assert_eq!(wk.status, Some(200));
    assert_eq!(wk.cache.as_ref().unwrap().synapse_seconds, 3600);
    // Followed, reported, and the delegation behind it still checked.
    assert_eq!(
        r.discovery.delegated_to.as_deref(),
        Some("hs.r308.test:443")
    );
    assert_target_ok(&r, &at(n, 3, 443));
    assert!(!r.federation_ok && r.counts.failure == 1, "{}", text(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_301_on_well_known_warns_and_redirect_loops_fail() {
    let n = 27;
    let zone = Zone::default()
        .addr("r301.test", ip(n, 1))
        .addr("loop.test", ip(n, 2))
        .addr("hs.r301.test", ip(n, 3));
    let w = World::new(n, zone).await;
    let _apex = w
        .front(
            1,
            "r301.test",
            Routes::new()
                .redirect("/.well-known/matrix/server", 301, "/matrix-server.json")
                .server_file("hs.r301.test:443")
                .respond("/matrix-server.json", |_| {
                    json_response(200, &serde_json::json!({"m.server": "hs.r301.test:443"}))
                }),
        )
        .await;
    let _hs = w.homeserver("r301.test", 3, 443, &["hs.r301.test"]).await;
    let r = w.check("r301.test").await;
    assert_eq!(r.exit_code(), 0, "{}", text(&r));
    let hops = checks(&r, CheckId::WellKnownRedirect);
    assert_eq!(hops.len(), 1);
    assert_eq!(hops[0].status, Status::Warning);

    let _looping = w
        .front(
            2,
            "loop.test",
            Routes::new()
                .redirect("/.well-known/matrix/server", 302, "/b")
                .redirect("/b", 302, "/.well-known/matrix/server"),
        )
        .await;
    let r = w.check("loop.test").await;
    assert_fails(&r, CheckId::WellKnownServer, &["redirect"]);
    assert!(
        checks(&r, CheckId::WellKnownServer)[0]
            .message
            .contains("loop")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_path_mangling_proxy_fails() {
    let n = 28;
    let w = World::new(n, Zone::default().addr("mangled.test", ip(n, 1))).await;
    let hs = Homeserver::new("mangled.test");
    let site = w
        .site(1, 8448, &w.cert(&["mangled.test"]), mangle(hs.handler()))
        .await;
    let r = w.check("mangled.test").await;
    assert_fails(
        &r,
        CheckId::PathIntegrity,
        &["decodes %2F", "X-Matrix", "proxy_pass"],
    );
    // Everything a plain federation tester looks at is fine: only the probe sees the bug.
    for id in [
        CheckId::FederationVersion,
        CheckId::KeysSignature,
        CheckId::CertificateName,
    ] {
        assert_eq!(checks(&r, id)[0].status, Status::Ok, "{}", text(&r));
    }
    assert_eq!(r.counts.failure, 1, "{}", text(&r));
    assert!(site.seen.targets().contains(&PATH_PROBE.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_keys_for_another_server_fail() {
    let n = 29;
    let w = World::new(n, Zone::default().addr("other.test", ip(n, 1))).await;
    let _hs = w
        .homeserver("someone-else.test", 1, 8448, &["other.test"])
        .await;
    let r = w.check("other.test").await;
    assert_fails(&r, CheckId::KeysServerName, &["server_name"]);
    // The signature itself is fine: it is the wrong server's.
    assert_eq!(checks(&r, CheckId::KeysSignature)[0].status, Status::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_client_well_known_without_cors_fails() {
    let n = 30;
    let zone = Zone::default()
        .addr("nocors.test", ip(n, 1))
        .addr("hs.nocors.test", ip(n, 2));
    let w = World::new(n, zone).await;
    let _front = w
        .front(
            1,
            "nocors.test",
            Routes::new()
                .server_file("hs.nocors.test:443")
                .client_file("https://hs.nocors.test", false),
        )
        .await;
    let _hs = w
        .homeserver("nocors.test", 2, 443, &["hs.nocors.test"])
        .await;
    let r = w.check("nocors.test").await;
    assert_fails(
        &r,
        CheckId::ClientCors,
        &["Access-Control-Allow-Origin: *", "Element Web"],
    );
    assert!(r.federation_ok && !r.client_ok, "{}", text(&r));
    assert!(check::render::summary(&r).contains("client discovery fails"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_nothing_listening_fails_with_port_hint() {
    let n = 31;
    let w = World::new(n, Zone::default().addr("down.test", ip(n, 1))).await;
    let r = w.check("down.test").await;
    assert_fails(
        &r,
        CheckId::Connect,
        &["nothing listens on port 8448", "listen.federation"],
    );
}

/// The real proxy in front of the homeserver stand-in: delegation to the proxy's https port,
/// certificates for both names, the well-known files generated by the proxy, and the probe's
/// bytes arriving at the backend as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_passes_through_matrix_edge() {
    let n = 32;
    let dns = Zone::default()
        .addr("example.test", ip(n, 1))
        .addr("matrix.example.test", ip(n, 1))
        .serve()
        .await;
    let hs = Homeserver::new("example.test");
    let backend = Site::plain(&at(n, 9, 0), hs.handler()).await;
    let ports = Ports::at([
        at(n, 1, 443).parse().unwrap(),
        at(n, 1, 8448).parse().unwrap(),
        at(n, 1, 0).parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    ]);
    let builder = Proxy::builder(&format!("http://{}", backend.addr))
        .ports(ports)
        .extra(
            "[well_known]\nserver = \"matrix.example.test:443\"\nclient = \"https://matrix.example.test\"\n",
        );
    let ca_file = builder.dir().join("proxy-ca.pem");
    builder.ca().write_pem(&ca_file);
    let _proxy = builder.start().await;

    let options = Options {
        resolver: ResolverSource::At(dns.addr),
        extra_roots: check::load_ca(&ca_file).unwrap(),
        timeout: Duration::from_secs(5),
    };
    let r = run_check("example.test", &options).await;
    assert_clean(&r);
    assert_target_ok(&r, &at(n, 1, 443));
    assert_eq!(r.client.versions.as_ref().map(Vec::len), Some(2));
    let seen = backend.seen.all();
    let probe = seen
        .iter()
        .find(|s| s.target.starts_with("/_matrix/federation/v1/event/"))
        .expect("the probe reached the homeserver");
    assert_eq!(probe.target, PATH_PROBE, "byte for byte through the proxy");
    assert_eq!(probe.host.as_deref(), Some("matrix.example.test:443"));

    // The same through the binary: --json, --resolver, --ca, exit 0.
    let out = run_bin(vec![
        "check".to_owned(),
        "example.test".into(),
        "--json".into(),
        "--resolver".into(),
        dns.addr.to_string(),
        "--ca".into(),
        ca_file.display().to_string(),
        "--timeout".into(),
        "5s".into(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["verdict"], "ok");
    assert_eq!(json["federation_ok"], true);
    assert_eq!(
        json["discovery"]["targets"][0]["host"],
        "matrix.example.test:443"
    );
    assert_eq!(json["targets"][0]["keys"]["server_name"], "example.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_binary_exit_codes() {
    let n = 33;
    let w = World::new(n, Zone::default().addr("expired-cli.test", ip(n, 1))).await;
    let cert = Cert::expired(&w.ca, &["expired-cli.test"]);
    let _site = w.homeserver_with("expired-cli.test", 1, 8448, &cert).await;
    let ca = w.dir.path().join("ca.pem");
    w.ca.write_pem(&ca);
    let out = run_bin(vec![
        "check".into(),
        "expired-cli.test".into(),
        "--resolver".into(),
        w.dns.addr.to_string(),
        "--ca".into(),
        ca.display().to_string(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("failure  certificate_expiry"), "{stdout}");
    assert!(
        stdout.contains("hint: homeservers refuse expired certificates"),
        "{stdout}"
    );
    assert!(
        stdout.contains("result: federation does NOT work"),
        "{stdout}"
    );

    let out = run_bin(vec!["check".into(), "exa_mple.test".into()]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "invalid server name is a usage error"
    );
    let out = run_bin(vec![
        "check".into(),
        "example.test".into(),
        "--ca".into(),
        "/nonexistent/ca.pem".into(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "unreadable --ca is a usage error"
    );
    let out = run_bin(vec![
        "check".into(),
        "example.test".into(),
        "--timeout".into(),
        "soon".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
}

/// `run`'s preflight waits for certificates, then checks once; it gives up when none come.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_preflight_waits_for_certificates() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let n = 34;
    let w = World::new(n, Zone::default().addr("preflight.test", ip(n, 1))).await;
    let _hs = w
        .homeserver("preflight.test", 1, 8448, &["preflight.test"])
        .await;
    let name = ServerName::parse("preflight.test").unwrap();

    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        flag.store(true, Ordering::SeqCst);
    });
    let started = std::time::Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(90),
        check::preflight(
            name.clone(),
            w.options(),
            move || ready.load(Ordering::SeqCst),
            Duration::from_secs(30),
        ),
    )
    .await
    .unwrap()
    .expect("certificates came, so the check ran");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(report.exit_code(), 0, "{}", text(&report));

    let skipped = check::preflight(name, w.options(), || false, Duration::from_millis(300)).await;
    assert!(skipped.is_none());
}

/// Step 3.1: `m.server` is an IP literal: no SNI, `Host` is the literal with its port, the
/// certificate lists the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_well_known_delegating_to_an_ip_literal() {
    let n = 35;
    let w = World::new(n, Zone::default().addr("wkip.test", ip(n, 1))).await;
    let m_server = at(n, 2, 8448);
    let _front = w
        .front(1, "wkip.test", Routes::new().server_file(&m_server))
        .await;
    let hs = w.homeserver("wkip.test", 2, 8448, &["127.0.35.2"]).await;
    let r = w.check("wkip.test").await;
    assert_clean(&r);
    let t = &r.discovery.targets[0];
    assert_eq!(
        (t.host.as_str(), t.sni.as_deref(), t.rule),
        (m_server.as_str(), None, Rule::DelegatedIp)
    );
    assert!(hs.seen.all().iter().all(|s| s.sni.is_none()));
}

/// A web site's catch-all page on the well-known URL is ignored (with a warning) and the
/// oversized file a homeserver would drop is a failure; both fall back to port 8448.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_unusable_well_known_files_fall_back() {
    let n = 36;
    let zone = Zone::default()
        .addr("html.test", ip(n, 1))
        .addr("huge.test", ip(n, 2));
    let w = World::new(n, zone).await;
    let page = |_: &Req| {
        http::Response::builder()
            .status(200)
            .header("content-type", "text/html")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"<!doctype html><title>Welcome</title>",
            )))
            .unwrap()
    };
    let _html = w
        .front(
            1,
            "html.test",
            Routes::new().respond("/.well-known/matrix/server", page),
        )
        .await;
    let _html_hs = w.homeserver("html.test", 1, 8448, &["html.test"]).await;
    let r = w.check("html.test").await;
    assert_eq!(r.exit_code(), 0, "{}", text(&r));
    let wk = &checks(&r, CheckId::WellKnownServer)[0];
    assert_eq!(wk.status, Status::Warning);
    assert!(wk.hint.as_deref().unwrap().contains("catch-all"));
    assert_eq!(r.discovery.targets[0].rule, Rule::DefaultPort);

    let big = serde_json::json!({"m.server": "huge.test:8448", "padding": "x".repeat(60 * 1024)});
    let _huge = w
        .front(
            2,
            "huge.test",
            Routes::new().respond("/.well-known/matrix/server", move |_| {
                json_response(200, &big)
            }),
        )
        .await;
    let _huge_hs = w.homeserver("huge.test", 2, 8448, &["huge.test"]).await;
    let r = w.check("huge.test").await;
    assert_fails(&r, CheckId::WellKnownServer, &["50 KiB"]);
    assert_eq!(r.discovery.targets[0].rule, Rule::DefaultPort);
}
