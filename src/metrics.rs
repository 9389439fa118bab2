//! Metrics: counters, gauges and histograms in the Prometheus text format, served on the admin
//! listener at `/metrics`.
//!
//! Every label has a bounded set of values: route classes and results are enums, status codes
//! are at most the ~60 registered ones, certificate names come from the config. Nothing from a
//! request (path, host, origin) ever becomes a label.

use std::sync::OnceLock;
use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::route::{Class, Route};

mod sharded;

/// What a request was, for metrics and the access log.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RouteClass {
    federation,
    keys,
    media,
    client,
    other_matrix,
    synapse_client,
    internal,
    extra,
    well_known,
    acme,
    redirect,
    refused,
    not_found,
}

impl RouteClass {
    pub const ALL: [RouteClass; 13] = [
        RouteClass::federation,
        RouteClass::keys,
        RouteClass::media,
        RouteClass::client,
        RouteClass::other_matrix,
        RouteClass::synapse_client,
        RouteClass::internal,
        RouteClass::extra,
        RouteClass::well_known,
        RouteClass::acme,
        RouteClass::redirect,
        RouteClass::refused,
        RouteClass::not_found,
    ];

    pub fn of(route: &Route) -> Self {
        match route {
            Route::Forward(Class::Federation) => RouteClass::federation,
            Route::Forward(Class::Keys) => RouteClass::keys,
            Route::Forward(Class::Media) => RouteClass::media,
            Route::Forward(Class::Client) => RouteClass::client,
            Route::Forward(Class::OtherMatrix) => RouteClass::other_matrix,
            Route::Forward(Class::SynapseClient) => RouteClass::synapse_client,
            Route::Forward(Class::Internal(_)) => RouteClass::internal,
            Route::Forward(Class::Extra) => RouteClass::extra,
            Route::WellKnown(_) => RouteClass::well_known,
            Route::AcmeHttp01 => RouteClass::acme,
            Route::RedirectToHttps => RouteClass::redirect,
            Route::Refuse(_) => RouteClass::refused,
            Route::NotFound => RouteClass::not_found,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::federation => "federation",
            RouteClass::keys => "keys",
            RouteClass::media => "media",
            RouteClass::client => "client",
            RouteClass::other_matrix => "other_matrix",
            RouteClass::synapse_client => "synapse_client",
            RouteClass::internal => "internal",
            RouteClass::extra => "extra",
            RouteClass::well_known => "well_known",
            RouteClass::acme => "acme",
            RouteClass::redirect => "redirect",
            RouteClass::refused => "refused",
            RouteClass::not_found => "not_found",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub class: RouteClass,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: RouteClass,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum BackendError {
    unreachable,
    timeout,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendErrorLabels {
    pub kind: BackendError,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HandshakeResult {
    ok,
    failed,
    timeout,
    acme_challenge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub result: HandshakeResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AcmeOutcome {
    issued,
    loaded_from_cache,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcmeLabels {
    pub outcome: AcmeOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    ok,
    refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

/// The per-class series, looked up once at start instead of on every request.
pub struct ClassMetrics {
    pub duration: sharded::Histogram,
    pub request_bytes: sharded::Counter,
    pub response_bytes: sharded::Counter,
    /// `requests{class, status}` for the statuses in [`COMMON_STATUSES`], each resolved on first
    /// use, so that a series appears only once it has been counted.
    common: [OnceLock<sharded::Counter>; COMMON_STATUSES.len()],
}

/// The statuses nearly every request ends with; any other is looked up in the family.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 206, 301, 304, 400, 401, 403, 404, 413, 429, 499, 500, 502, 504,
];

/// All metrics of one process.
pub struct Metrics {
    per_class: Vec<ClassMetrics>,
    registry: Registry,
    // Written on every request: per-worker cells, see `sharded`.
    pub requests: Family<RequestLabels, sharded::Counter>,
    pub duration: Family<ClassLabel, sharded::Histogram>,
    pub in_flight: sharded::Gauge,
    pub request_bytes: Family<ClassLabel, sharded::Counter>,
    pub response_bytes: Family<ClassLabel, sharded::Counter>,
    pub backend_errors: Family<BackendErrorLabels, Counter>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub connections_open: Gauge,
    pub cert_expiry: Family<NameLabel, Gauge<i64, AtomicI64Value>>,
    pub acme: Family<AcmeLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
}

type AtomicI64Value = std::sync::atomic::AtomicI64;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("matrix_edge");
        let requests = Family::<RequestLabels, sharded::Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route class and status",
            requests.clone(),
        );
        // 1 ms to ~65 s; longer requests (state, send_join, long-polling sync) land in +Inf.
        let duration = Family::<ClassLabel, sharded::Histogram>::default();
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body, by route class",
            duration.clone(),
        );
        let in_flight = sharded::Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being answered",
            in_flight.clone(),
        );
        let request_bytes = Family::<ClassLabel, sharded::Counter>::default();
        registry.register(
            "request_body_bytes",
            "Request body bytes received from clients, by route class",
            request_bytes.clone(),
        );
        let response_bytes = Family::<ClassLabel, sharded::Counter>::default();
        registry.register(
            "response_body_bytes",
            "Response body bytes sent to clients, by route class",
            response_bytes.clone(),
        );
        let backend_errors = Family::<BackendErrorLabels, Counter>::default();
        registry.register(
            "backend_errors",
            "Requests the backend failed: unreachable (502), timeout (504), failed (502)",
            backend_errors.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by result",
            handshakes.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open (TLS and plain HTTP)",
            connections_open.clone(),
        );
        let cert_expiry = Family::<NameLabel, Gauge<i64, AtomicI64Value>>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the certificate served for a configured name expires (Unix time)",
            cert_expiry.clone(),
        );
        let acme = Family::<AcmeLabels, Counter>::default();
        registry.register("acme_events", "ACME outcomes", acme.clone());
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        let per_class = RouteClass::ALL
            .iter()
            .map(|class| {
                let label = ClassLabel { class: *class };
                ClassMetrics {
                    duration: duration.get_or_create(&label).clone(),
                    request_bytes: request_bytes.get_or_create(&label).clone(),
                    response_bytes: response_bytes.get_or_create(&label).clone(),
                    common: Default::default(),
                }
            })
            .collect();
        Metrics {
            per_class,
            registry,
            requests,
            duration,
            in_flight,
            request_bytes,
            response_bytes,
            backend_errors,
            handshakes,
            connections_open,
            cert_expiry,
            acme,
            reloads,
        }
    }

    pub fn class(&self, class: RouteClass) -> &ClassMetrics {
        // `ALL` lists every variant in declaration order, so the index always exists.
        &self.per_class[class as usize]
    }

    /// Counts one answered request.
    pub fn count_request(&self, class: RouteClass, status: u16) {
        let labels = || RequestLabels { class, status };
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.class(class).common[i]
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
    }

    /// The text exposition format (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn handshake(&self, result: HandshakeResult) {
        self.handshakes
            .get_or_create(&HandshakeLabels { result })
            .inc();
    }

    pub fn acme_event(&self, outcome: AcmeOutcome) {
        self.acme.get_or_create(&AcmeLabels { outcome }).inc();
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Records the expiry of the certificate each configured name gets.
    pub fn certificates(&self, set: &crate::tls::CertSet, names: &[String]) {
        self.cert_expiry.clear();
        for name in names {
            let served = set.pick(Some(name));
            if let Some(t) = served.not_after {
                let secs = t
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                self.cert_expiry
                    .get_or_create(&NameLabel { name: name.clone() })
                    .set(secs);
            }
        }
    }
}
