//! Config validation as an admin meets it: the defaults a short file gets, every refused key or
//! value named with its line, the warnings about setups that cannot federate, and every file in
//! `examples/` as a fixture.
//!
//! Most tests edit one of two base files, [`MINIMAL`] and [`FULL`], and find the expected line by
//! searching the edited text, so moving lines around in a base file does not break them.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::validate::secs;
use super::*;

/// The smallest file that runs. Certificate files rather than `self_signed`, which warns.
const MINIMAL: &str = r#"server_name = "example.com"

[backend]
url = "http://127.0.0.1:8008"

[tls]
cert = "/etc/matrix-edge/fullchain.pem"
key = "/etc/matrix-edge/privkey.pem"
"#;

/// Every key of `raw.rs`, and every table written as a `[header]` so that the unknown-key
/// mutation reaches each one. Valid and without warnings.
const FULL: &str = r#"server_name = "example.com"
workers = 4

[backend]
url = "http://127.0.0.1:8008"
connect_timeout = "5s"
response_timeout = "900s"
pool_idle_timeout = "45s"
pool_max_idle = 32

[listen]
https = ["[::]:443"]
federation = ["[::]:8448"]
http = ["[::]:80"]
admin = "127.0.0.1:9000"

[tls]
names = ["example.com", "matrix.example.com"]
cert = "/etc/matrix-edge/example.com.pem"
key = "/etc/matrix-edge/example.com.key"

[[tls.certificates]]
cert = "/etc/matrix-edge/matrix.example.com.pem"
key = "/etc/matrix-edge/matrix.example.com.key"

[well_known]
server = "matrix.example.com:443"
client = "https://matrix.example.com"
identity_server = "https://vector.im"
client_extra = { "org.example.theme" = "dark" }
max_age = "2h"

[well_known.support]
support_page = "https://example.com/help"

[[well_known.support.contacts]]
role = "m.role.admin"
matrix_id = "@admin:example.com"

[[well_known.support.contacts]]
role = "m.role.security"
email_address = "security@example.com"

[limits]
max_body = "100M"
max_header_size = "32k"
header_read_timeout = "10s"
idle_timeout = "60s"
shutdown_grace = "20s"

[forward]
trusted_proxies = ["10.0.0.0/8", "fd00::1"]
extra_prefixes = ["/_conduwuit/"]

[allow]
synapse_admin = ["192.168.1.0/24"]
synapse_metrics = ["127.0.0.1"]
synapse_replication = []
"#;

/// A key no table has; the unknown-key tests look for it in the message.
const BOGUS: &str = "zz_not_a_key";

// === helpers ===

fn render(findings: &[Finding]) -> String {
    findings.iter().map(|f| format!("  {f}\n")).collect()
}

fn parse_ok(text: &str) -> Loaded {
    match Config::parse(text) {
        Ok(loaded) => loaded,
        Err(errors) => panic!(
            "expected a valid config, got errors:\n{}--- config:\n{text}",
            render(&errors)
        ),
    }
}

fn parse_err(text: &str) -> Vec<Finding> {
    match Config::parse(text) {
        Ok(loaded) => panic!(
            "expected errors, but the config was accepted (warnings:\n{})--- config:\n{text}",
            render(&loaded.warnings)
        ),
        Err(errors) => {
            assert!(!errors.is_empty(), "refused with no finding:\n{text}");
            errors
        }
    }
}

/// The 1-based number of the one line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "`{needle}` should be on exactly one line of:\n{text}"
    );
    hits[0]
}

/// `text` with its one occurrence of `from` replaced; refusing ambiguity keeps edits honest.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` should occur exactly once in:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// `text` with its first line that sets the key of `line` (`key = ...`) replaced by `line`.
fn with_line(text: &str, line: &str) -> String {
    let key = line.split(" = ").next().unwrap_or(line);
    let prefix = format!("{key} = ");
    let mut replaced = false;
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            if !replaced && l.starts_with(&prefix) {
                replaced = true;
                line
            } else {
                l
            }
        })
        .collect();
    assert!(replaced, "no line sets `{key}` in:\n{text}");
    lines.join("\n") + "\n"
}

/// `text` with `insert` placed as a new line after line `after` (0 = before the first line).
fn insert_line(text: &str, after: usize, insert: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(after, insert);
    lines.join("\n") + "\n"
}

/// Finds the finding about `key` on `line`; fails with everything that was found otherwise.
fn find<'a>(findings: &'a [Finding], key: &str, line: Option<usize>, text: &str) -> &'a Finding {
    match findings.iter().find(|f| f.key == key && f.line == line) {
        Some(f) => f,
        None => panic!(
            "no finding for `{key}` at line {line:?}; found:\n{}--- config:\n{text}",
            render(findings)
        ),
    }
}

fn has_warning(loaded: &Loaded, key: &str) -> bool {
    loaded.warnings.iter().any(|w| w.key == key)
}

fn json_of(bytes: &Option<Bytes>) -> Value {
    let Some(bytes) = bytes else {
        panic!("the well-known file should be configured");
    };
    match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}): {bytes:?}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn net(s: &str) -> IpNet {
    match s.parse() {
        Ok(n) => n,
        Err(e) => panic!("{s}: {e}"),
    }
}

/// Lines that open a table (`[x]` or `[[x]]`), with their 1-based numbers and table names.
fn table_headers(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim();
            if !line.starts_with('[') {
                return None;
            }
            let name = line.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or(name).trim();
            Some((i + 1, name.to_owned()))
        })
        .collect()
}

