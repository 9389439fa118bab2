use super::*;

fn server(extra: &str) -> SharedServer {
    let text = format!(
        "server_name = \"example.test\"\n[backend]\nurl = \"http://127.0.0.1:1\"\n\
         [listen]\nhttps = [\"127.0.0.1:0\"]\nfederation = []\n[tls]\nself_signed = true\n{extra}"
    );
    let config = crate::config::Config::parse(&text).unwrap().config;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    Arc::new(arc_swap::ArcSwap::from_pointee(Server::new(
        &config, None, metrics, None,
    )))
}

/// Plans `request` as a client at `peer` on the https listener; returns the plan and what would
/// go to the backend.
fn plan_at(shared: &SharedServer, peer: &str, request: &[u8]) -> (Parsed, String) {
    let (_tx, phase) = watch::channel(Phase::Running);
    let ctx = Ctx {
        peer: peer.parse().unwrap(),
        role: Role::Https,
        shared,
        forwarded_for: b"192.0.2.7",
        idle_timeout: Duration::from_secs(1),
        phase,
    };
    let mut out = Vec::new();
    let parsed = plan(request, &ctx, &shared.load(), &mut out);
    (parsed, String::from_utf8(out).unwrap())
}

fn plan_of(request: &[u8]) -> (Parsed, String) {
    plan_at(&server(""), "192.0.2.7:4000", request)
}

fn taken(request: &[u8]) -> (Plan, String) {
    match plan_of(request) {
        (Parsed::Ready(plan), out) => (plan, out),
        (Parsed::Partial, _) => panic!("partial: {}", String::from_utf8_lossy(request)),
        (Parsed::Other, _) => panic!("not taken: {}", String::from_utf8_lossy(request)),
    }
}

fn not_taken(request: &[u8]) {
    assert!(
        matches!(plan_of(request).0, Parsed::Other),
        "taken: {}",
        String::from_utf8_lossy(request)
    );
}

#[test]
fn plain_get_goes_out_byte_for_byte_with_forwarding_headers() {
    let request = b"GET /_matrix/federation/v1/event/%24abc%2Fdef%3A+x?ver=1&a=%2F HTTP/1.1\r\n\
        Host: example.test\r\nUser-Agent: Synapse/1.0\r\nConnection: keep-alive\r\n\
        Authorization: X-Matrix origin=\"remote.test\",key=\"ed25519:a\",sig=\"s1\"\r\n\
        authorization: X-Matrix origin=\"other.test\",key=\"ed25519:b\",sig=\"s2\"\r\n\r\n";
    let (plan, out) = taken(request);
    assert_eq!(
        out,
        "GET /_matrix/federation/v1/event/%24abc%2Fdef%3A+x?ver=1&a=%2F HTTP/1.1\r\n\
         Host: example.test\r\nUser-Agent: Synapse/1.0\r\n\
         Authorization: X-Matrix origin=\"remote.test\",key=\"ed25519:a\",sig=\"s1\"\r\n\
         authorization: X-Matrix origin=\"other.test\",key=\"ed25519:b\",sig=\"s2\"\r\n\
         x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n\r\n"
    );
    assert_eq!(plan.head_len, request.len());
    assert_eq!(
        &request[plan.path.clone()],
        b"/_matrix/federation/v1/event/%24abc%2Fdef%3A+x"
    );
    assert_eq!(plan.origin.as_deref(), Some("remote.test"));
    assert!(!plan.client_close);
    assert!(matches!(plan.route, Route::Forward(_)));
}

#[test]
fn only_a_complete_head_is_planned_and_its_length_excludes_what_follows() {
    let head = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\r\n";
    assert!(matches!(
        plan_of(&head[..head.len() - 1]).0,
        Parsed::Partial
    ));
    let mut pipelined = head.to_vec();
    pipelined.extend_from_slice(b"POST /_matrix/client/v3/x HTTP/1.1\r\nHost: a\r\n");
    let (plan, _) = taken(&pipelined);
    assert_eq!(plan.head_len, head.len());
}

