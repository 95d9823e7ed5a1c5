"""The multi-node e2e's build proxy (tests/e2e/netns_proxy.py) against real local servers:
plain HTTP and CONNECT are relayed, anything else is refused, and with --netns it listens
inside a network namespace while its connections leave from the one it was started in."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.servers import REPO_ROOT, free_port, require_binary

PROXY = REPO_ROOT / "tests" / "e2e" / "netns_proxy.py"


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    """An HTTP server on 127.0.0.1 (the proxy's destination)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def start(command: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the socket listens
    if "listening" not in line:
        proc.kill()
        pytest.fail(f"the proxy did not start: {line}{proc.stdout.read()}")
    return proc


@contextlib.contextmanager
def proxy(origin_port: int, *extra: str) -> Iterator[int]:
    """The proxy on a free port of 127.0.0.1 (in --netns, if given), allowed to origin_port."""
    port = free_port()
    command = [sys.executable, str(PROXY), "--listen", f"127.0.0.1:{port}", "--allow-port", str(origin_port)]
    proc = start([*command, *extra])
    try:
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def raw_exchange(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_plain_http_is_forwarded_in_origin_form(origin: int) -> None:
    with proxy(origin) as port:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"})
        )
        body = opener.open(f"http://127.0.0.1:{origin}/debian/dists?x=1", timeout=10).read()
    # The origin server saw the path, not the absolute URL the client sent the proxy.
    assert body == b"hello from /debian/dists?x=1"


def test_connect_opens_a_tunnel(origin: int) -> None:
    with proxy(origin) as port:
        answer = raw_exchange(
            port,
            f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            + b"GET /through HTTP/1.0\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.0 200")
    assert answer.endswith(b"hello from /through")


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"CONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n", b"403"),  # not an allowed port
        (b"GET http://127.0.0.1:{other}/ HTTP/1.1\r\n\r\n", b"403"),
        (b"GET /relative HTTP/1.1\r\n\r\n", b"400"),  # not a proxy request
        (b"GET ftp://127.0.0.1:{origin}/ HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT nonsense HTTP/1.1\r\n\r\n", b"400"),
        (b"garbage\r\n\r\n", b"400"),
        (b"GET http://127.0.0.1:{origin}/ HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", b"431"),
    ],
)
def test_refuses_what_it_does_not_serve(origin: int, request_head: bytes, status: bytes) -> None:
    other = free_port()
    with proxy(origin) as port:
        answer = raw_exchange(
            port,
            request_head.replace(b"{other}", str(other).encode()).replace(b"{origin}", str(origin).encode()),
        )
    assert answer.startswith(b"HTTP/1.1 " + status)


def test_listens_in_another_namespace_and_connects_from_its_own(origin: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a network namespace needs root")
    ip = require_binary("ip")
    netns = f"iot-proxy-test-{os.getpid()}"
    subprocess.run([ip, "netns", "add", netns], check=True, timeout=30)
    try:
        subprocess.run([ip, "-n", netns, "link", "set", "lo", "up"], check=True, timeout=30)
        # 127.0.0.1 inside the namespace: only the proxy's namespace switch reaches `origin`,
        # which listens on this namespace's 127.0.0.1.
        with proxy(origin, "--netns", f"/run/netns/{netns}") as port:
            proxies = {"http": f"http://127.0.0.1:{port}"}
            url = f"http://127.0.0.1:{origin}/from-the-namespace"
            fetch = (
                f"import urllib.request as u; o = u.build_opener(u.ProxyHandler({proxies!r}));"
                f"print(o.open({url!r}, timeout=10).read().decode())"
            )
            inside = subprocess.run(
                [require_binary("nsenter"), f"--net=/run/netns/{netns}", "--", sys.executable, "-c", fetch],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert inside.stdout.strip() == "hello from /from-the-namespace", inside.stderr
            # And nothing listens on that port here: the socket is in the namespace.
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        subprocess.run([ip, "netns", "del", netns], check=False, timeout=30)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/run/netns/{netns}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/run/netns/{netns}")
