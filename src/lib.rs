//! matrix-edge: the TLS front door of a Matrix homeserver.
//!
//! It terminates TLS on 443 and 8448, serves `/.well-known/matrix/*` itself, and forwards
//! federation and client traffic to the homeserver without changing a byte that a federation
//! signature covers.
//!
//! # The path of a request
//!
//! ```text
//! TCP accept ─ listener (role: https | federation | http | admin)
//!   └─ TLS handshake ─ tls (certificate by SNI, ALPN h2 / http/1.1)
//!       ├─ HTTP/1.1, body-less and forwarded ─ relay → upstream (bytes in, bytes out)
//!       └─ HTTP ─ server (h1/h2 limits and timeouts; everything the relay does not take)
//!           │  (body-less requests reach the backend through the relay's connections too)
//!           └─ route::classify(role, method, raw path, peer) → Route
//!                ├─ WellKnown  → wellknown
//!                ├─ Forward    → forward → upstream (HTTP/1.1 pool, TCP or unix)
//!                ├─ Redirect   → 301 to https (plain HTTP only)
//!                └─ Refuse / NotFound → respond (Matrix JSON errors)
//! ```
//!
//! # Layout
//!
//! - [`config`]: the TOML file, validated into types at start and on each reload.
//! - [`listener`]: sockets, accept loops, connection lifetimes, drain on shutdown.
//! - [`workers`]: the threads connections are served on, one single-threaded runtime each.
//! - [`tls`]: certificates and the rustls configuration.
//! - [`acme`]: certificates obtained and renewed by ACME.
//! - `relay`: the fast path for plain HTTP/1.1 forwarding, which hands anything else to `server`.
//! - [`server`]: hyper settings and the dispatch of a request to its stage.
//! - [`route`]: the routing decision, a value.
//! - [`wellknown`], [`forward`], [`upstream`], [`respond`]: the answers.
//! - [`admin`]: `/health`, `/ready` and `/metrics`.
//! - [`metrics`], [`reload`], [`supervisor`]: running as a service.
//! - [`discovery`]: resolving a server name as a remote homeserver does.
//! - [`check`]: the federation tester behind `matrix-edge check`.

pub mod acme;
pub mod admin;
pub mod check;
pub mod config;
pub mod discovery;
pub mod forward;
pub mod listener;
pub mod metrics;
mod relay;
pub mod reload;
pub mod respond;
pub mod route;
pub mod server;
pub mod supervisor;
pub mod tls;
pub mod upstream;
pub mod wellknown;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use config::{CertSource, Config};
use listener::{Bound, Lifecycle, TlsSettings};
use metrics::Metrics;
use route::Role;
use server::{Server, SharedServer};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Acme(#[from] acme::AcmeError),
    #[error("cannot start the worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

/// The sockets of a proxy, bound before `run` so that callers (and tests binding port 0) know
/// the addresses.
pub struct Listeners {
    pub bound: Vec<Bound>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address in the config.
    pub fn bind(config: &Config) -> Result<Self, listener::BindError> {
        let mut bound = Vec::new();
        bound.extend(listener::bind_all(Role::Https, &config.listen.https)?);
        bound.extend(listener::bind_all(
            Role::Federation,
            &config.listen.federation,
        )?);
        bound.extend(listener::bind_all(Role::Http, &config.listen.http)?);
        let admin = match config.listen.admin {
            Some(addr) => Some(listener::bind(addr, false, "admin")?),
            None => None,
        };
        Ok(Listeners { bound, admin })
    }

    /// The bound address of the first listener of a role.
    pub fn addr(&self, role: Role) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|b| b.role == role)
            .and_then(|b| b.local_addr().ok())
    }
}

