//! Client discovery: `/.well-known/matrix/client` (spec client-server "Server Discovery") and
//! `/.well-known/matrix/support`, fetched from the server name's host as a client does.

use serde::Serialize;
use serde_json::Value;

use super::{Check, CheckId};
use crate::config::ServerName;
use crate::discovery::Net;
use crate::discovery::https::{
    ConnectError, Exchange, FetchError, HttpsUrl, Redirect, RequestError,
};
use crate::discovery::wellknown::bracketed_host;

const BODY_LIMIT: usize = 1024 * 1024;

/// What client discovery found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientReport {
    pub well_known_url: Option<String>,
    /// Final status of `/.well-known/matrix/client`; `None` without an HTTP answer.
    pub status: Option<u16>,
    pub redirects: Vec<Redirect>,
    /// `m.homeserver.base_url`.
    pub base_url: Option<String>,
    /// `versions` from `<base_url>/_matrix/client/versions`.
    pub versions: Option<Vec<String>>,
    /// Final status of `/.well-known/matrix/support`.
    pub support_status: Option<u16>,
}

pub(super) async fn check(name: &ServerName, net: &Net) -> (ClientReport, Vec<Check>) {
    let mut report = ClientReport::default();
    let mut checks = Vec::new();
    let host = match ServerName::parse(&bracketed_host(name)) {
        Ok(host) => host,
        Err(_) => name.clone(),
    };
    let url = HttpsUrl::new(host.clone(), "/.well-known/matrix/client");
    report.well_known_url = Some(url.to_string());
    let subject = Some(url.to_string());
    let fetch = net.https.fetch(&net.dns, &url, BODY_LIMIT).await;
    for hop in &fetch.redirects {
        checks.push(Check::warning(
            CheckId::WellKnownClient,
            Some(hop.from.clone()),
            format!("redirects ({}) to {}", hop.status, hop.location),
            "clients before spec v1.20 follow no redirect here, and browsers need CORS headers on the redirect too; serve the file itself with 200 (matrix-edge: `well_known.client`)",
        ));
    }
    report.redirects = fetch.redirects;
    let reachable = match fetch.result {
        Ok(exchange) => {
            report.status = Some(exchange.status.as_u16());
            client_file(&exchange, subject, net, &mut report, &mut checks).await;
            true
        }
        Err(e) => {
            checks.push(fetch_failure(&e, subject, "client"));
            false
        }
    };
    if reachable {
        support_file(&host, net, &mut report, &mut checks).await;
    }
    (report, checks)
}

