//! A homeserver stand-in that records the raw request head it receives, byte for byte, so tests
//! can assert what the proxy sent. It speaks just enough HTTP/1.1 (Content-Length and chunked
//! request bodies, keep-alive) and answers by path:
//!
//! - `/_matrix/slow/<ms>/…`: waits `<ms>` before answering;
//! - `/_matrix/big/<bytes>`: answers with a body of that many zero bytes, streamed;
//! - anything else: `200 {"received": <request body bytes>}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the backend saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request head exactly as received, lines joined with `\r\n`, without the blank line.
    pub head: String,
    pub body_len: u64,
    /// Which backend connection carried it, numbered from 0 in accept order.
    pub conn: u64,
}

impl Recorded {
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }

    /// Values of a header (name compared case-insensitively), in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
}

#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Recorded>>>);

impl Log {
    pub fn all(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.all().pop().expect("the backend received no request")
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub struct Backend {
    pub addr: std::net::SocketAddr,
    pub log: Log,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Log::default();
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, task_log.clone(), conn));
            }
        });
        Backend { addr, log, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The same backend on a unix socket.
pub struct UnixBackend {
    pub path: std::path::PathBuf,
    pub log: Log,
    task: JoinHandle<()>,
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UnixBackend {
    pub async fn start(dir: &std::path::Path) -> UnixBackend {
        let path = dir.join("backend.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let log = Log::default();
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, task_log.clone(), conn));
            }
        });
        UnixBackend { path, log, task }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, log: Log, conn: u64) {
    let mut reader = BufReader::new(stream);
    // Bounded: a test connection carries at most this many requests.
    for _ in 0..10_000 {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == b"\r\n" {
                break;
            }
            head.extend_from_slice(&line);
            if head.len() > 1 << 20 {
                return;
            }
        }
        let head = String::from_utf8_lossy(&head).trim_end().to_owned();
        // `/_matrix/early/…`: answer before reading the body, then read and discard it, as
        // nginx's `return` does.
        if head
            .split(' ')
            .nth(1)
            .is_some_and(|t| t.starts_with("/_matrix/early/"))
        {
            let resp =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
            if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
        let mut rec = Recorded {
            head,
            body_len: 0,
            conn,
        };
        let body_len = match read_body(&mut reader, &rec).await {
            Some(n) => n,
            None => return,
        };
        rec.body_len = body_len;
        let target = rec
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let is_head = rec.request_line().starts_with("HEAD ");
        log.0.lock().unwrap().push(rec);

        let stream = reader.get_mut();
        if target.starts_with("/_matrix/early/") {
            continue;
        }
        if let Some(rest) = target.strip_prefix("/_matrix/slow/") {
            let ms: u64 = rest
                .split(['/', '?'])
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(rest) = target.strip_prefix("/_matrix/big/") {
            let n: u64 = rest
                .split(['/', '?'])
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![0u8; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len() as u64) as usize;
                if stream.write_all(&chunk[..k]).await.is_err() {
                    return;
                }
                left -= k as u64;
            }
            continue;
        }
        let body = format!("{{\"received\":{body_len}}}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\nX-Backend: yes\r\n\r\n{}",
            body.len(),
            if is_head { "" } else { body.as_str() }
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads and counts the request body. None when the connection broke.
async fn read_body<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, rec: &Recorded) -> Option<u64> {
    let chunked = rec
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut buf = vec![0u8; 64 * 1024];
    if chunked {
        let mut total = 0u64;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let size = u64::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t).await.ok()? == 0 || t == "\r\n" {
                        return Some(total);
                    }
                }
            }
            let mut left = size;
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                reader.read_exact(&mut buf[..k]).await.ok()?;
                left -= k as u64;
            }
            total += size;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).await.ok()?;
        }
    }
    let len: u64 = rec
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut left = len;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..k]).await.ok()?;
        left -= k as u64;
    }
    Some(len)
}
