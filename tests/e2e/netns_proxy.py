"""An HTTP proxy that listens in one network namespace and connects out from another.

    python tests/e2e/netns_proxy.py --listen 192.168.213.1:3128 [--netns /run/netns/iot-e2e-lan]

The multi-node end-to-end test runs its Docker engines in network namespaces with no route
off the machine, yet its image builds need Debian's mirror (apt) and PyPI (pip). This proxy
takes their connections on the test's private LAN (the listening socket is made inside
`--netns`) and opens the outgoing ones from the namespace it was started in, so the host's
own networking and firewall are never touched. It serves CONNECT (HTTPS) and plain HTTP
requests in absolute form, to ports 80 and 443 only (`--allow-port` for tests): package
downloads, nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import socket
import sys
import threading
import urllib.parse
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
DEFAULT_PORTS = (80, 443)
MAX_HEAD_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 30.0


def setns(fd: int) -> None:
    """Moves the calling thread into the network namespace open at fd."""
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def network_namespace(path: str | None) -> Iterator[None]:
    """Inside the namespace at path (a /run/netns file) for the block; None: stay here."""
    if path is None:
        yield
        return
    with open("/proc/thread-self/ns/net", "rb") as home, open(path, "rb") as there:
        setns(there.fileno())
        try:
            yield
        finally:
            setns(home.fileno())


class ProxyError(Exception):
    """A request this proxy does not serve; the message is the HTTP status line's reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """The request head (up to the blank line) and whatever the client sent after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ProxyError(400, "Bad Request")
        data += chunk
        if len(data) > MAX_HEAD_BYTES:
            raise ProxyError(431, "Request Header Fields Too Large")
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def target_of(head: bytes) -> tuple[str, int, bytes | None]:
    """(host, port, the request rewritten for the origin server, or None for CONNECT)."""
    line, _, headers = head.partition(b"\r\n")
    try:
        method, target, version = line.decode("ascii").split(" ")
    except ValueError:
        raise ProxyError(400, "Bad Request") from None
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ProxyError(400, "Bad Request")
        return host.strip("[]"), int(port), None
    url = urllib.parse.urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ProxyError(400, "Bad Request")
    path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
    request = f"{method} {path} {version}\r\n".encode("ascii") + headers
    return url.hostname, url.port or 80, request


def pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def serve(conn: socket.socket, allowed_ports: frozenset[int]) -> None:
    with conn:
        try:
            head, rest = read_head(conn)
            host, port, request = target_of(head)
            if port not in allowed_ports:
                raise ProxyError(403, "Forbidden")
            try:
                upstream = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
            except OSError:
                raise ProxyError(502, "Bad Gateway") from None
        except ProxyError as exc:
            with contextlib.suppress(OSError):
                conn.sendall(f"HTTP/1.1 {exc.status} {exc} \r\nContent-Length: 0\r\n\r\n".encode())
            return
        except OSError:
            return
        with upstream, contextlib.suppress(OSError):  # either side may go away at any time
            upstream.settimeout(None)
            if request is None:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.sendall(request)
            if rest:
                upstream.sendall(rest)
            back = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
            back.start()
            pipe(conn, upstream)
            back.join()


def listen(address: tuple[str, int], netns: str | None) -> socket.socket:
    # A socket belongs to the namespace it was created in, whatever the thread does later.
    with network_namespace(netns):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(address)
        server.listen(128)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--netns", help="the network namespace to listen in (a /run/netns/NAME file)")
    parser.add_argument(
        "--allow-port", type=int, action="append", help="a port it connects to (default: 80 and 443)"
    )
    args = parser.parse_args(argv)
    allowed = frozenset(args.allow_port or DEFAULT_PORTS)
    host, _, port = args.listen.rpartition(":")
    server = listen((host, int(port)), args.netns)
    print(f"netns_proxy: listening on {args.listen}", flush=True)
    with server:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn, allowed), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
