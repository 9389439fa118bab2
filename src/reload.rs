//! Reload: a validated new configuration swapped in while the proxy serves, and certificate
//! files picked up when they change on disk.
//!
//! Reload never re-binds what stays: listeners whose address is unchanged keep their sockets,
//! new addresses are bound first (a reload that cannot bind changes nothing), removed ones stop
//! accepting while their open connections finish. The request-handling state is replaced whole,
//! so a request in flight completes with the configuration it started with. Changing the
//! certificate source to or from ACME, or the ACME settings, needs a restart: the ACME account
//! and its pending challenges live in this process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::acme::AcmeHandle;
use crate::config::{CertSource, Config};
use crate::listener::{self, Bound, ConnSettings, Phase, TlsSettings};
use crate::metrics::{Metrics, ReloadResult};
use crate::route::Role;
use crate::server::{Server, SharedServer};
use crate::tls::{self, Resolver};
use crate::workers::Workers;
use crate::{Command, supervisor};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0} needs a restart; the running configuration is unchanged")]
    NeedsRestart(&'static str),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Bind(#[from] listener::BindError),
}

/// The running proxy, as far as a reload can change it.
pub struct State {
    pub config: Arc<ArcSwap<Config>>,
    pub server: SharedServer,
    pub resolver: Arc<Resolver>,
    pub acme: Option<AcmeHandle>,
    pub metrics: Arc<Metrics>,
    pub tls: TlsSettings,
    pub phase: watch::Receiver<Phase>,
    pub tracker: mpsc::Sender<()>,
    /// Each accepting listener by (role, configured address), with the switch that stops it.
    pub listeners: HashMap<(Role, SocketAddr), watch::Sender<bool>>,
    /// The threads the listeners accept on.
    pub workers: Arc<Workers>,
}

impl State {
    pub fn spawn_listener(&mut self, bound: Bound) {
        let key = (bound.role, bound.configured);
        let addr = bound.local_addr().ok();
        let settings = ConnSettings {
            tls: (bound.role != Role::Http).then(|| self.tls.clone()),
            metrics: self.metrics.clone(),
        };
        match listener::spawn_accept_loops(
            bound,
            &self.workers,
            &self.server,
            &settings,
            &self.phase,
            &self.tracker,
        ) {
            Ok(stop) => {
                if let Some(addr) = addr {
                    info!(role = key.0.as_str(), %addr, "listening on {addr}");
                }
                self.listeners.insert(key, stop);
            }
            Err(e) => {
                error!(role = key.0.as_str(), address = %key.1, error = %e, "cannot accept on this listener")
            }
        }
    }

    /// Handles commands until a shutdown is asked for.
    pub async fn serve_commands(&mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(command) = commands.recv().await {
            match command {
                Command::Shutdown => return,
                Command::ReloadRefused => {
                    self.metrics.reload(ReloadResult::refused);
                    supervisor::ready("serving (last reload refused: invalid configuration)");
                }
                Command::Reload(config) => match self.reload(*config) {
                    Ok(summary) => {
                        self.metrics.reload(ReloadResult::ok);
                        info!("configuration reloaded: {summary}");
                        supervisor::ready("serving (reloaded)");
                    }
                    Err(e) => {
                        self.metrics.reload(ReloadResult::refused);
                        error!("reload refused: {e}");
                        supervisor::ready("serving (last reload refused)");
                    }
                },
            }
        }
    }

