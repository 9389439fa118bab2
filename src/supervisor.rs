//! The conversation with whatever supervises the process: signals in, sd_notify messages out.
//!
//! SIGTERM and SIGINT mean drain and exit; SIGHUP means reload. systemd (`Type=notify`, with
//! `ExecReload` sending SIGHUP) hears READY once the listeners accept, RELOADING with its
//! timestamp while a reload runs and READY again after it, STOPPING when the drain starts, and a
//! STATUS line after each. Outside systemd
//! (`NOTIFY_SOCKET` unset) the messages are no-ops. This module decides nothing: `run` does.

use std::path::PathBuf;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::Command;
use crate::config::Config;

/// READY=1 with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// RELOADING=1 with the monotonic timestamp `Type=notify-reload` requires.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Turns signals into [`Command`]s for `run`: SIGTERM/SIGINT into `Shutdown`, SIGHUP into a
/// `Reload` of `config_path`, read and validated here. A config that does not validate is
/// refused with its errors logged; `run` never sees it and keeps serving the old one.
pub fn spawn_signal_handler(config_path: PathBuf) -> std::io::Result<mpsc::Receiver<Command>> {
    let (tx, rx) = mpsc::channel(4);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    info!("SIGTERM received: draining");
                    let _ = tx.send(Command::Shutdown).await;
                    return;
                }
                _ = int.recv() => {
                    info!("SIGINT received: draining");
                    let _ = tx.send(Command::Shutdown).await;
                    return;
                }
                _ = hup.recv() => {
                    info!(config = %config_path.display(), "SIGHUP received: reloading");
                    reloading();
                    match Config::load(&config_path) {
                        Ok(loaded) => {
                            for w in &loaded.warnings {
                                warn!("{}: {w}", config_path.display());
                            }
                            if tx.send(Command::Reload(Box::new(loaded.config))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            error!("reload refused, still serving the previous configuration: {e}");
                            if tx.send(Command::ReloadRefused).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(rx)
}