#[test]
fn connection_close_and_empty_bodies_are_taken() {
    let (plan, out) = taken(
        b"DELETE /_matrix/client/v3/x HTTP/1.1\r\nHost: example.test\r\nConnection: Close\r\n\
          Content-Length: 0\r\n\r\n",
    );
    assert!(plan.client_close);
    assert!(!out.to_ascii_lowercase().contains("connection"));
    assert!(out.contains("Content-Length: 0\r\n"));
}

#[test]
fn spoofed_forwarding_headers_are_dropped_from_a_client() {
    let (_, out) = taken(
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\
          X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: http\r\n\
          X-Forwarded-Host: evil.test\r\nForwarded: for=6.6.6.6\r\n\r\n",
    );
    assert!(!out.contains("6.6.6.6") && !out.contains("evil"), "{out}");
    assert_eq!(out.matches("x-forwarded-for: 192.0.2.7").count(), 1);
    assert!(out.contains("x-forwarded-proto: https"));
}

#[test]
fn a_trusted_proxys_forwarding_headers_go_to_hyper() {
    let shared = server("[forward]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
    let request = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\
                    X-Forwarded-For: 198.51.100.1\r\n\r\n";
    assert!(matches!(
        plan_at(&shared, "10.1.2.3:5000", request).0,
        Parsed::Other
    ));
    // Without forwarding headers, a trusted proxy's request is plain.
    let request = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\r\n";
    assert!(matches!(
        plan_at(&shared, "10.1.2.3:5000", request).0,
        Parsed::Ready(_)
    ));
}

#[test]
fn anything_but_plain_forwarding_goes_to_hyper() {
    let host = "Host: example.test\r\n";
    for request in [
        // Bodies and framing.
        format!("POST /_matrix/client/v3/x HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\n{{}}"),
        format!("POST /_matrix/client/v3/x HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n"),
        format!(
            "GET /_matrix/client/v3/x HTTP/1.1\r\n{host}Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        format!("GET /_matrix/client/v3/x HTTP/1.1\r\n{host}Content-Length: 00\r\n\r\n"),
        format!(
            "GET /_matrix/client/v3/x HTTP/1.1\r\n{host}Content-Length: 0\r\nContent-Length: 5\r\n\r\n"
        ),
        format!("PUT /_matrix/client/v3/x HTTP/1.1\r\n{host}Expect: 100-continue\r\n\r\n"),
        // Upgrades and hop-by-hop headers only `forward` handles.
        format!(
            "GET /_matrix/client/v3/x HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        ),
        format!(
            "GET /_matrix/client/v3/x HTTP/1.1\r\n{host}Connection: x-secret\r\nX-Secret: 1\r\n\r\n"
        ),
        format!("GET /_matrix/client/v3/x HTTP/1.1\r\n{host}TE: trailers\r\n\r\n"),
        format!("GET /_matrix/client/v3/x HTTP/1.1\r\n{host}Keep-Alive: timeout=5\r\n\r\n"),
        format!("GET /_matrix/client/v3/x HTTP/1.1\r\n{host}Proxy-Authorization: x\r\n\r\n"),
        // Versions and targets.
        format!("GET /_matrix/client/v3/x HTTP/1.0\r\n{host}\r\n"),
        format!("GET http://example.test/_matrix/client/v3/x HTTP/1.1\r\n{host}\r\n"),
        format!("OPTIONS * HTTP/1.1\r\n{host}\r\n"),
        format!("GET /_matrix/client/v3/x#frag HTTP/1.1\r\n{host}\r\n"),
        format!("GET /_matrix/client/v3/{{x}} HTTP/1.1\r\n{host}\r\n"),
        format!("GET /_matrix/client/v3/\u{e9} HTTP/1.1\r\n{host}\r\n"),
        format!("CONNECT example.test:443 HTTP/1.1\r\n{host}\r\n"),
        // Host.
        "GET /_matrix/client/v3/x HTTP/1.1\r\n\r\n".to_string(),
        format!("GET /_matrix/client/v3/x HTTP/1.1\r\n{host}{host}\r\n"),
        // Malformed heads: hyper answers them.
        format!("GET /_matrix/client/v3/x HTTP/1.1\r\n{host}X-Folded: a\r\n b\r\n\r\n"),
        format!("GET /_matrix/client/v3/x HTTP/1.1\r\n{host}Bad Name: a\r\n\r\n"),
        format!("GET  /_matrix/client/v3/x HTTP/1.1\r\n{host}\r\n"),
        // Routes the proxy answers itself.
        format!("GET /.well-known/matrix/server HTTP/1.1\r\n{host}\r\n"),
        format!("GET /_matrix/client/v3/../x HTTP/1.1\r\n{host}\r\n"),
        format!("GET /_synapse/admin/v1/users HTTP/1.1\r\n{host}\r\n"),
        format!("GET /elsewhere HTTP/1.1\r\n{host}\r\n"),
    ] {
        not_taken(request.as_bytes());
    }
}

#[test]
fn repeated_or_oversized_parts_go_to_hyper() {
    not_taken(
        b"GET /_matrix/client/v3/x HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\
          Content-Length: 0\r\n\r\n",
    );
    let long = format!(
        "GET /_matrix/client/v3/{} HTTP/1.1\r\nHost: example.test\r\n\r\n",
        "a".repeat(MAX_TARGET)
    );
    not_taken(long.as_bytes());
}

#[test]
fn too_many_headers_go_to_hyper() {
    let mut request = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        request.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    not_taken(&request);
}

fn head_of(response: &[u8], head_request: bool, close: bool) -> (Head, String) {
    let mut out = Vec::new();
    match response_head(response, head_request, close, &mut out) {
        Ok(ResponseHead::Final(head)) => (head, String::from_utf8(out).unwrap()),
        Ok(ResponseHead::Interim(n)) => panic!("interim of {n}"),
        Ok(ResponseHead::Partial) => panic!("partial"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn response_head_loses_only_hop_by_hop_headers() {
    let response = b"HTTP/1.1 200 OK\r\nDate: Sun, 22 Nov 2026 10:00:00 GMT\r\n\
        Content-Type: application/json\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
        X-Hop: 1\r\nContent-Length: 2\r\nX-Custom: Kept As Is\r\n\r\n{}";
    let (head, out) = head_of(response, false, false);
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nDate: Sun, 22 Nov 2026 10:00:00 GMT\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nX-Custom: Kept As Is\r\n\r\n"
    );
    assert_eq!(head.len, response.len() - 2);
    assert_eq!(head.status, 200);
    assert_eq!(head.framing, Framing::Length(2));
    assert!(head.reusable && head.client_keep_alive);
}

#[test]
fn response_head_framing() {
    let (head, out) = head_of(
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: Chunked\r\n\r\n",
        false,
        false,
    );
    assert!(matches!(head.framing, Framing::Chunked(_)));
    assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"));
    assert!(
        out.contains("date: "),
        "a Date is added when missing: {out}"
    );

    // No length and no chunks: the body runs to the backend's close, and so does the client's
    // connection.
    let (head, out) = head_of(b"HTTP/1.0 200 OK\r\n\r\n", false, false);
    assert_eq!(head.framing, Framing::UntilClose);
    assert!(!head.reusable && !head.client_keep_alive);
    assert!(out.contains("connection: close\r\n"));

    // Bodies that are not there whatever the headers say.
    for (response, head_request) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..], true),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", false),
    ] {
        let (head, out) = head_of(response, head_request, false);
        assert_eq!(head.framing, Framing::Done);
        assert!(head.reusable);
        assert_eq!(
            out.contains("Content-Length: 10"),
            response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.1 304")
        );
    }

    // Repeated equal lengths are one length.
    let (head, out) = head_of(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        false,
        false,
    );
    assert_eq!(head.framing, Framing::Length(3));
    assert_eq!(out.matches("Content-Length").count(), 1);
}

#[test]
fn connection_options_never_remove_framing() {
    let (head, out) = head_of(
        b"HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding, x-hop\r\n\
          X-Hop: 1\r\nContent-Length: 5\r\nTrailer: X-Sum\r\n\r\nhello",
        false,
        false,
    );
    assert_eq!(head.framing, Framing::Length(5));
    assert!(out.contains("Content-Length: 5\r\n"), "{out}");
    assert!(out.contains("Trailer: X-Sum\r\n"), "{out}");
    assert!(!out.contains("X-Hop"), "{out}");
}

#[test]
fn response_head_connection_state() {
    let (head, _) = head_of(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        false,
        false,
    );
    assert!(!head.reusable && head.client_keep_alive);
    let (head, _) = head_of(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
        false,
        false,
    );
    assert!(head.reusable);
    let (head, out) = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, true);
    assert!(head.reusable && !head.client_keep_alive);
    assert!(out.ends_with("connection: close\r\n\r\n"));
}

#[test]
fn interim_responses_are_skipped_and_bad_heads_refused() {
    let mut out = Vec::new();
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    assert!(matches!(
        response_head(interim, false, false, &mut out),
        Ok(ResponseHead::Interim(n)) if n == interim.len()
    ));
    assert!(matches!(
        response_head(b"HTTP/1.1 200 OK\r\nContent-Le", false, false, &mut out),
        Ok(ResponseHead::Partial)
    ));
    for bad in [
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ] {
        assert!(
            response_head(bad, false, false, &mut out).is_err(),
            "accepted {}",
            String::from_utf8_lossy(bad)
        );
    }
}

const CHUNKED: &[u8] =
    b"5;name=val\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";

#[test]
fn chunked_body_end_is_found_wherever_reads_split_it() {
    for split in 0..=CHUNKED.len() {
        let mut scanner = ChunkScanner::default();
        let (a, done) = scanner.scan(&CHUNKED[..split]).unwrap();
        assert_eq!(a, split);
        if split == CHUNKED.len() {
            assert!(done);
            continue;
        }
        assert!(!done, "ended early at {split}");
        let mut rest = CHUNKED[split..].to_vec();
        rest.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let (b, done) = scanner.scan(&rest).unwrap();
        assert!(done);
        assert_eq!(split + b, CHUNKED.len(), "split at {split}");
    }
    let mut scanner = ChunkScanner::default();
    assert_eq!(scanner.scan(b"0\r\n\r\nextra"), Ok((5, true)));
}

#[test]
fn malformed_chunks_are_refused() {
    for bad in [
        &b"\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\r\r",
        b"1000000000000000\r\n",
        b"g\r\n",
        b"0\r\nX: y\n",
        b"0\r\n\r\r",
        b"5 6\r\nhello\r\n",
    ] {
        let mut scanner = ChunkScanner::default();
        assert_eq!(
            scanner.scan(bad),
            Err(ChunkError),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn length_framing_stops_at_the_length() {
    let mut framing = Framing::Length(5);
    assert_eq!(framing.take(b"abc").unwrap(), 3);
    assert!(!framing.is_done());
    assert_eq!(framing.take(b"deXX").unwrap(), 2);
    assert!(framing.is_done());
}

#[tokio::test]
async fn prefixed_stream_reads_its_prefix_first() {
    let (mut a, b) = tokio::io::duplex(64);
    a.write_all(b" world").await.unwrap();
    drop(a);
    let mut stream = Prefixed::new(Bytes::from_static(b"hello"), b);
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert_eq!(text, "hello world");
}

#[tokio::test(start_paused = true)]
async fn watchdog_fires_at_the_latest_deadline_set() {
    let start = Instant::now();
    let mut timer = Watchdog::new(start + Duration::from_secs(10));
    timer.set(start + Duration::from_secs(30));
    timer.expired().await;
    assert_eq!(Instant::now() - start, Duration::from_secs(30));
    timer.set(Instant::now() + Duration::from_secs(5));
    timer.expired().await;
    assert_eq!(Instant::now() - start, Duration::from_secs(35));
}