    /// Applies `new`, or changes nothing and says why.
    pub fn reload(&mut self, new: Config) -> Result<String, ReloadError> {
        let old = self.config.load_full();
        let certs = match (&old.tls.source, &new.tls.source) {
            (CertSource::Acme(a), CertSource::Acme(b))
                if a == b && old.tls.names == new.tls.names =>
            {
                None
            }
            (CertSource::Acme(_), CertSource::Acme(_)) => {
                return Err(ReloadError::NeedsRestart(
                    "changing [tls.acme] or tls.names",
                ));
            }
            (CertSource::Acme(_), _) | (_, CertSource::Acme(_)) => {
                return Err(ReloadError::NeedsRestart("switching to or from ACME"));
            }
            (_, _) => tls::load(&new.tls)?,
        };
        if old.listen.admin != new.listen.admin {
            warn!("a changed `listen.admin` takes effect at the next restart");
        }
        if old.workers != new.workers {
            warn!("a changed `workers` takes effect at the next restart");
        }

        let wanted = wanted_listeners(&new);
        let mut added = Vec::new();
        for (role, addrs) in &wanted {
            let fresh: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| !self.listeners.contains_key(&(*role, *a)))
                .collect();
            // Bound now, before anything changes: a failure leaves the old state whole.
            added.extend(listener::bind_all(*role, &fresh)?);
        }

        // Nothing below can fail.
        if let Some(set) = &certs {
            for warning in tls::warnings(set, &new.tls, SystemTime::now()) {
                warn!("{warning}");
            }
            self.metrics.certificates(set, &new.tls.names);
        }
        if let Some(set) = certs {
            self.resolver.swap(set);
        }
        let https_port = self
            .listeners
            .keys()
            .find(|(role, _)| *role == Role::Https)
            .map(|(_, a)| a.port());
        self.server.store(Arc::new(Server::new(
            &new,
            self.acme.clone(),
            self.metrics.clone(),
            https_port,
        )));
        let removed: Vec<(Role, SocketAddr)> = self
            .listeners
            .keys()
            .filter(|(role, addr)| !wanted.iter().any(|(r, a)| r == role && a.contains(addr)))
            .copied()
            .collect();
        for key in &removed {
            if let Some(stop) = self.listeners.remove(key) {
                let _ = stop.send(true);
                info!(role = key.0.as_str(), address = %key.1, "stopped accepting");
            }
        }
        let added_count = added.len();
        for bound in added {
            self.spawn_listener(bound);
        }
        self.config.store(Arc::new(new));
        Ok(format!(
            "{added_count} listener(s) added, {} removed",
            removed.len()
        ))
    }
}

fn wanted_listeners(config: &Config) -> [(Role, Vec<SocketAddr>); 3] {
    [
        (Role::Https, config.listen.https.clone()),
        (Role::Federation, config.listen.federation.clone()),
        (Role::Http, config.listen.http.clone()),
    ]
}

/// What identifies a certificate file's content without reading it.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(config: &Config) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    let CertSource::Files(pairs) = &config.tls.source else {
        return Vec::new();
    };
    pairs
        .iter()
        .flat_map(|p| [&p.cert, &p.key])
        // `metadata` follows symlinks: a Kubernetes Secret swaps a symlink, and the target's
        // inode changes with it.
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

/// Re-reads the certificate files every `tls.watch_interval` when they change on disk (certbot
/// renewal, a rotated Kubernetes Secret). A set that does not load is logged and the old one
/// keeps serving. Ends when aborted.
pub async fn watch_certificates(
    config: Arc<ArcSwap<Config>>,
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
) {
    let mut last = stamps(&config.load());
    loop {
        let interval = config.load().tls.watch_interval;
        if interval.is_zero() {
            tokio::time::sleep(Duration::from_secs(60)).await;
            continue;
        }
        tokio::time::sleep(interval).await;
        let current = config.load_full();
        let now = stamps(&current);
        if now == last {
            continue;
        }
        last = now;
        match tls::load(&current.tls) {
            Ok(Some(set)) => {
                for warning in tls::warnings(&set, &current.tls, SystemTime::now()) {
                    warn!("{warning}");
                }
                metrics.certificates(&set, &current.tls.names);
                resolver.swap(set);
                info!("certificate files changed on disk: new certificates served");
            }
            Ok(None) => {}
            Err(e) => warn!(
                "certificate files changed on disk but cannot be loaded, still serving the previous ones: {e}"
            ),
        }
    }
}