/// With `self_check = true`: once a certificate is served, resolve and probe our own server
/// name as a remote homeserver would, and log the report (warnings and failures with hints).
fn self_check(
    config: &Config,
    resolver: Arc<tls::Resolver>,
) -> Option<tokio::task::JoinHandle<Option<check::Report>>> {
    if !config.self_check {
        return None;
    }
    let mut options = check::Options::default();
    // A private ACME CA's roots are what our own certificate chains to.
    if let CertSource::Acme(acme) = &config.tls.source
        && let Some(path) = &acme.ca_roots
    {
        match check::load_ca(path) {
            Ok(certs) => options.extra_roots = certs,
            Err(e) => warn!("self check: {e}"),
        }
    }
    Some(tokio::spawn(check::preflight(
        config.server_name.clone(),
        options,
        move || resolver.is_ready(),
        std::time::Duration::from_secs(600),
    )))
}

/// What a running proxy can be asked to do.
pub enum Command {
    /// Swap in a validated configuration (SIGHUP).
    Reload(Box<Config>),
    /// A reload was asked for, but the file did not validate (already logged).
    ReloadRefused,
    /// Stop accepting, drain, return (SIGTERM, SIGINT).
    Shutdown,
}

/// Runs the proxy on bound listeners until a [`Command::Shutdown`] arrives (or the command
/// channel closes), then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    commands: mpsc::Receiver<Command>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let certs = tls::load(&config.tls)?;
    if let Some(certs) = &certs {
        for warning in tls::warnings(certs, &config.tls, SystemTime::now()) {
            warn!("{warning}");
        }
        metrics.certificates(certs, &config.tls.names);
    }
    let resolver = tls::Resolver::new(certs);
    let (acme, acme_task) = match &config.tls.source {
        CertSource::Acme(settings) => {
            let (handle, task) = acme::start(
                settings,
                &config.tls.names,
                resolver.clone(),
                metrics.clone(),
            )?;
            (Some(handle), Some(task))
        }
        _ => (None, None),
    };
    let tls_settings = TlsSettings {
        config: tls::server_config(resolver.clone())?,
        tls_alpn_challenge: acme.as_ref().and_then(|a| a.tls_alpn_config()),
    };
    let https_port = listeners.addr(Role::Https).map(|a| a.port());
    let server: SharedServer = Arc::new(ArcSwap::from_pointee(Server::new(
        &config,
        acme.clone(),
        metrics.clone(),
        https_port,
    )));
    let lifecycle = Lifecycle::new();
    let workers = Arc::new(workers::Workers::start(config.workers).map_err(StartError::Workers)?);
    let shared_config = Arc::new(ArcSwap::from_pointee(config));
    let mut state = reload::State {
        config: shared_config.clone(),
        server: server.clone(),
        resolver: resolver.clone(),
        acme,
        metrics: metrics.clone(),
        tls: tls_settings,
        phase: lifecycle.subscribe(),
        tracker: lifecycle.tracker.clone(),
        listeners: Default::default(),
        workers: workers.clone(),
    };
    for bound in listeners.bound {
        state.spawn_listener(bound);
    }
    if let Some(admin_listener) = listeners.admin {
        if let Ok(addr) = admin_listener.local_addr() {
            info!(role = "admin", %addr, "listening on {addr}");
        }
        tokio::spawn(admin::serve(
            admin_listener,
            admin::Probe {
                resolver: resolver.clone(),
                server: server.clone(),
                metrics: metrics.clone(),
            },
            lifecycle.subscribe(),
        ));
    }
    let watcher = tokio::spawn(reload::watch_certificates(
        shared_config.clone(),
        resolver.clone(),
        metrics.clone(),
    ));
    let server_name = shared_config.load().server_name.to_string();
    info!(server_name, "ready");
    supervisor::ready(&format!("serving {server_name}"));
    let self_check = self_check(&shared_config.load(), resolver.clone());

    state.serve_commands(commands).await;
    // The state holds a tracker clone; the drain below waits for every clone to go.
    drop(state);

    supervisor::stopping();
    watcher.abort();
    if let Some(task) = self_check {
        task.abort();
    }
    if let Some(task) = acme_task {
        task.abort();
    }
    let clean = lifecycle
        .shutdown(shared_config.load().limits.shutdown_grace)
        .await;
    // Every connection has ended or been closed: the worker threads have nothing left to run.
    if let Ok(workers) = Arc::try_unwrap(workers) {
        let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
    }
    info!(clean, "stopped");
    Ok(())
}
