"""Federation end to end: three Synapse homeservers behind matrix-edge, certificates by ACME from
Pebble, names from a DNS server of the scenario's own, users in one room over federation.

Run it with `e2e/run` (which makes the namespaces), not directly. See e2e/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import configs  # noqa: E402
import net  # noqa: E402
import pki  # noqa: E402
from configs import Home  # noqa: E402
from harness import Clock, Procs, Runner, StepFailed, say, wait_until  # noqa: E402
from net import Client, User  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BREAKS = {
    "hs1-no-federation": "hs1's matrix-edge has no federation listener (no :8448)",
    "hs1-decode-path": "a hop between hs1's matrix-edge and Synapse percent-decodes the path",
}


def fail(msg: str) -> None:
    raise StepFailed(msg)


def edge_logs(*ns: int) -> list[str]:
    return [f"matrix-edge-hs{n}" for n in ns]


def synapse_logs(*ns: int) -> list[str]:
    return [f"synapse-hs{n}.test" for n in ns]


class Scenario:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.root: Path = args.out
        self.logs = self.root / "logs"
        self.clock = Clock(time.monotonic() + args.budget)
        self.run = Runner(self.logs, self.clock)
        self.procs = Procs(self.logs)
        self.homes = configs.homes()
        for h in self.homes:
            h.dir = self.root / f"hs{h.n}"
        self.edge_bin = Path(args.matrix_edge).resolve()
        self.python = sys.executable
        self.shared_secret = secrets.token_hex(16)
        self.pebble_root = self.root / "pebble-root.pem"
        self.api_ca: Path | None = None
        self.ctx: ssl.SSLContext | None = None
        self.users: dict[str, User] = {}
        self.room: str = ""
        self.edge_configs: dict[int, Path] = {}

    # --- helpers ---------------------------------------------------------------------------------

    def home(self, n: int) -> Home:
        return self.homes[n - 1]

    def wait(self, what: str, probe, within: float, every: float = 0.25):
        return wait_until(self.clock, what, probe, within, every)

    def client(self, home: Home) -> Client:
        assert self.ctx is not None
        return Client(self.ctx, home.client_host)

    def start_edge(self, home: Home, config: Path) -> None:
        self.procs.start(
            f"matrix-edge-hs{home.n}",
            [str(self.edge_bin), "run", "--config", str(config)],
            cwd=home.dir,
            env={"MATRIX_EDGE_LOG": "info,matrix_edge=debug"},
        )

    def edge_ready(self, home: Home) -> bool:
        name = f"matrix-edge-hs{home.n}"
        if not self.procs.alive(name):
            fail(f"{name} exited with status {self.procs.running[name].popen.returncode}")
        resp = net.http_plain(*home.admin, "GET", "/ready")
        return resp.status == 200

    def await_event(self, user: User, room: str, what: str, pred, within: float = 60.0) -> dict:
        """Syncs `user` (long-poll of 2 s, bounded) until an event in `room` matches `pred`."""

        def probe():
            ev = user.find(room, pred)
            if ev:
                return ev
            user.sync(2000)
            return user.find(room, pred)

        return self.wait(f"{user.user_id} seeing {what}", probe, within, every=0.1)

    # --- steps -----------------------------------------------------------------------------------

    def isolation(self) -> str:
        """Our own /etc/hosts and /etc/resolv.conf, bind-mounted in this mount namespace only."""
        outer = os.environ.get("E2E_OUTER_MNTNS", "")
        inner = os.readlink("/proc/self/ns/mnt")
        if not outer or outer == inner:
            fail("not inside a private mount namespace: run e2e/run, not federation.py")
        if os.environ.get("E2E_OUTER_NETNS", "") == os.readlink("/proc/self/ns/net"):
            fail("not inside a private network namespace")
        net_dir = self.root / "etc"
        net_dir.mkdir(parents=True, exist_ok=True)
        (net_dir / "hosts").write_text(configs.hosts_file())
        (net_dir / "resolv.conf").write_text(configs.resolv_conf())
        for name in ("hosts", "resolv.conf"):
            subprocess.run(
                ["mount", "--bind", str(net_dir / name), f"/etc/{name}"], check=True
            )
        import socket

        for host, ip in configs.HOSTS.items():
            got = socket.gethostbyname(host)
            if got != ip:
                fail(f"{host} resolves to {got}, want {ip}")
        return f"{len(configs.HOSTS)} names in the namespace's own /etc/hosts"

    def dns(self) -> str:
        self.procs.start("dnsmasq", configs.dnsmasq_argv())

        def probe():
            if not self.procs.alive("dnsmasq"):
                fail("dnsmasq exited")
            return net.dns_query(configs.DNS, "_matrix-fed._tcp.hs3.test", net.SRV, timeout=0.5) == (0, 1)

        self.wait("dnsmasq answering the SRV record", probe, 15)
        for name, ip in configs.HOSTS.items():
            rcode, n = net.dns_query(configs.DNS, name, net.A)
            if (rcode, n) != (0, 1):
                fail(f"A {name}: rcode {rcode}, {n} answers")
        rcode, _ = net.dns_query(configs.DNS, "_matrix-fed._tcp.hs1.test", net.SRV)
        if rcode != 3:
            fail(f"SRV _matrix-fed._tcp.hs1.test: rcode {rcode}, want NXDOMAIN (3)")
        return "A records, SRV _matrix-fed._tcp.hs3.test -> fed.hs3.test:8443, NXDOMAIN otherwise"

    def pebble(self) -> str:
        ca, cert, key = pki.pebble_api_certificate(self.root)
        self.api_ca = ca
        config = self.root / "pebble.json"
        configs.pebble_config(config, cert, key)
        self.procs.start(
            "pebble",
            ["pebble", "-config", str(config), "-dnsserver", f"{configs.DNS[0]}:{configs.DNS[1]}"],
            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
        )
        api_ctx = net.tls_context(ca)

        def roots():
            if not self.procs.alive("pebble"):
                fail("pebble exited")
            resp = net.https(api_ctx, "127.0.0.1", configs.PEBBLE_MGMT_PORT, "GET", "/roots/0", timeout=5)
            if resp.status == 200 and b"BEGIN CERTIFICATE" in resp.body:
                return resp.body
            return None

        pem = self.wait("Pebble's management API giving its root", roots, 20)
        self.pebble_root.write_bytes(pem)
        self.ctx = net.tls_context(self.pebble_root)
        resp = net.https(api_ctx, "127.0.0.1", configs.PEBBLE_DIR_PORT, "GET", "/dir", timeout=5)
        if resp.status != 200 or "newOrder" not in resp.json():
            fail(f"Pebble directory: {resp.brief()}")
        return "directory https://127.0.0.1:14000/dir, root from /roots/0"

    def synapse_start(self) -> str:
        gens = []
        for h in self.homes:
            h.dir.mkdir(parents=True, exist_ok=True)
            cfg = configs.synapse_config(h, self.pebble_root, self.shared_secret)
            log = self.logs / f"synapse-hs{h.n}-generate-keys.log"
            out = open(log, "wb")
            gens.append(
                (
                    h,
                    subprocess.Popen(
                        [self.python, "-m", "synapse.app.homeserver", "-c", str(cfg), "--generate-keys"],
                        cwd=h.dir,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    ),
                    out,
                )
            )
        for h, p, out in gens:
            try:
                rc = p.wait(max(5, min(90, self.clock.left())))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                rc = "timeout"
            out.close()
            if rc != 0 or not h.signing_key.exists():
                fail(f"--generate-keys for {h.server_name}: {rc}")
        if self.args.break_ == "hs1-decode-path":
            self.procs.start(
                "mangler",
                [self.python, str(REPO / "e2e" / "mangler.py"), "8199", str(self.home(1).synapse_port)],
            )
        for h in self.homes:
            self.procs.start(
                f"synapse-hs{h.n}",
                [self.python, "-m", "synapse.app.homeserver", "-c", str(h.dir / "homeserver.yaml")],
                cwd=h.dir,
            )
        return "signing keys generated, 3 homeservers starting"

    def acme(self) -> str:
        assert self.api_ca is not None
        for h in self.homes:
            federation, backend = None, None
            if h.n == 1 and self.args.break_ == "hs1-no-federation":
                federation = []
            if h.n == 1 and self.args.break_ == "hs1-decode-path":
                backend = 8199
            cfg = configs.edge_config(h, self.api_ca, federation=federation, backend_port=backend)
            self.edge_configs[h.n] = cfg
            check = subprocess.run(
                [str(self.edge_bin), "config", "check", "--config", str(cfg)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if check.returncode != 0:
                fail(f"config check {cfg}: {check.stderr.strip() or check.stdout.strip()}")
            self.start_edge(h, cfg)
        # A handshake that verifies against Pebble's root, for every name on its address.
        for h in self.homes:
            for name in h.tls_names:
                def probe(name=name, h=h):
                    if not self.procs.alive(f"matrix-edge-hs{h.n}"):
                        fail(f"matrix-edge-hs{h.n} exited")
                    return net.https(self.ctx, name, 443, "GET", "/_matrix/x", timeout=5).peer_der

                self.wait(f"a certificate from Pebble for {name}", probe, 90, every=0.5)
        return "TLS-ALPN-01 on :443 for " + ", ".join(n for h in self.homes for n in h.tls_names)

    def synapse_up(self) -> str:
        for h in self.homes:
            def probe(h=h):
                if not self.procs.alive(f"synapse-hs{h.n}"):
                    fail(f"synapse-hs{h.n} exited")
                return net.http_plain("127.0.0.1", h.synapse_port, "GET", "/health").status == 200

            self.wait(f"Synapse {h.server_name} /health", probe, 180, every=0.5)
        import synapse

        return f"Synapse {synapse.__version__.split(' ')[0]}"

    def edges_ready(self) -> str:
        for h in self.homes:
            self.wait(f"matrix-edge-hs{h.n} /ready", lambda h=h: self.edge_ready(h), 60)
        return "3 x /ready 200"

    def certificates(self) -> str:
        """Every listener, with each name a peer would send as SNI, verifies against Pebble's
        root only; the SRV target serves a certificate for the original name."""
        checked = []
        for h in self.homes:
            endpoints = [(n, 443, n) for n in h.tls_names]
            for addr in h.federation:
                ip, port = addr.rsplit(":", 1)
                host = next(k for k, v in configs.HOSTS.items() if v == ip)
                for n in h.tls_names:
                    endpoints.append((host, int(port), n))
            for host, port, sni in endpoints:
                try:
                    resp = net.https(self.ctx, host, port, "GET", "/_matrix/federation/v1/version",
                                     sni=sni, headers={"Host": sni}, timeout=10)
                except (OSError, ssl.SSLError) as e:
                    fail(f"{host}:{port} SNI {sni}: {e}")
                sans = pki.san_dns_names(resp.peer_der)
                if sans != h.tls_names:
                    fail(f"{host}:{port} SNI {sni}: SANs {sans}, want {h.tls_names}")
                if resp.status != 200:
                    fail(f"{host}:{port} federation version: {resp.brief()}")
                checked.append(f"{host}:{port}/{sni}")
        # The SRV target's own name is not in hs3's certificate, so a peer verifying the SRV
        # target (the mistake the spec rules out) would fail.
        try:
            net.https(self.ctx, "fed.hs3.test", 8443, "GET", "/", timeout=10)
        except ssl.SSLCertVerificationError:
            pass
        else:
            fail("fed.hs3.test:8443 verified as fed.hs3.test: the certificate should name hs3.test only")
        return f"{len(checked)} listener/SNI pairs; fed.hs3.test itself not in hs3's certificate"

    def well_known(self) -> str:
        got = {}
        for h in self.homes:
            resp = net.https(self.ctx, h.server_name, 443, "GET", "/.well-known/matrix/server")
            got[h.server_name] = resp
        r2 = got["hs2.test"]
        if r2.status != 200 or r2.json() != {"m.server": "matrix.hs2.test:443"}:
            fail(f"hs2.test well-known: {r2.brief()}")
        if not r2.headers.get("Content-Type", "").startswith("application/json"):
            fail(f"hs2.test well-known Content-Type {r2.headers.get('Content-Type')}")
        for name in ("hs1.test", "hs3.test"):
            if got[name].status != 404:
                fail(f"{name} well-known should be 404 (no delegation), got {got[name].brief()}")
        return "hs2.test -> matrix.hs2.test:443; hs1.test, hs3.test 404"

    def register(self) -> str:
        for n, local in ((1, "alice"), (2, "bob"), (3, "carol")):
            h = self.home(n)
            password = secrets.token_urlsafe(12)
            nonce = net.http_plain("127.0.0.1", h.synapse_port, "GET", "/_synapse/admin/v1/register").json()["nonce"]
            mac = hmac.new(
                self.shared_secret.encode(),
                b"\x00".join([nonce.encode(), local.encode(), password.encode(), b"notadmin"]),
                hashlib.sha1,
            ).hexdigest()
            resp = net.http_plain(
                "127.0.0.1",
                h.synapse_port,
                "POST",
                "/_synapse/admin/v1/register",
                json.dumps({"nonce": nonce, "username": local, "password": password, "admin": False, "mac": mac}).encode(),
                {"Content-Type": "application/json"},
            )
            if resp.status != 200:
                fail(f"register {local} on {h.server_name}: {resp.brief()}")
            self.users[local] = User(local, h.server_name, password, self.client(h))
        return "alice@hs1, bob@hs2, carol@hs3 (shared-secret HMAC on the backend port)"

    def login(self) -> str:
        for u in self.users.values():
            u.login()
            u.sync(0)
        return "password login and initial /sync through each matrix-edge over verified TLS"

    def create_room(self) -> str:
        alice = self.users["alice"]
        out = alice.call(
            "POST", "/_matrix/client/v3/createRoom",
            {"room_version": "3", "preset": "private_chat", "name": "e2e federation"},
        )
        self.room = out["room_id"]
        state = alice.call("GET", f"/_matrix/client/v3/rooms/{net.q(self.room)}/state/m.room.create")
        if str(state.get("room_version")) != "3":
            fail(f"room version {state.get('room_version')!r}")
        return f"{self.room} (room version 3)"

    def invite(self, invitee: str, room: str | None = None) -> str:
        room = room or self.room
        alice, u = self.users["alice"], self.users[invitee]
        out = alice.call("POST", f"/_matrix/client/v3/rooms/{net.q(room)}/invite", {"user_id": u.user_id})
        del out
        self.await_event(
            u, room, "the invite",
            lambda e: e["_kind"] == "invite" and e.get("type") == "m.room.member"
            and e.get("state_key") == u.user_id and e["content"].get("membership") == "invite",
            within=60,
        )
        return f"{u.user_id} got the invite"

    def join(self, joiner: str, room: str | None = None) -> str:
        room = room or self.room
        alice, u = self.users["alice"], self.users[joiner]
        try:
            out = u.call("POST", f"/_matrix/client/v3/rooms/{net.q(room)}/join", {}, timeout=120)
        except net.MatrixError as e:
            fail(str(e))
        if out.get("room_id") != room:
            fail(f"join answered {out}")
        ev = self.await_event(
            alice, room, f"{u.user_id} joined",
            lambda e: e["_kind"] == "timeline" and e.get("type") == "m.room.member"
            and e.get("state_key") == u.user_id and e["content"].get("membership") == "join",
        )
        return f"join event {ev['event_id']}"

    def send(self, sender: str, body: str, room: str | None = None) -> str:
        room = room or self.room
        u = self.users[sender]
        out = u.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{net.q(room)}/send/m.room.message/{secrets.token_hex(8)}",
            {"msgtype": "m.text", "body": body},
        )
        return out["event_id"]

    def messages(self, a: str, others: list[str]) -> str:
        """`a` sends, every one of `others` receives by /sync; then each of `others` sends and
        `a` receives."""
        ids = []
        marker = f"from {a} {secrets.token_hex(4)}"
        ids.append(self.send(a, marker))
        for o in others:
            self.await_event(self.users[o], self.room, f"{a}'s message",
                             lambda e: e.get("content", {}).get("body") == marker)
        for o in others:
            m = f"from {o} {secrets.token_hex(4)}"
            ids.append(self.send(o, m))
            self.await_event(self.users[a], self.room, f"{o}'s message",
                             lambda e, m=m: e.get("content", {}).get("body") == m)
        return f"{len(ids)} messages, event ids {', '.join(ids)}"

    def encoded_event_ids(self) -> str:
        """A federation request whose path holds an event ID with `/` or `+` (percent-encoded),
        signed with a homeserver's key over the path as sent: each Synapse answers it through its
        matrix-edge only if the path arrived byte for byte. Also counts the percent-encoded
        federation requests the homeservers themselves made during the scenario."""
        alice = self.users["alice"]
        event_id, body = "", ""
        for i in range(40):
            body = f"encoded {i} {secrets.token_hex(4)}"
            event_id = self.send("alice", body)
            if "/" in event_id or "+" in event_id:
                break
        else:
            fail("no event ID with / or + in 40 messages")
        # Wait until bob and carol have it, so their homeservers can serve it too.
        for who in ("bob", "carol"):
            self.await_event(self.users[who], self.room, "the encoded-ID message",
                             lambda e: e.get("event_id") == event_id)
        del alice
        hit = []
        for h, origin in ((self.home(1), self.home(2)), (self.home(2), self.home(1)), (self.home(3), self.home(1))):
            host, port, sni, host_header = h.fed_endpoint
            uri = f"/_matrix/federation/v1/event/{net.q(event_id)}"
            auth = net.x_matrix(origin.server_name, h.server_name, "GET", uri, origin.signing_key)
            resp = net.https(self.ctx, host, port, "GET", uri, sni=sni,
                             headers={"Host": host_header, "Authorization": auth})
            if resp.status != 200:
                fail(f"GET {uri} from {origin.server_name} via {host}:{port}: {resp.brief()}")
            pdus = resp.json().get("pdus", [])
            if not pdus or pdus[0].get("content", {}).get("body") != body:
                fail(f"{h.server_name} answered another event: {resp.brief()}")
            hit.append(f"{host}:{port}")
        natural = self.natural_encoded_requests()
        return (f"{event_id} fetched by signed GET via {', '.join(hit)}; "
                f"{natural} percent-encoded federation requests by the homeservers answered 2xx")

    def natural_encoded_requests(self) -> int:
        pattern = re.compile(r'Processed request: .* 2\d\d "\w+ /_matrix/federation/\S*%2[FfBb]')
        count = 0
        for h in self.homes:
            path = self.logs / f"synapse-{h.server_name}.log"
            try:
                count += len(pattern.findall(path.read_text(errors="replace")))
            except OSError:
                pass
        return count

    def media(self) -> str:
        alice, bob = self.users["alice"], self.users["bob"]
        data = os.urandom(300 * 1024)
        out = alice.client.call(
            "POST", "/_matrix/media/v3/upload?filename=e2e.bin", raw=data,
            content_type="application/octet-stream", token=alice.token,
        ).json()
        mxc = out["content_uri"]
        server, media_id = mxc.removeprefix("mxc://").split("/", 1)
        if server != "hs1.test":
            fail(f"uploaded as {mxc}")
        path = f"/_matrix/client/v1/media/download/{server}/{media_id}"

        def probe():
            resp = bob.client.call("GET", path, token=bob.token, expect=None, timeout=60)
            if resp.status != 200:
                raise net.MatrixError(resp.brief())
            return resp

        resp = self.wait("bob downloading hs1's media through hs2", probe, 60, every=1)
        if resp.body != data:
            fail(f"downloaded {len(resp.body)} bytes that differ from the {len(data)} uploaded")
        # hs2 got it from hs1 over federation (authenticated media), through hs1's matrix-edge.
        served = re.compile(
            r"\{hs2\.test\} Processed request: .* 200 \"GET /_matrix/federation/v1/media/download/"
            + re.escape(media_id)
        )
        log = (self.logs / "synapse-hs1.test.log").read_text(errors="replace")
        if not served.search(log):
            fail("hs1's Synapse logged no federation media download by hs2.test")
        return f"{mxc}: {len(data)} bytes identical via matrix.hs2.test, fetched by hs2 over federation"

    def check(self, home: Home) -> str:
        log = self.logs / f"check-{home.server_name}.log"
        argv = [str(self.edge_bin), "check", home.server_name,
                "--resolver", f"{configs.DNS[0]}:{configs.DNS[1]}", "--ca", str(self.pebble_root)]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            fail("matrix-edge check took more than 120s")
        log.write_text(f"$ {' '.join(argv)}\nexit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
        if p.returncode != 0:
            lines = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
            fail(f"exit {p.returncode}: " + " | ".join(lines[-8:]))
        return "exit 0"

    def negative_no_federation(self) -> str:
        """hs1's matrix-edge restarted without its federation listener: a new invite to bob
        still arrives (hs1 -> hs2, keys already known), but bob's join, which needs hs2 -> hs1,
        must fail — at the join step and not before."""
        h = self.home(1)
        self.procs.stop("matrix-edge-hs1")
        cfg = configs.edge_config(h, self.api_ca, federation=[], file_name="matrix-edge-nofed.toml")
        self.start_edge(h, cfg)
        self.wait("matrix-edge-hs1 (no federation listener) /ready", lambda: self.edge_ready(h), 30)
        alice = self.users["alice"]
        room = alice.call("POST", "/_matrix/client/v3/createRoom",
                          {"room_version": "3", "preset": "private_chat", "name": "negative"})["room_id"]
        self.invite("bob", room)  # a failure here fails this step: the break hit too early
        try:
            self.join("bob", room)
        except StepFailed as e:
            return f"invite passed, join failed as expected: {str(e)[:160]}"
        fail("bob joined although hs1 has no federation listener: the scenario cannot detect it")

    # --- the run ---------------------------------------------------------------------------------

    def main(self) -> int:
        r = self.run
        all_edges, all_syn = edge_logs(1, 2, 3), synapse_logs(1, 2, 3)
        r.step("isolation: namespace hosts and resolv.conf", self.isolation)
        r.step("dns: dnsmasq with A and SRV records", self.dns, ["dnsmasq"])
        r.step("pebble: ACME server up, root fetched", self.pebble, ["pebble"])
        r.step("synapse: keys generated, 3 homeservers started", self.synapse_start,
               ["synapse-hs1-generate-keys", "synapse-hs1", "synapse-hs2", "synapse-hs3"])
        r.step("acme: matrix-edge certificates from Pebble", self.acme, all_edges + ["pebble", "dnsmasq"])
        r.step("synapse: 3 homeservers healthy", self.synapse_up,
               ["synapse-hs1", "synapse-hs2", "synapse-hs3"] + all_syn)
        r.step("matrix-edge: /ready", self.edges_ready, all_edges)
        r.step("tls: every listener verifies against Pebble's root", self.certificates, all_edges)
        r.step("well-known: delegation of hs2.test", self.well_known, edge_logs(1, 2, 3))
        r.step("register: shared-secret users on each Synapse", self.register, all_syn)
        r.step("login: through matrix-edge", self.login, all_edges + all_syn)
        r.step("room: alice@hs1 creates a version 3 room", self.create_room, edge_logs(1) + synapse_logs(1))
        r.step("invite bob@hs2 (well-known delegation)", lambda: self.invite("bob"),
               edge_logs(1, 2) + synapse_logs(1, 2))
        r.step("join bob@hs2 over federation", lambda: self.join("bob"), edge_logs(1, 2) + synapse_logs(1, 2))
        r.step("messages hs1 <-> hs2", lambda: self.messages("alice", ["bob"]),
               edge_logs(1, 2) + synapse_logs(1, 2))
        r.step("invite carol@hs3 (SRV delegation)", lambda: self.invite("carol"),
               edge_logs(1, 3) + synapse_logs(1, 3) + ["dnsmasq"])
        r.step("join carol@hs3 over federation", lambda: self.join("carol"),
               edge_logs(1, 3) + synapse_logs(1, 3))
        r.step("messages hs3 <-> hs1 and hs2", lambda: self.messages("carol", ["alice", "bob"]),
               all_edges + all_syn)
        r.step("paths: percent-encoded event IDs reach each Synapse intact", self.encoded_event_ids,
               all_edges + all_syn)
        r.step("media: hs1 upload downloaded by bob over federation", self.media,
               edge_logs(1, 2) + synapse_logs(1, 2))
        have_check = subprocess.run([str(self.edge_bin), "check", "--help"],
                                    capture_output=True, timeout=30).returncode == 0
        for h in self.homes:
            name = f"check {h.server_name}"
            if have_check:
                r.step(name, lambda h=h: self.check(h), [f"check-{h.server_name}"])
            else:
                say(f"SKIP {name} (subcommand not available)")
                r.skipped += 1
        if self.args.negative and not self.args.break_:
            r.step("negative: hs1 without federation listener fails at the join", self.negative_no_federation,
                   edge_logs(1, 2) + synapse_logs(1, 2))
        return 0 if r.failed == 0 else 1


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=REPO / "target" / "e2e" / "run")
    p.add_argument("--matrix-edge", default=os.environ.get("MATRIX_EDGE_BIN", str(REPO / "target/debug/matrix-edge")))
    p.add_argument("--budget", type=float, default=float(os.environ.get("E2E_BUDGET", "540")))
    p.add_argument("--break", dest="break_", choices=sorted(BREAKS), default=None,
                   help="deliberately break the setup, to see at which step the scenario fails")
    p.add_argument("--no-negative", dest="negative", action="store_false",
                   help="leave out the in-run negative step")
    return p.parse_args()


def main() -> int:
    args = parse()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    scenario = Scenario(args)

    def on_term(signum, frame):
        raise StepFailed("terminated by SIGTERM (the outer timeout?)")

    signal.signal(signal.SIGTERM, on_term)
    start = time.monotonic()
    if args.break_:
        say(f"(deliberately broken: {BREAKS[args.break_]})")
    rc = 1
    try:
        rc = scenario.main()
    except StepFailed as e:  # a SIGTERM between steps
        say(f"FAIL scenario: {e}")
        scenario.run.failed += 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        scenario.procs.stop_all()
        say(f"scenario wall time {time.monotonic() - start:.1f}s; logs in {scenario.logs}")
        scenario.run.summary()
    return rc


if __name__ == "__main__":
    sys.exit(main())
