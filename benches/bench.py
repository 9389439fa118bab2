"""Side-by-side benchmark: matrix-edge, nginx and HAProxy as TLS proxies in front of one backend.

Every proxy gets the same ECDSA P-256 certificate, 2 workers/threads, h1+h2 on one TLS port,
/_matrix forwarded untouched with X-Forwarded-* set, a 50 MiB body limit and keep-alive to the
backend. The proxies run alternately, figure by figure (A B C for one figure, then A B C for the
next, the order rotating every round), so that drift on a shared machine hits every proxy alike;
the report gives medians, spreads and ratios to nginx. CPU time per request comes from /proc
(utime+stime of every process of the proxy), the steadiest figure here.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
BACKEND = 18080
PORTS = {"matrix-edge": 18443, "nginx": 18444, "haproxy": 18445}
SMALL = "/_matrix/federation/v1/version"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_port(port, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {seconds}s")


class Proc:
    """A server process we started; all its descendants count for CPU and memory."""

    def __init__(self, name, argv, env=None, log=None):
        self.name = name
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.p = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log, start_new_session=True)

    def pids(self):
        pids, frontier = [], [self.p.pid]
        while frontier:
            pid = frontier.pop()
            pids.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            frontier.extend(int(c) for c in children)
        return pids

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except OSError:
                pass
        return total / TICK

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()


def write_configs(work):
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem", "-days", "2", "-subj", "/CN=bench.test",
        "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"])
    Path(f"{work}/combined.pem").write_text(Path(f"{work}/cert.pem").read_text() + Path(f"{work}/key.pem").read_text())
    with open(f"{work}/big", "wb") as f:
        f.truncate(64 << 20)
    os.chmod(f"{work}/big", 0o644)
    for d in ("backend", "nginx"):
        os.makedirs(f"{work}/{d}/tmp", exist_ok=True)
        os.chmod(f"{work}/{d}/tmp", 0o777)
    # The backend: one nginx worker answering a version-sized JSON, a 64 MiB file, and uploads.
    Path(f"{work}/backend/nginx.conf").write_text(f"""
worker_processes 1; pid {work}/backend/nginx.pid; error_log {work}/backend/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {work}/backend/tmp; proxy_temp_path {work}/backend/tmp;
  fastcgi_temp_path {work}/backend/tmp; uwsgi_temp_path {work}/backend/tmp; scgi_temp_path {work}/backend/tmp;
  keepalive_requests 1000000; client_max_body_size 100m;
  server {{
    listen 127.0.0.1:{BACKEND} reuseport;
    location = {SMALL} {{ default_type application/json; return 200 '{{"server":{{"name":"Synapse","version":"1.140.0"}}}}'; }}
    location = /_matrix/media/big {{ alias {work}/big; }}
    location = /_matrix/media/upload {{ client_body_in_single_buffer off; return 200 '{{}}'; }}
  }}
}}
""")
    Path(f"{work}/nginx/nginx.conf").write_text(f"""
worker_processes 2; pid {work}/nginx/nginx.pid; error_log {work}/nginx/error.log;
events {{ worker_connections 8000; }}
http {{
  access_log off; client_body_temp_path {work}/nginx/tmp; proxy_temp_path {work}/nginx/tmp;
  fastcgi_temp_path {work}/nginx/tmp; uwsgi_temp_path {work}/nginx/tmp; scgi_temp_path {work}/nginx/tmp;
  keepalive_requests 1000000; client_max_body_size 50m;
  upstream backend {{ server 127.0.0.1:{BACKEND}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl http2;
    ssl_certificate {work}/cert.pem; ssl_certificate_key {work}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location /_matrix {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https; proxy_read_timeout 600s;
    }}
  }}
}}
""")
    Path(f"{work}/haproxy.cfg").write_text(f"""
global
  nbthread 2
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 600s
  option forwardfor
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']} ssl crt {work}/combined.pem alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https
  http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt 52428800 }}
  use_backend be if {{ path_beg /_matrix }}
backend be
  http-reuse always
  server s1 127.0.0.1:{BACKEND}
""")
    Path(f"{work}/matrix-edge.toml").write_text(f"""
