"""The topology, and the configuration files of every server in it, generated per run.

    hs1.test          127.0.1.1  served directly: https :443, federation :8448
    hs2.test          127.0.2.1  https :443 serves /.well-known/matrix/server -> matrix.hs2.test:443
    matrix.hs2.test   127.0.2.2  https :443 (same matrix-edge instance, no 8448 anywhere)
    hs3.test          127.0.3.1  https :443 (clients, ACME); SRV _matrix-fed._tcp.hs3.test ->
    fed.hs3.test      127.0.3.2  federation :8443, with a certificate for hs3.test only

Shared: dnsmasq on 127.0.0.53:53, Pebble on 127.0.0.1:14000 (management :15000), Synapse N on
127.0.0.1:810N (plain HTTP), matrix-edge N's admin listener on 127.0.0.1:910N.
"""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

DNS = ("127.0.0.53", 53)
PEBBLE_DIR_PORT = 14000
PEBBLE_MGMT_PORT = 15000

HOSTS = {
    "hs1.test": "127.0.1.1",
    "hs2.test": "127.0.2.1",
    "matrix.hs2.test": "127.0.2.2",
    "hs3.test": "127.0.3.1",
    "fed.hs3.test": "127.0.3.2",
}

SRV_RECORDS = [
    # (service name, target, port)
    ("_matrix-fed._tcp.hs3.test", "fed.hs3.test", 8443),
]


@dataclass
class Home:
    """One homeserver: its Synapse and the matrix-edge instance in front of it."""

    n: int
    server_name: str
    client_host: str  # the host in public_baseurl; clients connect there on 443
    https: list[str]
    federation: list[str]
    tls_names: list[str]
    well_known_server: str | None = None
    # Where a remote homeserver connects for federation, and what it verifies/sends:
    # (connect host, port, SNI and certificate name, Host header).
    fed_endpoint: tuple[str, int, str, str] = ("", 0, "", "")
    dir: Path = field(default=Path())

    @property
    def synapse_port(self) -> int:
        return 8100 + self.n

    @property
    def admin(self) -> tuple[str, int]:
        return ("127.0.0.1", 9100 + self.n)

    @property
    def signing_key(self) -> Path:
        return self.dir / "signing.key"


def homes() -> list[Home]:
    return [
        Home(
            1,
            "hs1.test",
            "hs1.test",
            https=["127.0.1.1:443"],
            federation=["127.0.1.1:8448"],
            tls_names=["hs1.test"],
            fed_endpoint=("hs1.test", 8448, "hs1.test", "hs1.test"),
        ),
        Home(
            2,
            "hs2.test",
            "matrix.hs2.test",
            https=["127.0.2.1:443", "127.0.2.2:443"],
            federation=[],
            tls_names=["hs2.test", "matrix.hs2.test"],
            well_known_server="matrix.hs2.test:443",
            fed_endpoint=("matrix.hs2.test", 443, "matrix.hs2.test", "matrix.hs2.test:443"),
        ),
        Home(
            3,
            "hs3.test",
            "hs3.test",
            https=["127.0.3.1:443"],
            federation=["127.0.3.2:8443"],
            tls_names=["hs3.test"],
            fed_endpoint=("fed.hs3.test", 8443, "hs3.test", "hs3.test"),
        ),
    ]


# --- name resolution -----------------------------------------------------------------------------


def hosts_file() -> str:
    # The machine's own host name stays resolvable without asking the scenario's DNS server.
    lines = [f"127.0.0.1\tlocalhost {socket.gethostname()}", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{name}" for name, ip in HOSTS.items()]
    return "\n".join(lines) + "\n"


def resolv_conf() -> str:
    return f"nameserver {DNS[0]}\noptions timeout:2 attempts:2\n"


def dnsmasq_argv() -> list[str]:
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        f"--port={DNS[1]}",
        f"--listen-address={DNS[0]}",
        "--bind-interfaces",
        "--pid-file=",
        "--user=root",
        "--log-queries",
        "--log-facility=-",
        # Names under .test are answered from this list only: NXDOMAIN for the rest, so the
        # homeservers' SRV lookups for hs1/hs2 fall through as the spec says, instead of
        # failing with REFUSED (no upstream).
        "--local=/test/",
    ]
    argv += [f"--host-record={name},{ip}" for name, ip in HOSTS.items()]
    argv += [f"--srv-host={svc},{target},{port},0,10" for svc, target, port in SRV_RECORDS]
    return argv


# --- Pebble --------------------------------------------------------------------------------------


