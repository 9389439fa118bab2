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
//!       └─ HTTP ─ server (h1/h2 limits and timeouts)
//!           └─ route::classify(role, method, raw path, peer) → Route
//!                ├─ WellKnown  → wellknown
//!                ├─ Forward    → forward → upstream (HTTP/1.1 pool, TCP or unix)
//!                ├─ Redirect   → 301 to https (plain HTTP only)
//!                └─ Refuse / NotFound → respond (Matrix JSON errors)
//! ```
//!
//! # Layout
//!
//! - [`config`]: the TOML file, validated into types once, at start.
//! - [`listener`]: sockets, accept loops, connection lifetimes, drain on shutdown.
//! - [`tls`]: certificates and the rustls configuration.
//! - [`acme`]: certificates obtained and renewed by ACME.
//! - [`server`]: hyper settings and the dispatch of a request to its stage.
//! - [`route`]: the routing decision, a value.
//! - [`wellknown`], [`forward`], [`upstream`], [`respond`]: the answers.
//! - [`admin`]: `/health` and `/ready`.

pub mod acme;
pub mod admin;
pub mod config;
pub mod forward;
pub mod listener;
pub mod respond;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod wellknown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use config::{CertSource, Config};
use listener::{Bound, ConnSettings, Lifecycle, TlsSettings};
use route::Role;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Acme(#[from] acme::AcmeError),
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

/// Runs the proxy on bound listeners until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let certs = tls::load(&config.tls)?;
    if let Some(certs) = &certs {
        for warning in tls::warnings(certs, &config.tls, std::time::SystemTime::now()) {
            warn!("{warning}");
        }
    }
    let resolver = tls::Resolver::new(certs);
    let (acme, acme_task) = match &config.tls.source {
        CertSource::Acme(settings) => {
            let (handle, task) = acme::start(settings, &config.tls.names, resolver.clone())?;
            (Some(handle), Some(task))
        }
        _ => (None, None),
    };
    let tls_settings = TlsSettings {
        config: tls::server_config(resolver.clone())?,
        tls_alpn_challenge: acme.as_ref().and_then(|a| a.tls_alpn_config()),
    };

    let mut server = server::Server::new(&config, acme);
    if let Some(port) = listeners.addr(Role::Https).map(|a| a.port()) {
        // With port 0 in the config, the real port is only known once bound.
        if config.listen.https.first().is_some_and(|a| a.port() == 0) {
            server.set_https_port(port);
        }
    }
    let server = Arc::new(server);
    let lifecycle = Lifecycle::new();

    for bound in listeners.bound {
        let settings = ConnSettings {
            tls: (bound.role != Role::Http).then(|| tls_settings.clone()),
            handshake_timeout: config.limits.header_read_timeout,
            idle_timeout: config.limits.idle_timeout,
        };
        if let Ok(addr) = bound.local_addr() {
            info!(role = bound.role.as_str(), %addr, "listening on {addr}");
        }
        tokio::spawn(listener::accept_loop(
            bound,
            server.clone(),
            settings,
            lifecycle.subscribe(),
            lifecycle.tracker.clone(),
        ));
    }
    if let Some(admin_listener) = listeners.admin {
        if let Ok(addr) = admin_listener.local_addr() {
            info!(role = "admin", %addr, "listening on {addr}");
        }
        tokio::spawn(admin::serve(
            admin_listener,
            resolver.clone(),
            lifecycle.subscribe(),
        ));
    }
    info!(server_name = %config.server_name, "ready");

    shutdown.await;
    if let Some(task) = acme_task {
        task.abort();
    }
    let clean = lifecycle.shutdown(config.limits.shutdown_grace).await;
    info!(clean, "stopped");
    Ok(())
}
