"""Clients the scenario uses: a tiny DNS query, HTTPS with certificate verification (and an SNI
that may differ from the host connected to), a Matrix client-server API client, and X-Matrix
request signing with a homeserver's own signing key."""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import ssl
import struct
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

# --- DNS -------------------------------------------------------------------------------------

A, SRV = 1, 33


def dns_query(server: tuple[str, int], name: str, qtype: int, timeout: float = 2.0) -> tuple[int, int]:
    """One UDP query; returns (rcode, answer count)."""
    qid = secrets.randbelow(0xFFFF)
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(header + qname + struct.pack(">HH", qtype, 1), server)
        data = s.recv(4096)
    if struct.unpack(">H", data[:2])[0] != qid:
        raise OSError("DNS answer with another id")
    return data[3] & 0x0F, struct.unpack(">H", data[6:8])[0]


# --- HTTPS -----------------------------------------------------------------------------------


def tls_context(cafile: Path) -> ssl.SSLContext:
    """Trusts only `cafile`, verifies host names."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Conn(http.client.HTTPSConnection):
    """HTTPS to (host, port) with `sni` as the TLS server name (and name verified)."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, sni: str, timeout: float):
        super().__init__(host, port, context=ctx, timeout=timeout)
        self._sni = sni
        self.peer_der: bytes | None = None

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._sni)
        self.peer_der = self.sock.getpeercert(binary_form=True)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    peer_der: bytes | None

    def json(self) -> dict:
        return json.loads(self.body)

    def brief(self) -> str:
        text = self.body[:300].decode("utf-8", "replace")
        return f"{self.status} {text}"


def https(
    ctx: ssl.SSLContext,
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    sni: str | None = None,
    timeout: float = 30.0,
) -> Response:
    conn = _Conn(host, port, ctx, sni or host, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data, conn.peer_der)
    finally:
        conn.close()


def http_plain(host: str, port: int, method: str, path: str, body: bytes | None = None,
               headers: dict[str, str] | None = None, timeout: float = 10.0) -> Response:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read(), None)
    finally:
        conn.close()


def q(segment: str) -> str:
    """Percent-encodes one path segment (`/`, `+`, `!`, `$`, `:`, `@` included)."""
    return urllib.parse.quote(segment, safe="")


# --- Matrix client-server API ------------------------------------------------------------------


class MatrixError(Exception):
    pass


@dataclass
class Client:
    """A client of one homeserver's public URL (through matrix-edge)."""

    ctx: ssl.SSLContext
    host: str
    port: int = 443

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = None,
        raw: bytes | None = None,
        content_type: str | None = None,
        expect: int = 200,
        timeout: float = 30.0,
    ) -> Response:
        headers = {}
        data = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if raw is not None:
            data = raw
            headers["Content-Type"] = content_type or "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        resp = https(self.ctx, self.host, self.port, method, path, data, headers, timeout=timeout)
        if expect is not None and resp.status != expect:
            raise MatrixError(f"{method} https://{self.host}{path.split('?')[0]} -> {resp.brief()}")
        return resp


@dataclass
class User:
    localpart: str
    server_name: str
    password: str
    client: Client
    token: str = ""
    since: str | None = None
    seen: list[dict] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return f"@{self.localpart}:{self.server_name}"

    def call(self, method: str, path: str, body: object = None, **kw) -> dict:
        resp = self.client.call(method, path, body, token=self.token, **kw)
        return resp.json() if resp.body else {}

    def login(self) -> None:
        resp = self.client.call(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": self.localpart},
                "password": self.password,
            },
        ).json()
        if resp.get("user_id") != self.user_id:
            raise MatrixError(f"login answered user_id {resp.get('user_id')!r}")
        self.token = resp["access_token"]

    def sync(self, timeout_ms: int = 2000) -> dict:
        """One /sync, continuing from the last one. The timeline events and invites it returns
        are added to `seen` (as dicts with `_room` and `_kind`)."""
        path = f"/_matrix/client/v3/sync?timeout={timeout_ms}"
        if self.since:
            path += "&since=" + urllib.parse.quote(self.since, safe="")
        out = self.call("GET", path, timeout=timeout_ms / 1000 + 30)
        self.since = out["next_batch"]
        rooms = out.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            for ev in room.get("timeline", {}).get("events", []):
                self.seen.append({**ev, "_room": room_id, "_kind": "timeline"})
        for room_id, room in rooms.get("invite", {}).items():
            for ev in room.get("invite_state", {}).get("events", []):
                self.seen.append({**ev, "_room": room_id, "_kind": "invite"})
        return out

    def find(self, room_id: str, pred) -> dict | None:
        for ev in self.seen:
            if ev["_room"] == room_id and pred(ev):
                return ev
        return None


# --- X-Matrix ----------------------------------------------------------------------------------


def x_matrix(origin: str, destination: str, method: str, uri: str, signing_key: Path) -> str:
    """An `Authorization: X-Matrix ...` value signed with a homeserver's key file, exactly as a
    homeserver signs its federation requests (the request-target as sent, byte for byte)."""
    from signedjson.key import read_signing_keys
    from signedjson.sign import sign_json

    with open(signing_key) as f:
        key = read_signing_keys(f)[0]
    key_id = f"{key.alg}:{key.version}"
    signed = sign_json(
        {"method": method, "uri": uri, "origin": origin, "destination": destination},
        origin,
        key,
    )
    sig = signed["signatures"][origin][key_id]
    return f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="{sig}"'