def pebble_config(path: Path, cert: Path, key: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{PEBBLE_DIR_PORT}",
                    "managementListenAddress": f"127.0.0.1:{PEBBLE_MGMT_PORT}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            },
            indent=2,
        )
    )


# --- Synapse -------------------------------------------------------------------------------------

_FAST = {"per_second": 1000, "burst_count": 1000}


def synapse_config(home: Home, pebble_root: Path, shared_secret: str) -> Path:
    """homeserver.yaml (written as JSON, which YAML reads) and its log config."""
    d = home.dir
    (d / "media").mkdir(parents=True, exist_ok=True)
    log_config = d / "log.yaml"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {
                    "precise": {
                        "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s"
                        " - %(request)s - %(message)s"
                    }
                },
                "filters": {
                    "context": {
                        "()": "synapse.logging.context.LoggingContextFilter",
                        "request": "",
                    }
                },
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "filename": str(d.parent / "logs" / f"synapse-{home.server_name}.log"),
                        "formatter": "precise",
                        "filters": ["context"],
                    }
                },
                "loggers": {
                    "synapse.storage.SQL": {"level": "WARNING"},
                    "twisted": {"level": "WARNING"},
                },
                "root": {"level": "INFO", "handlers": ["file"]},
                "disable_existing_loggers": False,
            },
            indent=2,
        )
    )
    config = {
        "server_name": home.server_name,
        "public_baseurl": f"https://{home.client_host}/",
        "pid_file": str(d / "homeserver.pid"),
        "listeners": [
            {
                "port": home.synapse_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": True,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
        "log_config": str(log_config),
        "media_store_path": str(d / "media"),
        "signing_key_path": str(home.signing_key),
        "report_stats": False,
        "suppress_key_server_warning": True,
        "trusted_key_servers": [],
        "enable_registration": False,
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        # Verification stays on: Pebble's root is the only CA trusted for federation.
        "federation_verify_certificates": True,
        "federation_custom_ca_list": [str(pebble_root)],
        # Synapse 1.163 spells these ip_range_blacklist / ip_range_whitelist (the settings are
        # `ip_range_blocklist` inside; see synapse/config/server.py). Empty: loopback allowed.
        "ip_range_blacklist": [],
        "ip_range_whitelist": ["127.0.0.0/8"],
        "presence": {"enabled": False},
        "enable_metrics": False,
        "url_preview_enabled": False,
        "rc_message": _FAST,
        "rc_registration": _FAST,
        "rc_login": {"address": _FAST, "account": _FAST, "failed_attempts": _FAST},
        "rc_joins": {"local": _FAST, "remote": _FAST},
        "rc_joins_per_room": _FAST,
        "rc_invites": {"per_room": _FAST, "per_user": _FAST, "per_issuer": _FAST},
        "rc_media_create": _FAST,
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 1000,
            "sleep_delay": 10,
            "reject_limit": 1000,
            "concurrent": 100,
        },
        "rc_admin_redaction": _FAST,
        "rc_3pid_validation": _FAST,
    }
    path = d / "homeserver.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


# --- matrix-edge ---------------------------------------------------------------------------------


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def edge_config(
    home: Home,
    acme_ca: Path,
    federation: list[str] | None = None,
    backend_port: int | None = None,
    file_name: str = "matrix-edge.toml",
) -> Path:
    """matrix-edge's TOML for `home`. `federation` and `backend_port` override the topology
    (for the negative runs)."""
    fed = home.federation if federation is None else federation
    lines = [
        f"server_name = {json.dumps(home.server_name)}",
        "",
        "[backend]",
        f'url = "http://127.0.0.1:{backend_port or home.synapse_port}"',
        "",
        "[listen]",
        f"https = {_toml_list(home.https)}",
        f"federation = {_toml_list(fed)}",
        "http = []",
        f'admin = "{home.admin[0]}:{home.admin[1]}"',
        "",
        "[tls]",
        f"names = {_toml_list(home.tls_names)}",
        "",
        "[tls.acme]",
        f'directory = "https://127.0.0.1:{PEBBLE_DIR_PORT}/dir"',
        f'contact = ["mailto:admin@{home.server_name}"]',
        f"cache = {json.dumps(str(home.dir / 'acme'))}",
        'challenge = "tls-alpn-01"',
        f"ca_roots = {json.dumps(str(acme_ca))}",
        "",
        "[limits]",
        'shutdown_grace = "3s"',
        "",
    ]
    if home.well_known_server:
        lines += [
            "[well_known]",
            f"server = {json.dumps(home.well_known_server)}",
            f'client = "https://{home.client_host}"',
            "",
        ]
    path = home.dir / file_name
    path.write_text("\n".join(lines))
    return path
