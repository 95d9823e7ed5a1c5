"""A cheap MQTT load generator for the ingest benchmark: pre-encoded QoS 1 PUBLISH packets over raw sockets.

`mosquitto_pub -l` sends one topic per process, and a paho publisher spends more CPU per message than
the adapter under test, so neither can offer a fleet's traffic (many topics) fast enough on two cores.
Here every packet is encoded before the clock starts; while it runs, a publisher process only writes
ready-made bytes and counts PUBACKs, keeping a bounded window of unacknowledged messages per
connection, as a device library does. Each process is one MQTT 3.1.1 connection and owns a disjoint
set of stations, so every series is written by one connection in time order.

Workloads (`Workload.messages` yields the same messages for a given size every time):
- `realistic`: 1,000 stations over 10 locations, each message 3 numeric values, 1 string value and an
  ISO 8601 timestamp with milliseconds, as a fleet of sensor boxes sends them;
- `easy`: the first benchmark's shape, 4 stations, epoch-millisecond timestamps, 3 numeric values.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

# 2026-12-01T00:00:00Z: device timestamps start here and advance one second per message of a station.
T0_S = 1_796_083_200
PACKETS_PER_WRITE = 200


@dataclass(frozen=True)
class Workload:
    name: str
    stations: int
    locations: int
    numeric_fields: int
    description: str

    def topic(self, station: int) -> str:
        return f"Loc{station % self.locations}/St{station:04d}"

    def payload(self, station: int, k: int) -> bytes:
        """Message `k` of `station`: unique timestamp per station, so every point is its own."""
        if self.name == "easy":
            ts = (T0_S * 1000) + k * self.stations + station
            return f'{{"temp": {20 + k % 10}.5, "hum": {k % 100}, "bat": 99, "timestamp": {ts}}}'.encode()
        ms = station % 1000
        day, rem = divmod(k, 86_400)
        hh, rem = divmod(rem, 3600)
        mm, ss = divmod(rem, 60)
        # T0 is a midnight and a run stays far below a month: the date is 2026-12-(01 + day).
        stamp = f"2026-12-{1 + day:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{ms:03d}Z"
        temp = 15 + (k * 7 + station) % 200 / 10
        humid = 30 + (k * 3 + station) % 500 / 10
        bat = 100 - (k // 20 + station) % 100
        status = "OK" if (k + station) % 50 else "LOW_SIGNAL"
        return (
            f'{{"TEMP": {temp:.1f}, "HUMID": {humid:.1f}, "BAT": {bat}, "status": "{status}", '
            f'"timestamp": "{stamp}"}}'
        ).encode()

    def points(self, messages: int) -> int:
        return messages * self.numeric_fields

    def messages(self, total: int, connection: int, connections: int) -> Iterator[tuple[str, bytes]]:
        """This connection's share of `total` messages, round-robin over its stations."""
        mine = [s for s in range(self.stations) if s % connections == connection]
        count = total // connections + (1 if connection < total % connections else 0)
        for i in range(count):
            station = mine[i % len(mine)]
            yield self.topic(station), self.payload(station, i // len(mine))


WORKLOADS = {
    "realistic": Workload(
        "realistic",
        1000,
        10,
        3,
        "1,000 stations in 10 locations; 3 numbers + 1 string + ISO 8601 timestamp with ms per message",
    ),
    "easy": Workload("easy", 4, 1, 3, "4 stations, epoch-ms timestamps, 3 numbers per message"),
}


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_publish(topic: str, payload: bytes, mid: int, retain: bool = False) -> bytes:
    """One MQTT 3.1.1 QoS 1 PUBLISH packet."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid) + payload
    return bytes([0x32 | (1 if retain else 0)]) + _remaining_length(len(body)) + body


def encode_connect(client_id: str, keepalive: int = 60) -> bytes:
    cid = client_id.encode()
    # Protocol name "MQTT", level 4 (3.1.1), flags: clean session.
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keepalive) + struct.pack("!H", len(cid)) + cid
    return b"\x10" + _remaining_length(len(body)) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def _chunks(workload: Workload, total: int, connection: int, connections: int) -> list[tuple[int, bytes]]:
    """The connection's packets, joined PACKETS_PER_WRITE at a time: (packet count, bytes)."""
    chunks: list[tuple[int, bytes]] = []
    group: list[bytes] = []
    for i, (topic, payload) in enumerate(workload.messages(total, connection, connections)):
        group.append(encode_publish(topic, payload, i % 65535 + 1))
        if len(group) == PACKETS_PER_WRITE:
            chunks.append((len(group), b"".join(group)))
            group = []
    if group:
        chunks.append((len(group), b"".join(group)))
    return chunks


def _publisher(  # noqa: PLR0917
    port: int,
    workload_name: str,
    total: int,
    connection: int,
    connections: int,
    window: int,
    rate: float,
    pipe: Connection,
) -> None:
    workload = WORKLOADS[workload_name]
    chunks = _chunks(workload, total, connection, connections)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode_connect(f"bench-load-{connection}-{time.monotonic_ns()}"))
    connack = _recv_exact(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {connack!r}")
    pipe.send("ready")
    start_at = pipe.recv()  # a time.time() the parent picked, so every process starts together
    while time.time() < start_at:
        time.sleep(0.0005)
    started = time.monotonic()
    sent = acked = 0
    leftover = b""
    per_s = rate / connections if rate > 0 else 0.0
    for count, data in chunks:
        if per_s:
            ahead = started + sent / per_s - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while sent + count - acked > window:
            leftover += sock.recv(65536)
            acked += _count_pubacks(leftover)
            leftover = leftover[len(leftover) - len(leftover) % 4 :]
        sock.sendall(data)
        sent += count
    while acked < sent:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("broker closed the connection before acking everything")
        leftover += chunk
        acked += _count_pubacks(leftover)
        leftover = leftover[len(leftover) - len(leftover) % 4 :]
    elapsed = time.monotonic() - started
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    pipe.send((sent, elapsed))


def _count_pubacks(buf: bytes) -> int:
    # Only PUBACKs (4 bytes: 0x40 0x02 id) come back to a publisher that subscribes to nothing.
    whole = len(buf) - len(buf) % 4
    if whole and buf[0] != 0x40:
        raise ConnectionError(f"unexpected packet from the broker: {buf[:8]!r}")
    return whole // 4


class LoadGenerator:
    """`connections` publisher processes, encoded and connected before `run()` starts the clock."""

    def __init__(
        self,
        port: int,
        workload: Workload,
        messages: int,
        *,
        connections: int = 2,
        window: int = 1000,
        rate: float = 0.0,
    ) -> None:
        ctx = mp.get_context("spawn")  # no copy of the benchmark's own state in the children
        self.messages = messages
        self._pipes: list[Connection] = []
        self._procs = []
        for c in range(connections):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_publisher,
                args=(port, workload.name, messages, c, connections, window, rate, child),
                daemon=True,
            )
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        for pipe in self._pipes:
            if not pipe.poll(timeout_s) or pipe.recv() != "ready":
                raise RuntimeError("a publisher did not get ready")

    def run(self) -> tuple[float, float]:
        """Start every publisher at once; (wall-clock start, seconds until the last PUBACK)."""
        start_at = time.time() + 0.05
        for pipe in self._pipes:
            pipe.send(start_at)
        started = time.monotonic() + max(0.0, start_at - time.time())
        results = []
        for pipe in self._pipes:
            if not pipe.poll(3600):
                raise RuntimeError("a publisher did not finish")
            results.append(pipe.recv())
        for proc in self._procs:
            proc.join(10)
            if proc.exitcode:
                raise RuntimeError(f"a publisher exited with {proc.exitcode}")
        if sum(sent for sent, _ in results) != self.messages:
            raise RuntimeError("the publishers sent fewer messages than asked")
        return started, max(elapsed for _, elapsed in results)

    def close(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
