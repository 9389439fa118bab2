"""A deliberately broken hop for the negative demonstration (`e2e/run --break hs1-decode-path`):
a plain-HTTP proxy between hs1's matrix-edge and hs1's Synapse that percent-decodes the path, as
nginx does with a URI part in `proxy_pass` or Apache without `nocanon`. Everything else passes
unchanged. Usage: python mangler.py LISTEN_PORT BACKEND_PORT"""

from __future__ import annotations

import http.client
import http.server
import sys
import urllib.parse

LISTEN, BACKEND = int(sys.argv[1]), int(sys.argv[2])
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        path, _, query = self.path.partition("?")
        target = urllib.parse.unquote(path) + ("?" + query if query else "")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection("127.0.0.1", BACKEND, timeout=120)
        try:
            conn.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in HOP:
                    conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            self.send_error(502, f"backend: {e}")
            return
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_HEAD = _forward

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("mangler: " + (fmt % args) + "\n")


http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN), Handler).serve_forever()