/// Asserts that `text` with [`BOGUS`] placed after line `after` is refused, naming the key and the
/// line it was put on.
fn assert_unknown_key_refused(text: &str, after: usize, table: &str) {
    let mutated = insert_line(text, after, &format!("{BOGUS} = 1"));
    let errors = parse_err(&mutated);
    assert_eq!(
        errors.len(),
        1,
        "table `{table}`: one unknown key, one error:\n{}",
        render(&errors)
    );
    let e = &errors[0];
    assert!(
        e.message.contains(BOGUS),
        "table `{table}`: message should name the key: {e}"
    );
    assert_eq!(
        e.line,
        Some(after + 1),
        "table `{table}`: wrong line for the unknown key: {e}\n--- config:\n{mutated}"
    );
}

// === defaults ===

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let loaded = parse_ok(MINIMAL);
    assert!(
        loaded.warnings.is_empty(),
        "a minimal production config should not warn:\n{}",
        render(&loaded.warnings)
    );
    let c = loaded.config;

    assert_eq!(c.server_name.as_str(), "example.com");

    assert_eq!(
        c.backend.target,
        BackendTarget::Tcp {
            authority: "127.0.0.1:8008".into()
        }
    );
    assert_eq!(c.backend.connect_timeout, secs(10));
    assert_eq!(c.backend.response_timeout, secs(600));
    assert_eq!(c.backend.pool_idle_timeout, secs(90));
    assert_eq!(c.backend.pool_max_idle, 256);

    assert_eq!(c.listen.https, vec![addr("[::]:443")]);
    assert_eq!(c.listen.federation, vec![addr("[::]:8448")]);
    assert_eq!(c.listen.http, vec![addr("[::]:80")]);
    assert_eq!(c.listen.admin, None);

    assert_eq!(c.tls.names, vec!["example.com".to_owned()]);
    assert_eq!(
        c.tls.source,
        CertSource::Files(vec![CertFiles {
            cert: "/etc/matrix-edge/fullchain.pem".into(),
            key: "/etc/matrix-edge/privkey.pem".into(),
        }])
    );

    assert_eq!(c.well_known.server, None);
    assert_eq!(c.well_known.client, None);
    assert_eq!(c.well_known.support, None);
    assert_eq!(c.well_known.delegated, None);
    assert_eq!(c.well_known.max_age, secs(3600));

    assert_eq!(c.limits.max_body, 50 * 1024 * 1024);
    assert_eq!(c.limits.max_header_size, 64 * 1024);
    assert_eq!(c.limits.header_read_timeout, secs(30));
    assert_eq!(c.limits.idle_timeout, secs(120));
    assert_eq!(c.limits.shutdown_grace, secs(30));

    assert!(c.forward.trusted_proxies.is_empty());
    assert!(c.forward.extra_prefixes.is_empty());

    assert_eq!(c.allow.synapse_admin, None);
    assert_eq!(c.allow.synapse_metrics, None);
    assert_eq!(c.allow.synapse_replication, None);
}

