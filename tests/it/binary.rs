//! The built binary, driven from outside as an admin would: `config check`, the README's
//! quickstart with curl, SIGTERM, and memory that stays flat while gigabytes stream through.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::pki::TestCa;
use crate::support::{Backend, connect};

const BIN: &str = env!("CARGO_BIN_EXE_matrix-edge");

/// A running `matrix-edge run`, killed when dropped (also when a test fails).
pub(crate) struct Running {
    child: Child,
    listening: Vec<(String, SocketAddr)>,
    pub(crate) stderr_rest: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub(crate) fn start(config: &Path) -> Running {
        Self::start_with(config, &[], &[])
    }

    /// Starts `run --config CONFIG` with extra arguments and environment, and waits for the
    /// `ready` line (bounded).
    pub(crate) fn start_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .args(args)
            .envs(env.iter().copied())
            .env("MATRIX_EDGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut listening = Vec::new();
        let mut seen = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no `ready` line from the proxy; it said: {seen:#?}"));
            if let Some(rest) = line.split("listening on ").nth(1) {
                // Text (`role="https"`) and JSON (`"role":"https"`) lines alike.
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
                    .collect();
                let addr: SocketAddr = addr.parse().unwrap();
                let role = ["role=\"", "\"role\":\""]
                    .iter()
                    .find_map(|key| rest.split(key).nth(1))
                    .and_then(|r| r.split('"').next())
                    .unwrap()
                    .to_owned();
                listening.push((role, addr));
            }
            let ready = line.contains(" ready ") || line.contains("\"message\":\"ready\"");
            seen.push(line);
            if ready {
                break;
            }
        }
        Running {
            child,
            listening,
            stderr_rest: rx,
        }
    }

    pub(crate) fn addr(&self, role: &str) -> SocketAddr {
        self.listening.iter().find(|(r, _)| r == role).unwrap().1
    }

    fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and returns the exit code.
    pub(crate) fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the proxy did not exit within 15s of SIGTERM");
    }
}

fn examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn config_check_accepts_the_quickstart() {
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(examples_dir().join("quickstart.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn config_check_reports_every_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "server_name = \"exa_mple.com\"\n\n[backend]\nurl = \"https://127.0.0.1:8008/synapse\"\n\n[limits]\nmax_body = \"lots\"\n\n[tls]\nself_signed = true\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1: `server_name`"), "{err}");
    assert!(err.contains("line 4: `backend.url`"), "{err}");
    assert!(err.contains("line 7: `limits.max_body`"), "{err}");

    std::fs::write(&path, "server_name = \"example.com\"\nbakend = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("bakend"), "{err}");
}

#[test]
fn config_check_loads_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "leaf", &["example.test"]);
    let other = ca.issue(dir.path(), "other", &["example.test"]);
    let path = dir.path().join("proxy.toml");
    let write = |cert: &Path, key: &Path| {
        std::fs::write(
            &path,
            format!("server_name = \"example.test\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n[well_known]\nserver = \"matrix.example.test:443\"\n[tls]\ncert = {cert:?}\nkey = {key:?}\n"),
        )
        .unwrap();
    };
    let check = || {
        Command::new(BIN)
            .args(["config", "check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    // Valid files: ok, with a warning that the delegated host is not covered.
    write(&leaf.cert, &leaf.key);
    let out = check();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("no certificate covers `matrix.example.test`"),
        "{stdout}"
    );
    // A key that belongs to another certificate.
    write(&leaf.cert, &other.key);
    let out = check();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{out:?}"
    );
    // A missing file is named.
    write(&dir.path().join("missing.pem"), &leaf.key);
    let out = check();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.pem"),
        "{out:?}"
    );
}

#[test]
fn run_with_a_bad_config_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "server_name = \"example.com\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend"));
}

/// The README's first command, then curl as the README shows it. Uses the quickstart's fixed
/// ports (8443, 8448, 8080, 9000); no other test binds them.
#[test]
fn quickstart_answers_curl_and_stops_on_sigterm() {
    let mut proxy = Running::start(&examples_dir().join("quickstart.toml"));
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "https://localhost:8443/.well-known/matrix/server",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body, serde_json::json!({"m.server": "localhost:8448"}));

    // Over h2 and IPv6, a forwarded path with no homeserver behind: a Matrix 502.
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
            "https://[::1]:8448/_matrix/federation/v1/version",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("502 2"), "{text}");
    assert!(text.contains("M_UNKNOWN"), "{text}");

    assert_eq!(proxy.terminate(), Some(0));
    let rest: Vec<String> = proxy.stderr_rest.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:#?}");
}

/// 1 GiB up and 1 GiB down through the proxy: its peak memory must stay far below the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_bodies_stream_with_flat_memory() {
    // Bounded: a stalled transfer fails here (and the proxy process is killed with the future)
    // instead of holding the suite until CI's own limit.
    tokio::time::timeout(Duration::from_secs(240), gigabyte_transfers())
        .await
        .expect("1 GiB up and down did not complete within 240s: a transfer stalled");
}

async fn gigabyte_transfers() {
    const GIB: u64 = 1 << 30;
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "leaf", &["example.test"]);
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"example.test\"\n[backend]\nurl = \"{}\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nfederation = []\nhttp = []\n[limits]\nmax_body = \"2G\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
            backend.url(),
            leaf.cert,
            leaf.key
        ),
    )
    .unwrap();
    let proxy = Running::start(&config);
    let https = proxy.addr("https");
    let baseline = proxy.vm_hwm_kib();

    // Upload: chunked, so nothing in the proxy knows the size in advance.
    let mut tls = connect(https, "example.test", ca.roots(), &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'x'; 256 * 1024];
    let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
    frame.extend_from_slice(&chunk);
    frame.extend_from_slice(b"\r\n");
    for _ in 0..(GIB / chunk.len() as u64) {
        tls.write_all(&frame).await.unwrap();
    }
    tls.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    // Each half has its own bound, so a stall says which it was.
    tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut buf))
        .await
        .expect("the upload was sent in full but its response did not come within 60s")
        .unwrap();
    let resp = crate::support::client::parse_response(&buf);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["received"], GIB);
    let after_upload = proxy.vm_hwm_kib();

    // Download.
    let mut tls = connect(https, "example.test", ca.roots(), &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /_matrix/big/{GIB} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let download = async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(100), download)
        .await
        .is_err()
    {
        panic!("the download stalled after {total} bytes");
    }
    assert!(total > GIB, "downloaded only {total} bytes");
    let after_download = proxy.vm_hwm_kib();
    eprintln!(
        "proxy VmHWM: baseline {baseline} KiB, after 1 GiB up {after_upload} KiB, after 1 GiB down {after_download} KiB"
    );
    // Flat: the peak grows by a few buffers, not by anything near the 1 GiB that passed.
    assert!(
        after_upload < baseline + 64 * 1024,
        "upload grew memory to {after_upload} KiB"
    );
    assert!(
        after_download < baseline + 64 * 1024,
        "download grew memory to {after_download} KiB"
    );
}
