"""Memory bound of the shipped broker against a client that opens QoS 2 handshakes and never
finishes them (it sends PUBLISH, ignores every PUBREC, never sends PUBREL).

    PYTHONPATH=. .venv/bin/python -m benchmarks.qos2_handshakes          # 100 000 handshakes
    PYTHONPATH=. .venv/bin/python -m benchmarks.qos2_handshakes --handshakes 200000 --payload-bytes 4096

Runs Debian's Mosquitto with mosquitto_mqtt_vol/mosquitto.conf as shipped (paths and port
rewritten) and prints the broker's resident memory (VmRSS) and its own heap count
(`$SYS/broker/heap/current`) before and after. Packet ids are 16 bits, so at most 65 535
handshakes can be open on one connection at a time: later ones reuse an id, and Mosquitto
replaces the unfinished message that had it. The payload of what stays open is bounded by
max_inflight_bytes (16 MiB per client), the count by the id space; the bound printed is
that payload bound plus the measured bookkeeping per open message.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.servers import MosquittoServer, free_port, require_binary
from tests.stack.test_mosquitto_conf import Paths

MAX_INFLIGHT_BYTES = 16 * 1024 * 1024
PACKET_IDS = 65535


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + varint(len(body)) + body


def mqtt_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str) -> bytes:
    # MQTT 3.1.1, clean session, keepalive 10 minutes.
    return packet(
        0x10, mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 600) + mqtt_string(client_id)
    )


def reading(i: int, payload_bytes: int) -> bytes:
    when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=i)
    body = {"TEMP": 20 + (i % 100) / 10, "HUMID": 40 + i % 30, "BAT": 99, "timestamp": when.isoformat()}
    text = json.dumps(body)
    if len(text) < payload_bytes:
        body["note"] = "x" * (payload_bytes - len(text) - 12)
        text = json.dumps(body)
    return text.encode()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def heap_bytes(port: int) -> int:
    out = subprocess.run(
        [
            require_binary("mosquitto_sub"),
            "-p",
            str(port),
            "-t",
            "$SYS/broker/heap/current",
            "-C",
            "1",
            "-W",
            "15",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return int(out.split()[0])


def open_handshakes(port: int, count: int, payload_bytes: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(connect_packet(f"qos2-never-{time.monotonic_ns()}"))

    def drain() -> None:  # read and ignore CONNACK and every PUBREC, until the socket closes
        while True:
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    topic = mqtt_string("UPB/RPi_never")
    batch = bytearray()
    for i in range(count):
        mid = i % PACKET_IDS + 1
        batch += packet(0x34, topic + struct.pack("!H", mid) + reading(i, payload_bytes))
        if len(batch) > 256 * 1024:
            sock.sendall(batch)
            batch.clear()
    sock.sendall(batch)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--handshakes", type=int, default=100_000)
    parser.add_argument(
        "--payload-bytes", type=int, default=0, help="pad each reading to this size (0: ~110 B)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(Path(tmp))
        port = free_port()
        config = paths.config("mosquitto.conf", port) + "sys_interval 1\n"
        broker = MosquittoServer(paths.workdir, port=port, config_text=config)
        broker.start()
        try:
            assert broker.proc is not None
            time.sleep(2)
            rss0, heap0 = rss_kib(broker.proc.pid), heap_bytes(port)
            started = time.monotonic()
            sock = open_handshakes(port, args.handshakes, args.payload_bytes)
            # Until the broker has read everything: its heap stops changing.
            last, steady = -1, 0
            while steady < 3:
                time.sleep(1)
                heap = heap_bytes(port)
                steady = steady + 1 if heap == last else 0
                last = heap
            elapsed = time.monotonic() - started
            rss1, heap1 = rss_kib(broker.proc.pid), last
            size = len(reading(0, args.payload_bytes))
            open_now = min(args.handshakes, PACKET_IDS, MAX_INFLIGHT_BYTES // size + 1)
            per_message = (heap1 - heap0) / open_now
            print(
                f"{args.handshakes} QoS 2 handshakes never finished, readings of {size} B, in {elapsed:.1f} s"
            )
            rss = f"{rss0 / 1024:8.1f} MiB -> {rss1 / 1024:8.1f} MiB (+{(rss1 - rss0) / 1024:.1f} MiB)"
            print(f"  broker RSS   {rss}")
            heap = (
                f"{heap0 / 2**20:8.1f} MiB -> {heap1 / 2**20:8.1f} MiB (+{(heap1 - heap0) / 2**20:.1f} MiB)"
            )
            print(f"  broker heap  {heap}")
            print(f"  open at most {open_now} (ids {PACKET_IDS}, max_inflight_bytes {MAX_INFLIGHT_BYTES})")
            print(f"  heap per open handshake {per_message:.0f} B (payload {size} B)")
            print(
                f"  bound per client: {MAX_INFLIGHT_BYTES / 2**20:.0f} MiB payload + "
                f"{PACKET_IDS} x {per_message - size:.0f} B bookkeeping = "
                f"{(MAX_INFLIGHT_BYTES + PACKET_IDS * (per_message - size)) / 2**20:.0f} MiB"
            )
            sock.close()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
