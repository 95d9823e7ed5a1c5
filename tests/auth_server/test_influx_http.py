"""The auth server's own HTTP/1.1 write connection (auth_server.influx_http): every framing an
answer may have is read exactly, an answer it cannot read fails the write instead of being
guessed at, and a connection is kept only while the answer allows it. The real InfluxDB path
(keep-alive, a restart, a missing database answered early) is in test_influx_group.py; here
small servers of the test's own send the answers InfluxDB could send but rarely does."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from auth_server.influx_http import MAX_HEAD, BadAnswerError, WriteConnection

HEAD = b"POST /write?db=x&precision=n HTTP/1.1\r\nHost: 127.0.0.1\r\n"


class CannedServer:
    """Answers each request on a connection with the next canned answer (closing the
    connection after it when asked), and records each request's bytes and connection."""

    def __init__(self, answers: list[bytes | tuple[bytes, str]]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        number = 0
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            number += 1
            with conn:
                while self.answers:
                    request = self._read_request(conn)
                    if request is None:
                        break
                    self.requests.append((number, request))
                    answer = self.answers.pop(0)
                    close = isinstance(answer, tuple)
                    conn.sendall(answer[0] if isinstance(answer, tuple) else answer)
                    if close:
                        break

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(65536)
        return data

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[list[CannedServer]]:
    servers: list[CannedServer] = []
    yield servers
    for server in servers:
        server.close()


def connect(servers: list[CannedServer], answers: list[bytes | tuple[bytes, str]]) -> WriteConnection:
    server = CannedServer(answers)
    servers.append(server)
    return WriteConnection("127.0.0.1", server.port, 5, HEAD)


NO_CONTENT = b"HTTP/1.1 204 No Content\r\nX-Influxdb-Version: 1.8.10\r\n\r\n"


def test_writes_go_on_one_kept_connection(serve: list[CannedServer]) -> None:
    conn = connect(serve, [NO_CONTENT, NO_CONTENT, NO_CONTENT])
    for n in range(3):
        assert conn.post(b"m v=%d 1" % n) == (204, b"")
        assert conn.open
    requests = serve[0].requests
    assert [number for number, _ in requests] == [1, 1, 1]
    assert requests[2][1] == HEAD + b"Content-Length: 7\r\n\r\nm v=2 1"


def test_an_answer_with_a_body_of_content_length(serve: list[CannedServer]) -> None:
    error = b'{"error":"partial write: field type conflict"}'
    answer = b"HTTP/1.1 400 Bad Request\r\nCONTENT-LENGTH:  %d \r\n\r\n%s" % (len(error), error)
    conn = connect(serve, [answer, NO_CONTENT])
    assert conn.post(b"m v=1 1") == (400, error)
    assert conn.open  # nothing of the answer is left over: the next one is read from its start
    assert conn.post(b"m v=2 2") == (204, b"")


def test_a_chunked_answer_is_read_whole(serve: list[CannedServer]) -> None:
    answer = (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    conn = connect(serve, [answer, NO_CONTENT])
    assert conn.post(b"m v=1 1") == (400, b"hello" + b"x" * 26)
    assert conn.post(b"m v=2 2") == (204, b"")


def test_connection_close_and_http_1_0_answers_end_the_connection(serve: list[CannedServer]) -> None:
    conn = connect(serve, [(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", "close")])
    assert conn.post(b"m v=1 1") == (204, b"")
    assert not conn.open
    conn = connect(serve, [(b"HTTP/1.0 204 No Content\r\n\r\n", "close")])
    assert conn.post(b"m v=1 1") == (204, b"")
    assert not conn.open


def test_an_answer_without_framing_ends_with_the_connection(serve: list[CannedServer]) -> None:
    conn = connect(serve, [(b"HTTP/1.1 500 Internal Server Error\r\n\r\nout of memory", "close")])
    assert conn.post(b"m v=1 1") == (500, b"out of memory")
    assert not conn.open


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",  # not HTTP
        b"HTTP/1.1 100 Continue\r\n\r\n",  # never asked for
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 99999999\r\n\r\n",
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\n\r\nshort",  # then closed
        b"HTTP/1.1 204 No Content\r\nX-Long: " + b"a" * (MAX_HEAD + 10),  # a head without end
    ],
)
def test_an_unreadable_answer_fails_and_closes_the_connection(
    serve: list[CannedServer], answer: bytes
) -> None:
    conn = connect(serve, [(answer, "close")])
    with pytest.raises(BadAnswerError):
        conn.post(b"m v=1 1")
    assert not conn.open


def test_a_closed_connection_is_an_error(serve: list[CannedServer]) -> None:
    conn = connect(serve, [(b"", "close")])
    with pytest.raises(OSError):
        conn.post(b"m v=1 1")
    assert not conn.open
