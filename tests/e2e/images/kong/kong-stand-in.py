"""The Kong stand-in of the end-to-end test: two listeners configured like Kong's, answering
every proxy request with what was seen of it (see the Dockerfile)."""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


class Counter:
    """Proxy requests answered, for the status listener's /metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def inc(self) -> None:
        with self._lock:
            self.value += 1


REQUESTS = Counter()


def listen_address(value: str) -> tuple[str, int, bool]:
    """Kong's `host:port [flags]` → (host, port, ssl)."""
    address, *flags = value.split()
    host, port = address.rsplit(":", 1)
    return host, int(port), "ssl" in flags


class Proxy(BaseHTTPRequestHandler):
    # http.server dispatches to do_<METHOD>; every method gets the same answer.
    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def answer(self) -> None:
        REQUESTS.inc()
        body = json.dumps(
            {
                "stand_in": "kong",
                "client": self.client_address[0],
                "client_port": self.client_address[1],
                "path": self.path,
                "forwarding_headers": {h: self.headers[h] for h in FORWARDING_HEADERS if h in self.headers},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        # One access-log line per request on stdout, as Kong's KONG_PROXY_ACCESS_LOG.
        print(f"{self.client_address[0]} {fmt % args}", flush=True)


class Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/metrics":
            body = (
                "# HELP kong_stand_in_requests_total Proxy requests the stand-in answered.\n"
                "# TYPE kong_stand_in_requests_total counter\n"
                f"kong_stand_in_requests_total {REQUESTS.value}\n"
            ).encode()
            kind = "text/plain; version=0.0.4"
        elif self.path == "/status":
            body, kind = json.dumps({"stand_in": "kong"}).encode(), "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


def main() -> int:
    config = os.environ.get("KONG_DECLARATIVE_CONFIG", "")
    if not Path(config).is_file():
        print(f"kong stand-in: declarative config {config!r} not found", file=sys.stderr)
        return 1
    host, port, use_tls = listen_address(os.environ.get("KONG_PROXY_LISTEN", "0.0.0.0:8000"))
    proxy = ThreadingHTTPServer((host, port), Proxy)
    if use_tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(os.environ["KONG_SSL_CERT"], os.environ["KONG_SSL_CERT_KEY"])
        proxy.socket = context.wrap_socket(proxy.socket, server_side=True)
    status_host, status_port, _ = listen_address(os.environ.get("KONG_STATUS_LISTEN", "0.0.0.0:8100"))
    status = ThreadingHTTPServer((status_host, status_port), Status)
    threading.Thread(target=status.serve_forever, daemon=True).start()
    print(
        f"kong stand-in: proxy on {host}:{port}{' (TLS)' if use_tls else ''}, status on {status_port}",
        flush=True,
    )
    proxy.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