#[test]
fn tls_names_default_to_server_name_and_delegated_host() {
    let delegated = format!("{MINIMAL}\n[well_known]\nserver = \"matrix.example.com:443\"\n");
    assert_eq!(
        parse_ok(&delegated).config.tls.names,
        vec!["example.com".to_owned(), "matrix.example.com".to_owned()]
    );

    // Delegating to the same host on another port must not list the name twice.
    let same_host = format!("{MINIMAL}\n[well_known]\nserver = \"example.com:8448\"\n");
    assert_eq!(
        parse_ok(&same_host).config.tls.names,
        vec!["example.com".to_owned()]
    );

    // A certificate name carries neither port nor brackets.
    let ip = edit(MINIMAL, r#""example.com""#, r#""[2001:db8::1]:8448""#);
    assert_eq!(
        parse_ok(&ip).config.tls.names,
        vec!["2001:db8::1".to_owned()]
    );
}

#[test]
fn explicit_tls_names_are_kept_and_normalised() {
    let text = edit(
        MINIMAL,
        "[tls]\n",
        "[tls]\nnames = [\"example.com\", \"[::1]\", \"127.0.0.1\", \"matrix.example.com\"]\n",
    );
    assert_eq!(
        parse_ok(&text).config.tls.names,
        vec!["example.com", "::1", "127.0.0.1", "matrix.example.com"]
    );
}

#[test]
fn full_config_is_read_as_written() {
    let loaded = parse_ok(FULL);
    assert_eq!(loaded.config.workers, 4);
    assert!(
        loaded.warnings.is_empty(),
        "FULL should not warn:\n{}",
        render(&loaded.warnings)
    );
    let c = loaded.config;

    assert_eq!(c.backend.connect_timeout, secs(5));
    assert_eq!(c.backend.response_timeout, secs(900));
    assert_eq!(c.backend.pool_idle_timeout, secs(45));
    assert_eq!(c.backend.pool_max_idle, 32);

    assert_eq!(c.listen.admin, Some(addr("127.0.0.1:9000")));

    // The top-level pair comes first: it is the default certificate for clients without SNI.
    assert_eq!(
        c.tls.source,
        CertSource::Files(vec![
            CertFiles {
                cert: "/etc/matrix-edge/example.com.pem".into(),
                key: "/etc/matrix-edge/example.com.key".into(),
            },
            CertFiles {
                cert: "/etc/matrix-edge/matrix.example.com.pem".into(),
                key: "/etc/matrix-edge/matrix.example.com.key".into(),
            },
        ])
    );

    assert_eq!(c.well_known.max_age, secs(7200));
    assert_eq!(
        c.well_known.delegated.as_ref().map(|d| d.as_str()),
        Some("matrix.example.com:443")
    );

    assert_eq!(c.limits.max_body, 100 * 1024 * 1024);
    assert_eq!(c.limits.max_header_size, 32 * 1024);
    assert_eq!(c.limits.header_read_timeout, secs(10));
    assert_eq!(c.limits.idle_timeout, secs(60));
    assert_eq!(c.limits.shutdown_grace, secs(20));

    assert_eq!(
        c.forward.trusted_proxies,
        vec![net("10.0.0.0/8"), net("fd00::1/128")]
    );
    assert_eq!(c.forward.extra_prefixes, vec!["/_conduwuit/".to_owned()]);

    assert_eq!(c.allow.synapse_admin, Some(vec![net("192.168.1.0/24")]));
    assert_eq!(c.allow.synapse_metrics, Some(vec![net("127.0.0.1/32")]));
    // Written but empty is "nobody", the same as absent; it must still parse.
    assert_eq!(c.allow.synapse_replication, Some(vec![]));
}

#[test]
fn well_known_bodies_are_rendered_from_the_config() {
    let wk = parse_ok(FULL).config.well_known;
    assert_eq!(
        json_of(&wk.server),
        json!({ "m.server": "matrix.example.com:443" })
    );
    assert_eq!(
        json_of(&wk.client),
        json!({
            "m.homeserver": { "base_url": "https://matrix.example.com" },
            "m.identity_server": { "base_url": "https://vector.im" },
            "org.example.theme": "dark",
        })
    );
    assert_eq!(
        json_of(&wk.support),
        json!({
            "contacts": [
                { "role": "m.role.admin", "matrix_id": "@admin:example.com" },
                { "role": "m.role.security", "email_address": "security@example.com" },
            ],
            "support_page": "https://example.com/help",
        })
    );
}

#[test]
fn support_file_with_only_a_page_or_only_contacts() {
    let page =
        format!("{MINIMAL}\n[well_known.support]\nsupport_page = \"https://example.com/help\"\n");
    assert_eq!(
        json_of(&parse_ok(&page).config.well_known.support),
        json!({ "support_page": "https://example.com/help" })
    );
    // A namespaced custom role is allowed next to the two the spec defines.
    let contacts = format!(
        "{MINIMAL}\n[[well_known.support.contacts]]\nrole = \"org.example.moderator\"\nemail_address = \"mods@example.com\"\n"
    );
    assert_eq!(
        json_of(&parse_ok(&contacts).config.well_known.support),
        json!({ "contacts": [{ "role": "org.example.moderator", "email_address": "mods@example.com" }] })
    );
}

// === backend targets ===

#[test]
fn backend_urls_become_targets() {
    let cases = [
        (
            "unix:/run/synapse/main.sock",
            BackendTarget::Unix(PathBuf::from("/run/synapse/main.sock")),
        ),
        (
            "unix:///run/synapse/main.sock",
            BackendTarget::Unix(PathBuf::from("/run/synapse/main.sock")),
        ),
        (
            "http://127.0.0.1:8008",
            BackendTarget::Tcp {
                authority: "127.0.0.1:8008".into(),
            },
        ),
        // No port means HTTP's own, written out so the connector needs no default.
        (
            "http://localhost",
            BackendTarget::Tcp {
                authority: "localhost:80".into(),
            },
        ),
        (
            "http://[::1]",
            BackendTarget::Tcp {
                authority: "[::1]:80".into(),
            },
        ),
        // A lone trailing slash is no path: it changes nothing in the request-target.
        (
            "http://synapse.internal:8008/",
            BackendTarget::Tcp {
                authority: "synapse.internal:8008".into(),
            },
        ),
    ];
    for (url, want) in cases {
        let text = edit(MINIMAL, "http://127.0.0.1:8008", url);
        assert_eq!(parse_ok(&text).config.backend.target, want, "url {url}");
    }
}

// === refused values: one mistake, one error naming its key and line ===

/// Refused values: the key the error must name, and a line that replaces the line of [`FULL`]
/// setting the same key. Each must give exactly one error, about that key, on that line.
#[rustfmt::skip]
const BAD_VALUES: &[(&str, &str)] = &[
    // server_name
    ("server_name", r#"server_name = "exa_mple.com""#),
    ("server_name", r#"server_name = "example.com:99999""#),
    ("server_name", r#"server_name = "example.com:0""#),
    ("server_name", r#"server_name = """#),
    ("server_name", r#"server_name = "https://example.com""#),
    ("server_name", r#"server_name = "::1""#),
    ("workers", "workers = 0"),
    ("workers", "workers = 5000"),
    // backend
    ("backend.url", r#"url = "https://127.0.0.1:8008""#),
    ("backend.url", r#"url = "http://127.0.0.1:8008/synapse""#),
    ("backend.url", r#"url = "http://127.0.0.1:8008/?a=b""#),
    ("backend.url", r#"url = "unix:run/synapse/main.sock""#),
    ("backend.url", r#"url = "127.0.0.1:8008""#),
    ("backend.url", r#"url = "ftp://127.0.0.1""#),
    ("backend.url", r#"url = "http://exa mple""#),
    ("backend.connect_timeout", r#"connect_timeout = "5 parsecs""#),
    ("backend.response_timeout", r#"response_timeout = "900""#),
    ("backend.pool_idle_timeout", r#"pool_idle_timeout = "-1s""#),
    ("backend.pool_max_idle", "pool_max_idle = -1"),
    // listen
    ("listen.https", r#"https = ["[::]:443", "443"]"#),
    ("listen.https", r#"https = ["[::]"]"#),
    ("listen.federation", r#"federation = ["localhost:8448"]"#),
    ("listen.federation", r#"federation = ["0.0.0.0:84480"]"#),
    ("listen.http", r#"http = ["*:80"]"#),
    ("listen.admin", r#"admin = "9000""#),
    // tls
    ("tls.names", r#"names = ["example.com:443", "matrix.example.com"]"#),
    ("tls.names", r#"names = ["exa_mple.com", "matrix.example.com"]"#),
    // well_known
    ("well_known.server", r#"server = "matrix.example.com:0""#),
    ("well_known.server", r#"server = "https://matrix.example.com""#),
    ("well_known.server", r#"server = "matrix.example.com/""#),
    ("well_known.client", r#"client = "matrix.example.com""#),
    ("well_known.client", r#"client = "/_matrix""#),
    ("well_known.client", r#"client = "ftp://matrix.example.com""#),
    ("well_known.identity_server", r#"identity_server = "vector.im""#),
    ("well_known.client_extra", r#"client_extra = { "theme" = "dark" }"#),
    ("well_known.client_extra", r#"client_extra = { "m.homeserver" = "x" }"#),
    ("well_known.max_age", r#"max_age = "an hour""#),
    ("well_known.support.support_page", r#"support_page = "example.com/help""#),
    ("well_known.support.contacts.role", r#"role = "admin""#),
    ("well_known.support.contacts.role", r#"role = "m.role.owner""#),
    ("well_known.support.contacts.matrix_id", r#"matrix_id = "admin:example.com""#),
    ("well_known.support.contacts.matrix_id", r#"matrix_id = "@admin""#),
    ("well_known.support.contacts.matrix_id", r#"matrix_id = "@:example.com""#),
    ("well_known.support.contacts.email_address", r#"email_address = "security at example.com""#),
    // limits
    ("limits.max_body", r#"max_body = "lots""#),
    ("limits.max_body", r#"max_body = "100T""#),
    ("limits.max_body", r#"max_body = "99999999999999G""#),
    ("limits.max_header_size", r#"max_header_size = "4k""#),
    ("limits.max_header_size", r#"max_header_size = "k""#),
    ("limits.header_read_timeout", r#"header_read_timeout = "ten seconds""#),
    ("limits.idle_timeout", r#"idle_timeout = """#),
    ("limits.shutdown_grace", r#"shutdown_grace = "30""#),
    // forward
    ("forward.trusted_proxies", r#"trusted_proxies = ["10.0.0.0/33", "fd00::1"]"#),
    ("forward.trusted_proxies", r#"trusted_proxies = ["10.0.0.0/8", "proxy.lan"]"#),
    ("forward.extra_prefixes", r#"extra_prefixes = ["/_synapse/admin/"]"#),
    ("forward.extra_prefixes", r#"extra_prefixes = ["_conduwuit/"]"#),
    ("forward.extra_prefixes", r#"extra_prefixes = ["/_conduwuit"]"#),
    ("forward.extra_prefixes", r#"extra_prefixes = ["/_/"]"#),
    // allow
    ("allow.synapse_admin", r#"synapse_admin = ["192.168.1.0/24", "lan"]"#),
    ("allow.synapse_metrics", r#"synapse_metrics = ["127.0.0.1/40"]"#),
    ("allow.synapse_replication", r#"synapse_replication = ["10.0.0.0/8 "]"#),
];

#[test]
fn invalid_values_are_refused_with_key_and_line() {
    for (key, to) in BAD_VALUES {
        let text = with_line(FULL, to);
        let errors = parse_err(&text);
        let line = line_of(&text, to);
        let e = find(&errors, key, Some(line), &text);
        assert_eq!(
            errors.len(),
            1,
            "`{to}`: one mistake should give one error, got:\n{}",
            render(&errors)
        );
        assert!(!e.message.is_empty(), "`{to}`: empty message");
    }
}

#[test]
fn messages_quote_the_bad_value_and_show_a_valid_one() {
    let text = edit(MINIMAL, "http://127.0.0.1:8008", "https://127.0.0.1:8008");
    let errors = parse_err(&text);
    let e = find(&errors, "backend.url", Some(line_of(&text, "url =")), &text);
    assert!(e.message.contains("`https://127.0.0.1:8008`"), "{e}");
    assert!(e.message.contains("http://"), "{e}");

    let text = edit(MINIMAL, r#""example.com""#, r#""exa_mple.com""#);
    let errors = parse_err(&text);
    let e = find(&errors, "server_name", Some(1), &text);
    assert!(e.message.contains("exa_mple.com"), "{e}");
    assert!(e.message.contains("`_`"), "{e}");

    let text = format!("{MINIMAL}\n[limits]\nmax_body = \"50X\"\n");
    let errors = parse_err(&text);
    let e = find(
        &errors,
        "limits.max_body",
        Some(line_of(&text, "50X")),
        &text,
    );
    assert!(e.message.contains("`X`"), "{e}");
}

#[test]
fn backend_url_with_a_path_says_why() {
    let text = edit(
        MINIMAL,
        "http://127.0.0.1:8008",
        "http://127.0.0.1:8008/matrix",
    );
    let errors = parse_err(&text);
    let e = find(&errors, "backend.url", Some(line_of(&text, "url =")), &text);
    assert!(e.message.contains("has a path"), "{e}");
    assert!(e.message.contains("signatures"), "{e}");
}

#[test]
fn client_extra_names_the_offending_key() {
    let text = format!(
        "{MINIMAL}\n[well_known]\nclient = \"https://example.com\"\n\n[well_known.client_extra]\n\"org.example.ok\" = 1\nplain = 2\n"
    );
    let errors = parse_err(&text);
    // The whole table is the subject, so the line is its header.
    let e = find(
        &errors,
        "well_known.client_extra",
        Some(line_of(&text, "[well_known.client_extra]")),
        &text,
    );
    assert!(e.message.contains("`plain`"), "{e}");
    assert_eq!(errors.len(), 1, "{}", render(&errors));
}

#[test]
fn client_file_extras_need_the_client_file() {
    let text = format!(
        "{MINIMAL}\n[well_known]\nidentity_server = \"https://vector.im\"\nclient_extra = {{ \"org.example.x\" = 1 }}\n"
    );
    let errors = parse_err(&text);
    find(
        &errors,
        "well_known.identity_server",
        Some(line_of(&text, "identity_server")),
        &text,
    );
    find(
        &errors,
        "well_known.client_extra",
        Some(line_of(&text, "client_extra")),
        &text,
    );
    assert_eq!(errors.len(), 2, "{}", render(&errors));
}

#[test]
fn support_needs_contacts_or_a_page() {
    let text = format!("{MINIMAL}\n[well_known.support]\n");
    let errors = parse_err(&text);
    let e = find(
        &errors,
        "well_known.support",
        Some(line_of(&text, "[well_known.support]")),
        &text,
    );
    assert!(e.message.contains("contacts"), "{e}");
    assert!(e.message.contains("support_page"), "{e}");
}

#[test]
fn each_contact_needs_a_matrix_id_or_an_email() {
    let text = format!(
        "{MINIMAL}
[[well_known.support.contacts]]
role = \"m.role.admin\"
matrix_id = \"@admin:example.com\"

[[well_known.support.contacts]] # the faulty one
role = \"m.role.security\"
"
    );
    let errors = parse_err(&text);
    // Contacts have no key of their own to point at; their `[[...]]` header is the subject.
    let e = find(
        &errors,
        "well_known.support.contacts",
        Some(line_of(&text, "the faulty one")),
        &text,
    );
    assert!(e.message.contains("matrix_id"), "{e}");
    assert!(e.message.contains("email_address"), "{e}");
    assert_eq!(errors.len(), 1, "{}", render(&errors));
}

#[test]
fn certificate_and_key_go_together() {
    let no_key = edit(MINIMAL, "key = \"/etc/matrix-edge/privkey.pem\"\n", "");
    let errors = parse_err(&no_key);
    let e = find(
        &errors,
        "tls.cert",
        Some(line_of(&no_key, "cert =")),
        &no_key,
    );
    assert!(e.message.contains("tls.key"), "{e}");

    let no_cert = edit(MINIMAL, "cert = \"/etc/matrix-edge/fullchain.pem\"\n", "");
    let errors = parse_err(&no_cert);
    let e = find(
        &errors,
        "tls.key",
        Some(line_of(&no_cert, "key =")),
        &no_cert,
    );
    assert!(e.message.contains("tls.cert"), "{e}");

    // In [[tls.certificates]] the pair is enforced by the file format itself.
    let pair = format!("{MINIMAL}\n[[tls.certificates]]\ncert = \"/etc/a.pem\"\n");
    let errors = parse_err(&pair);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert!(errors[0].message.contains("`key`"), "{}", errors[0]);
    assert_eq!(errors[0].line, Some(line_of(&pair, "[[tls.certificates]]")));
}

#[test]

fn half_a_certificate_pair_is_one_error() {
    let no_key = edit(MINIMAL, "key = \"/etc/matrix-edge/privkey.pem\"\n", "");
    let errors = parse_err(&no_key);
    assert_eq!(
        errors.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        vec!["tls.cert"],
        "{}",
        render(&errors)
    );
}

#[test]
fn self_signed_cannot_be_combined_with_files() {
    let with_pair = edit(MINIMAL, "[tls]\n", "[tls]\nself_signed = true\n");
    let errors = parse_err(&with_pair);
    let e = find(
        &errors,
        "tls.self_signed",
        Some(line_of(&with_pair, "self_signed")),
        &with_pair,
    );
    assert!(e.message.contains("cannot be combined"), "{e}");
    assert_eq!(errors.len(), 1, "{}", render(&errors));

    let with_list = "server_name = \"example.com\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n[tls]\nself_signed = true\n[[tls.certificates]]\ncert = \"/a.pem\"\nkey = \"/a.key\"\n";
    let errors = parse_err(with_list);
    find(&errors, "tls.self_signed", Some(5), with_list);
}

#[test]
fn no_certificate_at_all_is_refused() {
    let bare = "server_name = \"example.com\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n";
    let errors = parse_err(bare);
    // Nothing was written, so there is no line to point at.
    let e = find(&errors, "tls", None, bare);
    assert!(e.message.contains("self_signed"), "{e}");
    assert_eq!(errors.len(), 1, "{}", render(&errors));

    let off = format!("{bare}[tls]\nself_signed = false\n");
    let errors = parse_err(&off);
    find(&errors, "tls", None, &off);
}

#[test]
fn listeners_must_serve_something_and_not_collide() {
    let nothing = format!("{MINIMAL}\n[listen]\nhttps = []\nfederation = []\n");
    let errors = parse_err(&nothing);
    let e = find(&errors, "listen", None, &nothing);
    assert!(e.message.contains("nothing would be served"), "{e}");

    let twice =
        format!("{MINIMAL}\n[listen]\nhttps = [\"[::]:443\"]\nfederation = [\"[::]:443\"]\n");
    let errors = parse_err(&twice);
    let e = find(&errors, "listen", None, &twice);
    assert!(e.message.contains("listen.https"), "{e}");
    assert!(e.message.contains("listen.federation"), "{e}");

    let admin =
        format!("{MINIMAL}\n[listen]\nhttp = [\"127.0.0.1:9000\"]\nadmin = \"127.0.0.1:9000\"\n");
    let errors = parse_err(&admin);
    let e = find(&errors, "listen", None, &admin);
    assert!(e.message.contains("listen.admin"), "{e}");

    // The same port on the IPv4 and the IPv6 wildcard is two sockets, not a collision.
    let dual = format!("{MINIMAL}\n[listen]\nhttps = [\"[::]:443\", \"0.0.0.0:443\"]\n");
    parse_ok(&dual);
}

#[test]
fn required_keys_are_named_when_missing() {
    for (text, missing) in [
        (
            "[backend]\nurl = \"http://127.0.0.1:8008\"\n",
            "server_name",
        ),
        ("server_name = \"example.com\"\n", "backend"),
        ("server_name = \"example.com\"\n[backend]\n", "url"),
    ] {
        let errors = parse_err(text);
        assert_eq!(errors.len(), 1, "{}", render(&errors));
        assert!(
            errors[0].message.contains(&format!("`{missing}`")),
            "should name `{missing}`: {}",
            errors[0]
        );
    }
}

#[test]
fn wrong_types_point_at_the_line() {
    let text = format!("{MINIMAL}\n[limits]\nmax_body = 52428800\n");
    let errors = parse_err(&text);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert_eq!(errors[0].line, Some(line_of(&text, "max_body")));
    assert!(errors[0].message.contains("string"), "{}", errors[0]);
}

#[test]

fn wrong_types_name_the_key() {
    let text = format!("{MINIMAL}\n[limits]\nmax_body = 52428800\n");
    let errors = parse_err(&text);
    assert!(
        errors[0].key == "limits.max_body" || errors[0].message.contains("max_body"),
        "{}",
        errors[0]
    );
}

#[test]
fn duplicate_keys_are_refused_at_the_second() {
    let text = edit(
        MINIMAL,
        "[backend]\n",
        "[backend]\nurl = \"http://[::1]:8008\"\n",
    );
    let errors = parse_err(&text);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert_eq!(errors[0].line, Some(line_of(&text, "127.0.0.1:8008")));
}

#[test]
fn lines_are_right_with_crlf_line_endings() {
    let text =
        edit(MINIMAL, "http://127.0.0.1:8008", "https://127.0.0.1:8008").replace('\n', "\r\n");
    let errors = parse_err(&text);
    find(&errors, "backend.url", Some(line_of(&text, "url =")), &text);
}

// === several errors at once ===

#[test]
fn every_error_in_a_file_is_reported() {
    let text = r#"server_name = "exa_mple.com"

[backend]
url = "https://127.0.0.1:8008"
response_timeout = "ten minutes"

[listen]
federation = ["[::]:8448", "8448"]
admin = "localhost:9000"

[tls]
names = ["example.com"]
cert = "/etc/matrix-edge/fullchain.pem"
key = "/etc/matrix-edge/privkey.pem"
self_signed = true

[well_known]
server = "matrix.example.com:99999"
client = "matrix.example.com"

[[well_known.support.contacts]]
role = "admin"
matrix_id = "admin"

[limits]
max_body = "50 parsecs"

[forward]
trusted_proxies = ["10.0.0.0/40"]
extra_prefixes = ["/_synapse/admin/"]

[allow]
synapse_metrics = ["everywhere"]
"#;
    let errors = parse_err(text);
    let expected = [
        ("server_name", "exa_mple.com"),
        ("backend.url", "https://127.0.0.1:8008"),
        ("backend.response_timeout", "ten minutes"),
        ("listen.federation", r#""8448""#),
        ("listen.admin", "localhost:9000"),
        ("tls.self_signed", "self_signed"),
        ("well_known.server", "99999"),
        ("well_known.client", r#""matrix.example.com""#),
        ("well_known.support.contacts.role", r#"role = "admin""#),
        (
            "well_known.support.contacts.matrix_id",
            r#"matrix_id = "admin""#,
        ),
        ("limits.max_body", "parsecs"),
        ("forward.trusted_proxies", "10.0.0.0/40"),
        ("forward.extra_prefixes", "/_synapse/admin/"),
        ("allow.synapse_metrics", "everywhere"),
    ];
    for (key, needle) in expected {
        find(&errors, key, Some(line_of(text, needle)), text);
    }
    assert_eq!(
        errors.len(),
        expected.len(),
        "one error per mistake, no more:\n{}",
        render(&errors)
    );
}

#[test]

fn bad_server_name_does_not_cascade_into_tls_names() {
    let text = edit(MINIMAL, r#""example.com""#, r#""exa_mple.com""#);
    let errors = parse_err(&text);
    assert_eq!(
        errors.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        vec!["server_name"],
        "{}",
        render(&errors)
    );
}

// === unknown keys ===

#[test]
fn unknown_keys_are_refused_in_every_table() {
    parse_ok(FULL);
    let headers = table_headers(FULL);
    let mut tables: Vec<&str> = headers.iter().map(|(_, name)| name.as_str()).collect();
    tables.dedup();
    // The mutation only proves something if FULL spells out every table there is.
    assert_eq!(
        tables,
        [
            "backend",
            "listen",
            "tls",
            "tls.certificates",
            "well_known",
            "well_known.support",
            "well_known.support.contacts",
            "limits",
            "forward",
            "allow",
        ]
    );
    assert_unknown_key_refused(FULL, 0, "top level");
    for (line, table) in &headers {
        assert_unknown_key_refused(FULL, *line, table);
    }
}

#[test]
fn unknown_key_in_an_inline_table_is_refused() {
    let text = edit(
        MINIMAL,
        "[backend]\nurl = \"http://127.0.0.1:8008\"\n",
        &format!("backend = {{ url = \"http://127.0.0.1:8008\", {BOGUS} = 1 }}\n"),
    );
    let errors = parse_err(&text);
    assert!(errors[0].message.contains(BOGUS), "{}", errors[0]);
    assert_eq!(errors[0].line, Some(line_of(&text, BOGUS)));
}

#[test]
fn misspelt_security_key_is_an_error_with_the_right_spelling() {
    // A typo here silently keeping the admin API closed (or open) is why unknown keys are errors.
    let text = format!("{MINIMAL}\n[allow]\nsynapse_admins = [\"10.0.0.0/8\"]\n");
    let errors = parse_err(&text);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert!(
        errors[0].message.contains("`synapse_admins`"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].message.contains("`synapse_admin`"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].line, Some(line_of(&text, "synapse_admins")));
}

// === warnings ===

#[test]
fn warns_without_federation_listener_or_delegation() {
    let text = format!("{MINIMAL}\n[listen]\nfederation = []\n");
    let loaded = parse_ok(&text);
    let w = find(
        &loaded.warnings,
        "listen.federation",
        Some(line_of(&text, "federation = []")),
        &text,
    );
    assert!(w.message.contains("no federation listener"), "{w}");
    assert!(w.message.contains("8448"), "{w}");

    // Delegation is the other way to be found; then no warning.
    let delegated = format!(
        "{MINIMAL}\n[listen]\nfederation = []\n\n[well_known]\nserver = \"example.com:443\"\n"
    );
    let loaded = parse_ok(&delegated);
    assert!(loaded.warnings.is_empty(), "{}", render(&loaded.warnings));
}

#[test]

fn one_warning_for_a_missing_federation_listener() {
    let text = format!("{MINIMAL}\n[listen]\nfederation = []\n");
    let loaded = parse_ok(&text);
    assert_eq!(loaded.warnings.len(), 1, "{}", render(&loaded.warnings));
}

#[test]
fn warns_when_no_listener_is_on_8448() {
    let text = format!("{MINIMAL}\n[listen]\nfederation = [\"[::]:8449\"]\n");
    let loaded = parse_ok(&text);
    let w = find(
        &loaded.warnings,
        "listen.federation",
        Some(line_of(&text, "8449")),
        &text,
    );
    assert!(w.message.contains("8448"), "{w}");
}

#[test]

fn warns_when_delegation_without_port_has_no_8448_listener() {
    let text = format!(
        "{MINIMAL}\n[listen]\nfederation = []\n\n[well_known]\nserver = \"matrix.example.com\"\n"
    );
    let loaded = parse_ok(&text);
    assert!(
        !loaded.warnings.is_empty(),
        "delegation to matrix.example.com means matrix.example.com:8448"
    );
}

#[test]
fn warns_when_delegated_host_is_not_in_tls_names() {
    let text = edit(
        FULL,
        r#"names = ["example.com", "matrix.example.com"]"#,
        r#"names = ["example.com"]"#,
    );
    let loaded = parse_ok(&text);
    let w = find(
        &loaded.warnings,
        "well_known.server",
        Some(line_of(&text, "server = \"matrix")),
        &text,
    );
    assert!(w.message.contains("`matrix.example.com`"), "{w}");
    assert!(w.message.contains("tls.names"), "{w}");
    assert_eq!(loaded.warnings.len(), 1, "{}", render(&loaded.warnings));
}

#[test]

fn warns_when_server_name_is_not_in_tls_names() {
    let text = edit(
        MINIMAL,
        "[tls]\n",
        "[tls]\nnames = [\"matrix.example.com\"]\n",
    );
    let loaded = parse_ok(&text);
    assert!(
        !loaded.warnings.is_empty(),
        "example.com:8448 is what other servers connect to, with SNI example.com"
    );
}

#[test]
fn warns_when_delegated_port_is_not_served_here() {
    let text = edit(FULL, "matrix.example.com:443", "matrix.example.com:8443");
    let loaded = parse_ok(&text);
    let w = find(
        &loaded.warnings,
        "well_known.server",
        Some(line_of(&text, "8443")),
        &text,
    );
    assert!(w.message.contains("8443"), "{w}");
}

#[test]
fn warns_when_server_name_port_is_not_served_here() {
    let text = edit(MINIMAL, r#""example.com""#, r#""example.com:8449""#);
    let loaded = parse_ok(&text);
    let w = find(&loaded.warnings, "server_name", Some(1), &text);
    assert!(w.message.contains("8449"), "{w}");

    let served = format!(
        "{}\n[listen]\nfederation = [\"[::]:8449\"]\n",
        edit(MINIMAL, r#""example.com""#, r#""example.com:8449""#)
    );
    let loaded = parse_ok(&served);
    assert!(loaded.warnings.is_empty(), "{}", render(&loaded.warnings));
}

#[test]
fn warns_on_short_response_timeout() {
    let text = edit(MINIMAL, "[tls]", "response_timeout = \"30s\"\n\n[tls]");
    let loaded = parse_ok(&text);
    let w = find(
        &loaded.warnings,
        "backend.response_timeout",
        Some(line_of(&text, "30s")),
        &text,
    );
    assert!(w.message.contains("60s"), "{w}");
    assert_eq!(loaded.config.backend.response_timeout, secs(30));

    let text = edit(MINIMAL, "[tls]", "response_timeout = \"60s\"\n\n[tls]");
    assert!(!has_warning(&parse_ok(&text), "backend.response_timeout"));
}

#[test]
fn warns_on_small_body_limit() {
    // 12.5 MiB is the boundary: about the largest federation /send transaction.
    for (size, warns) in [
        ("1M", true),
        ("12799k", true),
        ("12800k", false),
        ("50M", false),
    ] {
        let text = format!("{MINIMAL}\n[limits]\nmax_body = \"{size}\"\n");
        let loaded = parse_ok(&text);
        assert_eq!(
            has_warning(&loaded, "limits.max_body"),
            warns,
            "max_body {size}: {}",
            render(&loaded.warnings)
        );
        if warns {
            find(
                &loaded.warnings,
                "limits.max_body",
                Some(line_of(&text, "max_body")),
                &text,
            );
        }
    }
}

#[test]
fn warns_on_admin_listener_off_loopback() {
    for (admin, warns) in [
        ("0.0.0.0:9000", true),
        ("[::]:9000", true),
        ("192.168.1.5:9000", true),
        ("127.0.0.1:9000", false),
        ("127.0.0.2:9000", false),
        ("[::1]:9000", false),
    ] {
        let text = format!("{MINIMAL}\n[listen]\nadmin = \"{admin}\"\n");
        let loaded = parse_ok(&text);
        assert_eq!(
            has_warning(&loaded, "listen.admin"),
            warns,
            "admin {admin}: {}",
            render(&loaded.warnings)
        );
        if warns {
            let w = find(
                &loaded.warnings,
                "listen.admin",
                Some(line_of(&text, "admin =")),
                &text,
            );
            assert!(w.message.contains("loopback"), "{w}");
        }
    }
}

#[test]
fn warns_on_self_signed_upper_case_and_odd_max_age() {
    let text = "server_name = \"Example.com\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n[tls]\nself_signed = true\n[well_known]\nmax_age = \"1m\"\n";
    let loaded = parse_ok(text);
    assert_eq!(loaded.config.tls.source, CertSource::SelfSigned);
    find(&loaded.warnings, "server_name", Some(1), text);
    find(&loaded.warnings, "tls.self_signed", Some(5), text);
    find(&loaded.warnings, "well_known.max_age", Some(7), text);
    assert_eq!(loaded.warnings.len(), 3, "{}", render(&loaded.warnings));

    let long = format!("{MINIMAL}\n[well_known]\nmax_age = \"3d\"\n");
    assert!(has_warning(&parse_ok(&long), "well_known.max_age"));
}

// === loading files ===

#[test]
fn load_reports_the_path_with_every_error() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let path = dir.path().join("edge.toml");
    let text = edit(MINIMAL, "http://127.0.0.1:8008", "https://127.0.0.1:8008");
    let text = format!("{text}\n[limits]\nmax_body = \"lots\"\n");
    let max_body_line = line_of(&text, "max_body");
    if let Err(e) = fs::write(&path, &text) {
        panic!("write: {e}");
    }
    let err = match Config::load(&path) {
        Ok(_) => panic!("should be refused"),
        Err(e) => e,
    };
    let shown = err.to_string();
    assert!(shown.contains("2 error(s)"), "{shown}");
    assert!(
        shown.contains(&format!("{}: line 4: `backend.url`", path.display())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "{}: line {max_body_line}: `limits.max_body`",
            path.display()
        )),
        "{shown}"
    );

    let missing = dir.path().join("absent.toml");
    match Config::load(&missing) {
        Err(ConfigError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected a read error, got {other:?}"),
    }
}

// === examples/ ===

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

/// Tables whose keys are free-form, so an unknown key there is data, not a typo.
const FREE_FORM_TABLES: &[&str] = &["well_known.client_extra"];

fn example_files() -> Vec<(PathBuf, String)> {
    let dir = match fs::read_dir(EXAMPLES) {
        Ok(d) => d,
        Err(e) => panic!("{EXAMPLES}: {e}"),
    };
    let mut files: Vec<(PathBuf, String)> = dir
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| match fs::read_to_string(&p) {
            Ok(text) => (p, text),
            Err(e) => panic!("{}: {e}", p.display()),
        })
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn every_example_parses() {
    let files = example_files();
    let names: Vec<String> = files.iter().map(|(p, _)| file_name(p)).collect();
    // Guards against the directory test passing because the files are gone.
    for expected in [
        "quickstart.toml",
        "production-files.toml",
        "delegated.toml",
        "unix-socket.toml",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
    for (path, text) in &files {
        if let Err(errors) = Config::parse(text) {
            panic!("{}:\n{}", path.display(), render(&errors));
        }
    }
}

#[test]
fn production_examples_have_no_warnings() {
    // quickstart.toml is self-signed on purpose and warns about it; the others are meant to be
    // copied into production, so a warning there teaches the wrong setup.
    for (path, text) in example_files() {
        if file_name(&path) == "quickstart.toml" {
            continue;
        }
        let loaded = parse_ok(&text);
        assert!(
            loaded.warnings.is_empty(),
            "{}:\n{}",
            path.display(),
            render(&loaded.warnings)
        );
    }
}

#[test]
fn every_example_explains_itself_and_is_indexed() {
    let readme = match fs::read_to_string(format!("{EXAMPLES}/README.md")) {
        Ok(r) => r,
        Err(e) => panic!("examples/README.md: {e}"),
    };
    for (path, text) in example_files() {
        let name = file_name(&path);
        assert!(
            text.starts_with("# "),
            "{name} should open with a comment saying what it is for"
        );
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not list {name}"
        );
    }
}

#[test]
fn examples_refuse_unknown_keys() {
    for (path, text) in example_files() {
        let name = file_name(&path);
        assert_unknown_key_refused(&text, 0, &format!("{name}: top of file"));
        for (line, table) in table_headers(&text) {
            if FREE_FORM_TABLES.contains(&table.as_str()) {
                continue;
            }
            assert_unknown_key_refused(&text, line, &format!("{name}: [{table}]"));
        }
    }
}

#[test]
fn self_check_is_off_by_default_and_can_be_turned_on() {
    assert!(!parse_ok(MINIMAL).config.self_check);
    let text = format!("self_check = true\n{MINIMAL}");
    assert!(parse_ok(&text).config.self_check);
    let errors = parse_err(&format!("self_check = \"yes\"\n{MINIMAL}"));
    assert_eq!(errors[0].key, "self_check", "{}", render(&errors));
}

#[test]
fn workers_default_to_one_per_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(parse_ok(MINIMAL).config.workers, cpus);
    let errors = parse_err(&format!("workers = \"two\"\n{MINIMAL}"));
    assert_eq!(errors[0].key, "workers", "{}", render(&errors));
}