server_name = "bench.test"
[backend]
url = "http://127.0.0.1:{BACKEND}"
[listen]
https = ["127.0.0.1:{PORTS['matrix-edge']}"]
federation = []
http = []
[tls]
names = ["bench.test", "127.0.0.1"]
cert = "{work}/cert.pem"
key = "{work}/key.pem"
[limits]
max_body = "50M"
""")


def start(name, work):
    if name == "backend":
        return Proc(name, ["nginx", "-c", f"{work}/backend/nginx.conf", "-g", "daemon off;"], log=f"{work}/backend.log")
    if name == "nginx":
        return Proc(name, ["nginx", "-c", f"{work}/nginx/nginx.conf", "-g", "daemon off;"], log=f"{work}/nginx.log")
    if name == "haproxy":
        return Proc(name, ["haproxy", "-db", "-f", f"{work}/haproxy.cfg"], log=f"{work}/haproxy.log")
    env = dict(os.environ, MATRIX_EDGE_LOG="warn")
    return Proc(name, [str(ROOT / "target/release/matrix-edge"), "run", "--config", f"{work}/matrix-edge.toml"],
                env=env, log=f"{work}/matrix-edge.log")


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = None
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if m:
        p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, reqs, p99, errors + (int(non2xx.group(1)) if non2xx else 0)


def measure(proc, fn):
    before = proc.cpu_seconds() if proc else 0
    result = fn()
    after = proc.cpu_seconds() if proc else 0
    return result, after - before


def keepalive(port, proc, seconds, scheme="https"):
    (rps, reqs, p99, errors), cpu = measure(proc, lambda: parse_wrk(sh(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", f"{scheme}://127.0.0.1:{port}{SMALL}"]).stdout))
    return {"keepalive_rps": rps, "keepalive_p99_ms": p99, "keepalive_cpu_us": 1e6 * cpu / max(reqs, 1), "errors": errors}


def new_tls(port, proc, seconds):
    (rps, reqs, _, errors), cpu = measure(proc, lambda: parse_wrk(sh(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-H", "Connection: close", f"https://127.0.0.1:{port}{SMALL}"]).stdout))
    return {"newconn_cps": rps, "newconn_cpu_us": 1e6 * cpu / max(reqs, 1), "errors": errors}


def h2(port, proc, seconds):
    def run():
        out = sh(["h2load", "-t1", "-c16", "-m32", "-D", str(seconds), f"https://127.0.0.1:{port}{SMALL}"]).stdout
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
        done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
        failed = int(re.search(r"(\d+) failed", out).group(1))
        return rps, done, failed
    (rps, done, failed), cpu = measure(proc, run)
    return {"h2_rps": rps, "h2_cpu_us": 1e6 * cpu / max(done, 1), "errors": failed}


def transfer(port, scheme="https"):
    base = f"{scheme}://127.0.0.1:{port}"
    down = float(sh(["curl", "--http1.1", "-sk", "-o", "/dev/null", "-w", "%{speed_download}", f"{base}/_matrix/media/big"]).stdout)
    up = float(sh(["curl", "--http1.1", "-sk", "-o", "/dev/null", "-w", "%{speed_upload}", "-H", "Content-Type: application/octet-stream",
                   "--data-binary", "@" + UPLOAD, f"{base}/_matrix/media/upload"]).stdout)
    return {"download_mib_s": down / 2**20, "upload_mib_s": up / 2**20}


def idle_memory(port, proc, count=2000):
    time.sleep(0.5)
    idle = proc.rss_kib()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    conns = []
    try:
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            conns.append(ctx.wrap_socket(raw))
        time.sleep(1.0)
        held = proc.rss_kib()
    finally:
        for c in conns:
            c.close()
    return {"rss_idle_kib": idle, "kib_per_conn": (held - idle) / count}


FIGURES = [
    ("keepalive_rps", "a. keep-alive small GET, req/s", True),
    ("keepalive_p99_ms", "a. keep-alive p99 latency, ms", False),
    ("keepalive_cpu_us", "a. CPU per request, µs", False),
    ("newconn_cps", "b. new TLS connection per request, conn/s", True),
    ("newconn_cpu_us", "b. CPU per connection, µs", False),
    ("h2_rps", "c. h2 16×32 streams, req/s", True),
    ("h2_cpu_us", "c. h2 CPU per request, µs", False),
    ("download_mib_s", "d. 64 MiB download, MiB/s", True),
    ("upload_mib_s", "d. 48 MiB upload, MiB/s", True),
    ("rss_idle_kib", "e. resident memory idle (fresh process), KiB", False),
    ("kib_per_conn", "e. KiB per idle TLS connection", False),
]


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    versions = {
        "matrix-edge": sh([str(ROOT / "target/release/matrix-edge"), "--version"]).stdout.strip(),
        "nginx": sh(["nginx", "-v"]).stderr.strip(),
        "haproxy": sh(["haproxy", "-v"]).stdout.splitlines()[0],
        "wrk": "wrk " + (sh(["dpkg-query", "-W", "-f", "${Version}", "wrk"]).stdout),
        "h2load": "h2load " + (sh(["dpkg-query", "-W", "-f", "${Version}", "nghttp2-client"]).stdout),
    }
    return f"{os.cpu_count()} × {cpu}, {mem} MiB RAM, Linux {platform.release()}", versions


def main():
    global UPLOAD
    # A SIGTERM (e.g. from `timeout`) must still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benches/results"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="matrix-edge-bench-")
    # nginx workers run as an unprivileged user: they must reach the files and temp dirs here.
    os.chmod(work, 0o755)
    UPLOAD = f"{work}/upload"
    with open(UPLOAD, "wb") as f:
        f.truncate(48 << 20)
    write_configs(work)
    procs = {}
    results = {name: [] for name in PORTS}
    direct = []
    try:
        procs["backend"] = start("backend", work)
        wait_port(BACKEND)
        for name in PORTS:
            procs[name] = start(name, work)
        for port in PORTS.values():
            wait_port(port)
        names = list(PORTS)
        for r in range(args.rounds):
            # Each figure is measured for the three proxies back to back, seconds apart, so that
            # the shared machine's drift falls on all three alike; the order rotates every round
            # so that no proxy always goes first.
            order = names[r % len(names):] + names[:r % len(names)]
            figures = {name: {"errors": 0} for name in names}
            steps = [
                lambda name: keepalive(PORTS[name], procs[name], args.seconds),
                lambda name: new_tls(PORTS[name], procs[name], args.seconds),
                lambda name: h2(PORTS[name], procs[name], args.seconds),
                lambda name: transfer(PORTS[name]),
            ]
            for step in steps:
                for name in order:
                    out = step(name)
                    figures[name]["errors"] += out.pop("errors", 0)
                    figures[name].update(out)
            for name in order:
                # Memory from a fresh process: allocators keep what earlier rounds used, and a
                # warm process would reuse it for the new connections and show no growth.
                procs[name].stop()
                procs[name] = start(name, work)
                wait_port(PORTS[name])
                figures[name].update(idle_memory(PORTS[name], procs[name]))
            for name in names:
                results[name].append(figures[name])
                print(f"round {r + 1}/{args.rounds} {name}: " + ", ".join(f"{k}={v:.1f}" for k, v in figures[name].items() if v is not None), flush=True)
            ref = keepalive(BACKEND, procs["backend"], args.seconds, scheme="http")
            ref.update(transfer(BACKEND, scheme="http"))
            direct.append(ref)
    finally:
        for p in procs.values():
            p.stop()
    report(results, direct, args)
    shutil.rmtree(work, ignore_errors=True)


def report(results, direct, args):
    desc, versions = machine()
    med = {name: {} for name in results}
    spread = {name: {} for name in results}
    for name, rows in results.items():
        for key, _, _ in FIGURES:
            values = [row[key] for row in rows if row.get(key) is not None]
            if values:
                med[name][key] = statistics.median(values)
                spread[name][key] = (max(values) - min(values)) / med[name][key] * 100 if med[name][key] else 0
    lines = [
        f"# matrix-edge benchmark, {datetime.date.today().isoformat()}",
        "",
        f"Machine: {desc}. Proxies, backend and load generators share it.",
        "",
        "Versions: " + "; ".join(versions.values()) + ".",
        "",
        f"{args.rounds} rounds; within a round each figure is measured for the three proxies back to back, "
        f"in an order that rotates every round; {args.seconds} s per load figure. "
        "Medians; ± is the spread (max − min) as a percentage of the median; ratios are to nginx "
        "(above 1 is better for throughput, below 1 is better for latency, CPU and memory).",
        "",
        "| figure | matrix-edge | nginx | HAProxy | matrix-edge / nginx | HAProxy / nginx |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, _higher in FIGURES:
        cells = []
        for name in ("matrix-edge", "nginx", "haproxy"):
            v = med[name].get(key)
            cells.append(f"{v:,.1f} ±{spread[name][key]:.0f}%" if v is not None else "–")
        n = med["nginx"].get(key)
        ratios = [f"{med[x][key] / n:.2f}×" if n and med[x].get(key) is not None else "–" for x in ("matrix-edge", "haproxy")]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    lines += [
        "",
        "Backend reached directly (no proxy, plain HTTP), the reference: "
        f"{statistics.median(d['keepalive_rps'] for d in direct):,.0f} keep-alive req/s, "
        f"{statistics.median(d['download_mib_s'] for d in direct):,.0f} MiB/s download, "
        f"{statistics.median(d['upload_mib_s'] for d in direct):,.0f} MiB/s upload.",
        "",
        "Errors during the load figures (should be 0): "
        + ", ".join(f"{name} {sum(r['errors'] for r in rows)}" for name, rows in results.items()) + ".",
        "",
        "Raw rounds:",
        "",
        "```json",
        json.dumps({"results": results, "direct": direct}, indent=1),
        "```",
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{datetime.date.today().isoformat()}.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines[:len(FIGURES) + 12]))
    print(f"\nreport: {path}")


if __name__ == "__main__":
    main()
