"""One kept-alive HTTP/1.1 connection to InfluxDB for writes, speaking only what `/write` needs.

A device write costs the auth server one InfluxDB write (fewer when writes are grouped). Through
http.client that took ~290 µs of CPU, most of it parsing the answer's headers with the email
package; this takes ~100 µs (measured on this project's 2-core machine, same InfluxDB). It sends
a POST with a Content-Length body and reads an answer framed by Content-Length, by chunks, or
(an answer with neither) by the end of the connection. Answers it cannot read are refused with
BadAnswerError, and the connection is then not used again.
"""

from __future__ import annotations

import re
import socket

MAX_HEAD = 64 * 1024  # the status line and headers of an answer, at most
MAX_BODY = 1024 * 1024  # InfluxDB's error texts are short; more than this is not an answer to a write
_STATUS = re.compile(rb"HTTP/1\.([01]) (\d{3})")
# The headers that frame an answer, found in one pass over a lowercased copy of its head (the
# benchmark's HTTP client, benchmarks/http_api.py, reads answers with it too).
FRAMING_HEADERS = re.compile(rb"\r\n(content-length|transfer-encoding|connection)[ \t]*:[ \t]*([^\r]*)")
_CHUNK_SIZE = re.compile(rb"[0-9a-f]{1,8}")


class BadAnswerError(OSError):
    """The answer cannot be read as HTTP/1.1 (or is larger than any answer to a write): the
    connection is as unusable as a broken one, so it is an OSError like one."""


class WriteConnection:
    """`post(body)` on one socket, kept open for the next write while InfluxDB keeps it open."""

    def __init__(self, host: str, port: int, timeout_s: float, head: bytes) -> None:
        """`head`: the request line and the headers every write carries (Host, Content-Type,
        Authorization), each ending in CRLF; Content-Length is added per write."""
        self._head = head
        self._buffer = bytearray()
        self.open = True  # False once the answer said, or a failure showed, that it is done
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        # A write is sent in one piece and its answer awaited: Nagle's algorithm would only delay.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.open = False
        self._sock.close()

    def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of InfluxDB's answer to a POST of `body`. Raises OSError when the
        connection fails before a whole answer arrived (and then it is closed)."""
        try:
            try:
                self._sock.sendall(b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body))
            except OSError:
                # InfluxDB answers some writes (a missing database) before it has read the
                # whole body, and closes: its answer may still be there to read.
                self.open = False
            answer = self._read_answer()
        except OSError:
            self.close()
            raise
        if self._buffer:  # more than the answer: whatever it is, the next answer would not be ours
            self.open = False
        return answer

    def _read_answer(self) -> tuple[int, bytes]:
        head_end = self._fill_until(b"\r\n\r\n", MAX_HEAD)
        head = bytes(self._buffer[:head_end])
        del self._buffer[: head_end + 4]
        status_line = _STATUS.match(head)
        if status_line is None:
            raise BadAnswerError(f"not an HTTP/1.x answer: {head[:60]!r}")
        status = int(status_line.group(2))
        framing = {name: value.strip() for name, value in FRAMING_HEADERS.findall(head.lower())}
        if status_line.group(1) == b"0" or framing.get(b"connection") == b"close":
            self.open = False
        if status < 200:
            raise BadAnswerError(f"interim answer {status} to a write")  # never asked for
        if status in (204, 304):
            return status, b""
        if b"transfer-encoding" in framing:
            if framing[b"transfer-encoding"] != b"chunked":
                raise BadAnswerError(f"unreadable transfer-encoding {framing[b'transfer-encoding']!r}")
            return status, self._read_chunks()
        if b"content-length" in framing:
            length = framing[b"content-length"]
            if not length.isdigit() or int(length) > MAX_BODY:
                raise BadAnswerError(f"unusable content-length {length!r}")
            return status, self._take(int(length))
        # Neither: the body ends with the connection.
        self.open = False
        while self._receive(MAX_BODY):
            pass
        body = bytes(self._buffer)
        self._buffer.clear()
        return status, body

    def _read_chunks(self) -> bytes:
        body = bytearray()
        while True:
            line_end = self._fill_until(b"\r\n", 64)
            size_text = bytes(self._buffer[:line_end]).split(b";", 1)[0].strip().lower()
            del self._buffer[: line_end + 2]
            if _CHUNK_SIZE.fullmatch(size_text) is None:
                raise BadAnswerError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                break
            if len(body) + size > MAX_BODY:
                raise BadAnswerError("chunked answer larger than any answer to a write")
            body += self._take(size)
            if self._take(2) != b"\r\n":
                raise BadAnswerError("chunk not followed by CRLF")
        # Trailers, if any, up to the empty line.
        while (line_end := self._fill_until(b"\r\n", MAX_HEAD)) > 0:
            del self._buffer[: line_end + 2]
        del self._buffer[:2]
        return bytes(body)

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._receive(size):
                raise BadAnswerError("connection closed inside an answer")
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    def _fill_until(self, marker: bytes, limit: int) -> int:
        """The position of `marker` in the buffer, reading until it arrives (at most `limit`
        bytes before it)."""
        start = 0
        while (found := self._buffer.find(marker, start)) < 0:
            if len(self._buffer) > limit:
                raise BadAnswerError(f"no {marker!r} within {limit} bytes")
            start = max(0, len(self._buffer) - len(marker) + 1)
            if not self._receive(limit):
                raise BadAnswerError("connection closed before a whole answer")
        return found

    def _receive(self, limit: int) -> bool:
        """Read what has arrived into the buffer; False at the connection's end."""
        if len(self._buffer) > limit:
            raise BadAnswerError(f"answer larger than {limit} bytes")
        data = self._sock.recv(65536)
        self._buffer += data
        return bool(data)
