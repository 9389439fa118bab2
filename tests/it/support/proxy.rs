//! A proxy started in-process on ports chosen by the OS, with a test CA's certificate, and
//! stopped (drained) when dropped or on request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use matrix_edge::config::Config;
use matrix_edge::listener::Bound;
use matrix_edge::route::Role;
use matrix_edge::{Command, Listeners, run};

use super::pki::TestCa;

/// Names on the default test certificate.
pub const NAMES: [&str; 3] = ["example.test", "matrix.example.test", "127.0.0.1"];

pub struct Proxy {
    pub https: SocketAddr,
    pub federation: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub roots: Arc<RootCertStore>,
    /// Holds the certificate files for the proxy's lifetime.
    _dir: tempfile::TempDir,
    commands: mpsc::Sender<Command>,
    /// The config text the proxy started with, for tests that reload an edited copy.
    pub config_text: String,
    pub task: Option<JoinHandle<()>>,
}

pub struct ProxyBuilder {
    backend_url: String,
    backend_extra: String,
    extra: String,
    workers: Option<usize>,
    tls: Option<String>,
    ca: TestCa,
    dir: tempfile::TempDir,
    ports: Option<Ports>,
}

/// Listeners bound before the proxy starts, so their ports can be given to others first (Pebble
/// validates on ports it is told at start).
pub struct Ports {
    pub https: tokio::net::TcpListener,
    pub federation: tokio::net::TcpListener,
    pub http: tokio::net::TcpListener,
    pub admin: tokio::net::TcpListener,
}

impl Ports {
    pub fn any() -> Ports {
        Self::at(["127.0.0.1:0".parse().unwrap(); 4])
    }

    /// Binds `[https, federation, http, admin]` again, e.g. after a restart.
    pub fn at(addrs: [SocketAddr; 4]) -> Ports {
        let bind = |a| matrix_edge::listener::bind(a, false, "test").unwrap();
        Ports {
            https: bind(addrs[0]),
            federation: bind(addrs[1]),
            http: bind(addrs[2]),
            admin: bind(addrs[3]),
        }
    }

    pub fn addrs(&self) -> [SocketAddr; 4] {
        [&self.https, &self.federation, &self.http, &self.admin].map(|l| l.local_addr().unwrap())
    }
}

impl Proxy {
    /// A TLS connection to the https listener, HTTP/1.1 by ALPN, verified as `example.test`.
    pub async fn h1_stream(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        crate::support::client::connect(
            self.https,
            "example.test",
            self.roots.clone(),
            &[b"http/1.1"],
        )
        .await
        .unwrap()
    }

    /// A proxy in front of `backend_url`, with `extra` TOML appended (whole tables).
    pub fn builder(backend_url: &str) -> ProxyBuilder {
        ProxyBuilder {
            backend_url: backend_url.to_owned(),
            backend_extra: String::new(),
            extra: String::new(),
            workers: None,
            tls: None,
            ca: TestCa::new(),
            dir: tempfile::tempdir().unwrap(),
            ports: None,
        }
    }

    /// Starts draining; returns the task so the test can await the end of `run`.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        let _ = self.commands.try_send(Command::Shutdown);
        self.task.take().expect("already shut down")
    }

    /// Asks the running proxy to swap in a configuration, as SIGHUP does after validating it.
    pub async fn reload(&self, toml: &str) {
        let loaded = Config::parse(toml).unwrap_or_else(|e| panic!("reload config refused: {e:?}"));
        self.commands
            .send(Command::Reload(Box::new(loaded.config)))
            .await
            .unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl ProxyBuilder {
    /// Extra TOML tables/keys appended to the generated config.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Extra keys for the `[backend]` table.
    pub fn backend_extra(mut self, toml: &str) -> Self {
        self.backend_extra.push_str(toml);
        self.backend_extra.push('\n');
        self
    }

    /// Sets `workers` (the default is one per CPU).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Replaces the generated `[tls]` table.
    pub fn tls(mut self, toml: &str) -> Self {
        self.tls = Some(toml.to_owned());
        self
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Serve on these listeners instead of fresh ones.
    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = Some(ports);
        self
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    pub async fn start(self) -> Proxy {
        let tls = match self.tls {
            Some(t) => t,
            None => {
                let leaf = self.ca.issue(self.dir.path(), "default", &NAMES);
                format!(
                    "[tls]\nnames = {:?}\ncert = {:?}\nkey = {:?}\n",
                    NAMES,
                    leaf.cert.display().to_string(),
                    leaf.key.display().to_string()
                )
            }
        };
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let addrs = self.ports.as_ref().map(|p| p.addrs()).unwrap_or([any; 4]);
        let text = format!(
            r#"server_name = "example.test"
{workers}
[backend]
url = "{backend}"
{backend_extra}
[listen]
https = ["{https}"]
federation = ["{federation}"]
http = ["{http}"]
admin = "{admin}"

{tls}
{extra}
"#,
            https = addrs[0],
            federation = addrs[1],
            http = addrs[2],
            admin = addrs[3],
            backend = self.backend_url,
            backend_extra = self.backend_extra,
            extra = self.extra,
            workers = self
                .workers
                .map(|n| format!("workers = {n}"))
                .unwrap_or_default(),
        );
        let loaded =
            Config::parse(&text).unwrap_or_else(|e| panic!("test config refused: {e:?}\n{text}"));
        let listeners = match self.ports {
            None => Listeners::bind(&loaded.config).unwrap(),
            Some(p) => Listeners {
                bound: vec![
                    Bound {
                        role: Role::Https,
                        configured: addrs[0],
                        listener: p.https,
                    },
                    Bound {
                        role: Role::Federation,
                        configured: addrs[1],
                        listener: p.federation,
                    },
                    Bound {
                        role: Role::Http,
                        configured: addrs[2],
                        listener: p.http,
                    },
                ],
                admin: Some(p.admin),
            },
        };
        let https = listeners.addr(Role::Https).unwrap();
        let federation = listeners.addr(Role::Federation).unwrap();
        let http = listeners.addr(Role::Http).unwrap();
        let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
        let (commands, received) = mpsc::channel::<Command>(4);
        let task = tokio::spawn(async move {
            run(loaded.config, listeners, received).await.unwrap();
        });
        Proxy {
            https,
            federation,
            http,
            admin,
            roots: self.ca.roots(),
            _dir: self.dir,
            commands,
            config_text: text,
            task: Some(task),
        }
    }
}