fn fetch_failure(e: &FetchError, subject: Option<String>, file: &str) -> Check {
    let message = format!("not fetched: {e}");
    let id = if file == "support" {
        CheckId::WellKnownSupport
    } else {
        CheckId::WellKnownClient
    };
    match e {
        FetchError::Resolve { .. } => Check::ok(
            id,
            subject,
            format!(
                "{message}; clients cannot discover the homeserver from user IDs, users type its URL"
            ),
        ),
        FetchError::Unreachable { errors, .. }
            if errors.iter().all(|e| {
                matches!(e, RequestError::Connect(ConnectError::Tcp { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused)
            }) =>
        {
            Check::ok(
                id,
                subject,
                format!("{message}; no HTTPS server, so users type the homeserver URL"),
            )
        }
        FetchError::Unreachable { .. } => Check::warning(
            id,
            subject,
            message,
            "clients that look up the homeserver from a user ID fail here; make port 443 of the server name answer, or accept that users type the homeserver URL",
        ),
        FetchError::Certificate { .. } => Check::failure(
            id,
            subject,
            format!("{message}; clients refuse the certificate"),
            "clients (and browsers) verify the certificate on port 443 of the server name: serve a valid certificate for it",
        ),
        FetchError::TooManyRedirects { .. }
        | FetchError::RedirectLoop { .. }
        | FetchError::BadRedirect { .. } => Check::failure(
            id,
            subject,
            message,
            "clients give up on this redirect chain; serve the file itself with 200",
        ),
    }
}

async fn client_file(
    exchange: &Exchange,
    subject: Option<String>,
    net: &Net,
    report: &mut ClientReport,
    checks: &mut Vec<Check>,
) {
    let status = exchange.status.as_u16();
    if status == 404 {
        checks.push(Check::ok(
            CheckId::WellKnownClient,
            subject,
            "not present (404): clients ask users for the homeserver URL",
        ));
        return;
    }
    if status != 200 {
        checks.push(Check::failure(
            CheckId::WellKnownClient,
            subject,
            format!("answered {status}"),
            "clients stop login with an error on any answer but 200 or 404; serve the file with 200 (matrix-edge: `well_known.client`) or answer 404",
        ));
        return;
    }
    // Reported after the file's own line, which names the base_url.
    let mut cors = Vec::new();
    cors_check(exchange, subject.clone(), &mut cors);
    let value: Value = match serde_json::from_slice(&exchange.body) {
        Ok(v) => v,
        Err(e) => {
            checks.push(Check::failure(
                CheckId::WellKnownClient,
                subject,
                format!("the body is not JSON: {e}"),
                "clients stop login with an error; serve {\"m.homeserver\": {\"base_url\": \"https://matrix.example.com\"}}",
            ));
            checks.append(&mut cors);
            return;
        }
    };
    let Some(base_url) = value
        .get("m.homeserver")
        .and_then(|h| h.get("base_url"))
        .and_then(Value::as_str)
    else {
        checks.push(Check::failure(
            CheckId::WellKnownClient,
            subject,
            "no string `m.homeserver.base_url`",
            "clients stop login with an error; serve {\"m.homeserver\": {\"base_url\": \"https://matrix.example.com\"}}",
        ));
        checks.append(&mut cors);
        return;
    };
    report.base_url = Some(base_url.to_owned());
    let content_type = exchange.header("content-type").unwrap_or("none");
    if content_type.starts_with("application/json") {
        checks.push(Check::ok(
            CheckId::WellKnownClient,
            subject.clone(),
            format!("base_url {base_url}"),
        ));
    } else {
        checks.push(Check::warning(
            CheckId::WellKnownClient,
            subject.clone(),
            format!("base_url {base_url}, but Content-Type is {content_type}"),
            "the spec answers application/json; some clients insist on it",
        ));
    }
    checks.append(&mut cors);
    if let Some(identity) = value.get("m.identity_server")
        && identity.get("base_url").and_then(Value::as_str).is_none()
    {
        checks.push(Check::warning(
            CheckId::WellKnownClient,
            subject.clone(),
            "`m.identity_server` has no string `base_url`",
            "clients stop login with an error when `m.identity_server` is present without a base_url; fix or remove it",
        ));
    }
    base_url_check(base_url, net, report, checks).await;
}

fn cors_check(exchange: &Exchange, subject: Option<String>, checks: &mut Vec<Check>) {
    let origin = exchange.header("access-control-allow-origin");
    let methods = exchange.header("access-control-allow-methods");
    let headers = exchange.header("access-control-allow-headers");
    match origin {
        Some("*") => {}
        Some(other) => {
            checks.push(Check::warning(
                CheckId::ClientCors,
                subject,
                format!("Access-Control-Allow-Origin is `{other}`, not `*`"),
                "web clients on other origins (app.element.io, your own Element Web) cannot read the file; send `Access-Control-Allow-Origin: *`",
            ));
            return;
        }
        None => {
            checks.push(Check::failure(
                CheckId::ClientCors,
                subject,
                "no Access-Control-Allow-Origin header",
                "web clients (Element Web and others in a browser) cannot read the file and fail to log in; send `Access-Control-Allow-Origin: *` plus the Methods and Headers the spec lists (matrix-edge does when it serves `well_known.client`)",
            ));
            return;
        }
    }
    let missing: Vec<&str> = [
        ("Access-Control-Allow-Methods", methods),
        ("Access-Control-Allow-Headers", headers),
    ]
    .iter()
    .filter(|(_, v)| v.is_none())
    .map(|(n, _)| *n)
    .collect();
    if missing.is_empty() {
        checks.push(Check::ok(
            CheckId::ClientCors,
            subject,
            "CORS headers present (Allow-Origin *)",
        ));
    } else {
        checks.push(Check::warning(
            CheckId::ClientCors,
            subject,
            format!("Allow-Origin is *, but {} missing", missing.join(" and ")),
            "the spec recommends `Access-Control-Allow-Methods: GET, POST, PUT, DELETE, OPTIONS` and `Access-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization`",
        ));
    }
}

async fn base_url_check(
    base_url: &str,
    net: &Net,
    report: &mut ClientReport,
    checks: &mut Vec<Check>,
) {
    let subject = Some(base_url.to_owned());
    if base_url.starts_with("http://") {
        checks.push(Check::warning(
            CheckId::ClientBaseUrl,
            subject,
            "base_url is plain http://, not checked",
            "clients would send passwords and tokens unencrypted; use https://",
        ));
        return;
    }
    let base = match HttpsUrl::parse(base_url) {
        Ok(url) => url,
        Err(reason) => {
            checks.push(Check::failure(
                CheckId::ClientBaseUrl,
                subject,
                format!("base_url is not a usable URL: {reason}"),
                "write it as https://host[:port][/path], e.g. https://matrix.example.com",
            ));
            return;
        }
    };
    let prefix = base
        .path
        .split('?')
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    let versions_url = HttpsUrl::new(
        base.authority.clone(),
        &format!("{prefix}/_matrix/client/versions"),
    );
    let fetch = net.https.fetch(&net.dns, &versions_url, BODY_LIMIT).await;
    let exchange = match fetch.result {
        Ok(e) => e,
        Err(e) => {
            checks.push(Check::failure(
                CheckId::ClientBaseUrl,
                Some(versions_url.to_string()),
                format!("not answered: {e}"),
                "clients cannot reach the homeserver at base_url: check the name, port and certificate of base_url, and that the proxy forwards /_matrix/client/",
            ));
            return;
        }
    };
    let versions: Option<Vec<String>> = serde_json::from_slice::<Value>(&exchange.body)
        .ok()
        .and_then(|v| {
            v.get("versions").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
        });
    match (exchange.status.as_u16(), versions) {
        (200, Some(versions)) if !versions.is_empty() => {
            checks.push(Check::ok(
                CheckId::ClientBaseUrl,
                Some(versions_url.to_string()),
                format!(
                    "answers, newest spec version {}",
                    versions.last().map(String::as_str).unwrap_or("?")
                ),
            ));
            report.versions = Some(versions);
        }
        (status, _) => checks.push(Check::failure(
            CheckId::ClientBaseUrl,
            Some(versions_url.to_string()),
            format!("answered {status} without a `versions` list"),
            "base_url must point at the homeserver's client API: forward /_matrix/client/ to the homeserver on that host",
        )),
    }
}

async fn support_file(
    host: &ServerName,
    net: &Net,
    report: &mut ClientReport,
    checks: &mut Vec<Check>,
) {
    let url = HttpsUrl::new(host.clone(), "/.well-known/matrix/support");
    let subject = Some(url.to_string());
    let fetch = net.https.fetch(&net.dns, &url, BODY_LIMIT).await;
    let exchange = match fetch.result {
        Ok(e) => e,
        Err(e) => {
            checks.push(fetch_failure(&e, subject, "support"));
            return;
        }
    };
    let status = exchange.status.as_u16();
    report.support_status = Some(status);
    if status == 404 {
        checks.push(Check::ok(
            CheckId::WellKnownSupport,
            subject,
            "not present (404)",
        ));
        return;
    }
    if status != 200 {
        checks.push(Check::warning(
            CheckId::WellKnownSupport,
            subject,
            format!("answered {status}"),
            "serve the support file with 200 (matrix-edge: `well_known.support`) or answer 404",
        ));
        return;
    }
    match validate_support(&exchange.body) {
        Ok(summary) => checks.push(Check::ok(CheckId::WellKnownSupport, subject, summary)),
        Err(problem) => checks.push(Check::failure(
            CheckId::WellKnownSupport,
            subject,
            problem,
            "the file needs `contacts` (each with a `role` and a `matrix_id` or `email_address`) or a `support_page`, e.g. {\"contacts\": [{\"role\": \"m.role.admin\", \"email_address\": \"admin@example.com\"}]}",
        )),
    }
}

/// The spec's rules for the support file; `Ok` carries a one-line summary.
pub fn validate_support(body: &[u8]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "the body is not a JSON object".to_owned())?;
    let contacts = match object.get("contacts") {
        None => None,
        Some(Value::Array(items)) => Some(items),
        Some(_) => return Err("`contacts` is not an array".into()),
    };
    let page = match object.get("support_page") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("`support_page` is not a string".into()),
    };
    if contacts.is_none_or(|c| c.is_empty()) && page.is_none() {
        return Err("neither a non-empty `contacts` nor a `support_page`".into());
    }
    for (i, contact) in contacts.into_iter().flatten().enumerate() {
        if contact.get("role").and_then(Value::as_str).is_none() {
            return Err(format!("contact {i} has no `role`"));
        }
        let mxid = contact.get("matrix_id").and_then(Value::as_str);
        let email = contact.get("email_address").and_then(Value::as_str);
        if mxid.is_none() && email.is_none() {
            return Err(format!(
                "contact {i} has neither `matrix_id` nor `email_address`"
            ));
        }
        if mxid.is_some_and(|m| !m.starts_with('@')) {
            return Err(format!("contact {i}'s `matrix_id` does not start with @"));
        }
    }
    Ok(format!(
        "{} contact(s){}",
        contacts.map(Vec::len).unwrap_or(0),
        page.map(|p| format!(", support page {p}"))
            .unwrap_or_default()
    ))
}
