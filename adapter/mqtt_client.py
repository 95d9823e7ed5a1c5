"""paho-mqtt's client with a fast path for the adapter's one hot loop: QoS 1 PUBLISH in, PUBACK out.

Stock paho 2.2 reads every packet with three or more recv() calls after its own select(),
builds an MQTTMessage with parsed MQTT 5 properties, and sends each PUBACK with its own
send(). At tens of thousands of messages per second that bookkeeping, not our parsing,
is the adapter's limit. This subclass reads the socket in large chunks, decodes QoS 1
PUBLISH packets itself (handing topic, packet id and payload straight to a callback) and
sends a whole batch of PUBACKs as one write. Everything else — CONNECT, SUBSCRIBE,
keepalive, reconnects, other packet types — stays paho's own code.

It relies on paho's private members (`_in_packet`, `_packet_handle`, `_packet_queue`,
`_sock_recv`), so requirements.txt pins paho-mqtt exactly; the whole test suite runs
through this path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import time_func
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

PUBLISH = 0x30
PUBACK = 0x40
_READ_CHUNK = 256 * 1024
_PUBACK_STRUCT = struct.Struct("!BBH")

# (topic, packet id, payload, retain flag) of one QoS 1 PUBLISH.
PublishHandler = Callable[[str, int, bytes, bool], None]


def _varint(buf: bytearray | memoryview, pos: int, end: int) -> tuple[int, int] | None:
    """MQTT variable byte integer at buf[pos:] → (value, next position); None if incomplete."""
    value = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length")
    return None


class BufferedMqttClient(mqtt.Client):
    """A paho Client whose QoS 1 PUBLISH packets go to `on_qos1_publish` (MQTT 5 only)."""

    def __init__(self, *args: Any, on_qos1_publish: PublishHandler, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_qos1_publish = on_qos1_publish
        self._rbuf = bytearray()
        self._rbuf_sock: object = None
        # Called after the packets of each socket read are handled (the data-flow log's write).
        self.on_read_end: Callable[[], None] | None = None

    def _packet_read(self) -> MQTTErrorCode:
        if self._sock is not self._rbuf_sock:  # a new connection: nothing carried over
            self._rbuf.clear()
            self._rbuf_sock = self._sock
        try:
            data = self._sock_recv(_READ_CHUNK)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        buf = self._rbuf
        buf += data
        with self._msgtime_mutex:
            self._last_bytes_received = time_func()
        pos = 0
        end = len(buf)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            while pos + 2 <= end:
                header = _varint(buf, pos + 1, end)
                if header is None:
                    break
                length, body = header
                stop = body + length
                if stop > end:
                    break
                command = buf[pos]
                if command & 0xF6 == PUBLISH | 0x02 and self._protocol == mqtt.MQTTv5:
                    self._publish_qos1(buf, body, stop, bool(command & 0x01))
                else:
                    rc = self._handle_other(command, length, bytes(buf[body:stop]))
                pos = stop
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        except (ValueError, IndexError, UnicodeDecodeError):
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        del buf[:pos]
        if self.on_read_end is not None:
            self.on_read_end()
        return rc

    def _publish_qos1(self, buf: bytearray, pos: int, stop: int, retain: bool) -> None:
        # Variable header: topic (2-byte length + UTF-8), packet id, properties; then payload.
        topic_len = (buf[pos] << 8) | buf[pos + 1]
        topic = buf[pos + 2 : pos + 2 + topic_len].decode("utf-8")
        pos += 2 + topic_len
        mid = (buf[pos] << 8) | buf[pos + 1]
        props = _varint(buf, pos + 2, stop)
        if props is None:
            raise ValueError("truncated PUBLISH properties")
        props_len, pos = props
        # Properties (content type, user properties...) carry nothing the contract uses.
        self._on_qos1_publish(topic, mid, bytes(buf[pos + props_len : stop]), retain)

    def _handle_other(self, command: int, length: int, packet: bytes) -> MQTTErrorCode:
        """Any other packet: hand it to paho exactly as its own reader would."""
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": length,
            "packet": bytearray(packet),
            "to_process": 0,
            "pos": 0,
        }
        try:
            return self._packet_handle()
        except MalformedPacket:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet = {
                "command": 0,
                "have_remaining": 0,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": 0,
                "packet": bytearray(b""),
                "to_process": 0,
                "pos": 0,
            }

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK (reason 0, short form) for each packet id, queued as one write, in order."""
        if mids:
            packet = b"".join(_PUBACK_STRUCT.pack(PUBACK, 2, mid) for mid in mids)
            self._packet_queue(PUBACK, packet, 0, 0)
