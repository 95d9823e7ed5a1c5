"""Where the messages go: the MQTT broker (paho-mqtt), or stdout for a dry run.

Both sinks count what happened to every message: acknowledged, refused by the broker (MQTT 5
reason codes, e.g. an ACL in secure mode), dropped (QoS 0 while disconnected), or still pending.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulator.config import SimulatorConfig

# MQTT 5 PUBACK 0x10: accepted, but no subscription matches (e.g. no adapter is running).
NO_MATCHING_SUBSCRIBERS = 0x10
# How long the broker keeps the session if the connection drops: long enough for a restart,
# short enough not to leave stale sessions behind.
SESSION_EXPIRY_S = 300


class PublishError(RuntimeError):
    """The broker cannot be used (unreachable, or it refused the connection)."""


@dataclass
class Delivery:
    """What became of the messages handed to a sink so far."""

    sent: int = 0
    acked: int = 0
    no_subscribers: int = 0  # part of `acked`
    dropped: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def pending(self) -> int:
        return self.sent - self.acked - self.dropped - sum(self.refused.values())


class Sink(Protocol):
    def connect(self) -> None: ...
    def wait_window(self, stop: threading.Event) -> bool: ...
    def publish(self, topic: str, payload: bytes) -> None: ...
    def drain(self, timeout_s: float, abort: threading.Event) -> bool: ...
    def close(self) -> None: ...
    @property
    def connected(self) -> bool: ...
    def delivery(self) -> Delivery: ...


class MqttSink:
    """One MQTT connection publishing for every simulated device, with a bounded in-flight window.

    The window stops the simulator from queueing without limit inside paho when the broker is
    slow or away; it is lowered to the broker's Receive Maximum, which paho does not enforce.
    """

    def __init__(self, config: SimulatorConfig, log: TextIO = sys.stderr) -> None:
        self.config = config
        self.log = log
        v5 = config.mqtt_version == "5"
        self._v5 = v5
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            # MQTT 3.1.1 has no session expiry; a clean session leaves nothing behind.
            clean_session=None if v5 else True,
        )
        if config.username is not None:
            self.client.username_pw_set(config.username, config.password)
        self.client.max_inflight_messages_set(config.max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._cond = threading.Condition()
        self._delivery = Delivery()
        self._window = config.max_inflight
        self._connected = False
        self._closing = False
        self._ever_connected = threading.Event()
        self._refusal: str | None = None

    # --- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Properties | None
    ) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            self._ever_connected.set()
            return
        receive_max = getattr(properties, "ReceiveMaximum", None) if self._v5 else None
        with self._cond:
            if receive_max:
                self._window = min(self.config.max_inflight, int(receive_max))
            self._connected = True
            self._cond.notify_all()
        if self._ever_connected.is_set():
            print(f"simulator: reconnected to {self.config.host}:{self.config.port}", file=self.log)
        self._ever_connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Properties | None
    ) -> None:
        with self._cond:
            self._connected = False
        if not self._closing and self._refusal is None:
            print(f"simulator: lost the broker connection ({reason}); reconnecting", file=self.log)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Properties | None
    ) -> None:
        with self._cond:
            if reason.is_failure:
                self._delivery.refused[str(reason)] += 1
            else:
                self._delivery.acked += 1
                if reason.value == NO_MATCHING_SUBSCRIBERS:
                    self._delivery.no_subscribers += 1
            self._cond.notify_all()

    # --- caller's thread -------------------------------------------------------------------

    def connect(self) -> None:
        """Connect, retrying until --connect-timeout; PublishError if refused or unreachable."""
        cfg = self.config
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(cfg.host, cfg.port, keepalive=30, properties=properties)
        # loop_start keeps retrying the first connection, so a broker still starting is waited for.
        self.client.loop_start()
        if not self._ever_connected.wait(cfg.connect_timeout_s):
            self.close()
            raise PublishError(
                f"no connection to the MQTT broker at {cfg.host}:{cfg.port} within "
                f"{cfg.connect_timeout_s:g} s; is it running, and are --host/--port right?"
            )
        if self._refusal is not None:
            self.close()
            hint = " (check --username/--password)" if "authori" in self._refusal.lower() else ""
            raise PublishError(
                f"the broker at {cfg.host}:{cfg.port} refused the connection: {self._refusal}{hint}"
            )

    def wait_window(self, stop: threading.Event) -> bool:
        """Block while disconnected or the window is full; False if `stop` was set meanwhile."""
        with self._cond:
            while not self._connected or self._delivery.pending >= self._window:
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
        return True

    def publish(self, topic: str, payload: bytes) -> None:
        with self._cond:
            self._delivery.sent += 1
        # Never call paho while holding our lock: its network thread holds paho's lock when it
        # calls _on_publish, which takes ours.
        info = self.client.publish(topic, payload, qos=self.config.qos)
        if info.rc == mqtt.MQTT_ERR_NO_CONN and self.config.qos == 0:
            # QoS 1/2 messages wait in paho for the reconnect; QoS 0 ones are gone.
            with self._cond:
                self._delivery.dropped += 1
                self._cond.notify_all()
        elif info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise PublishError(f"paho could not publish to {topic!r}: {mqtt.error_string(info.rc)}")

    def drain(self, timeout_s: float, abort: threading.Event) -> bool:
        """Wait until every message is acknowledged; False on timeout or abort."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._delivery.pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or abort.is_set():
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected

    def delivery(self) -> Delivery:
        with self._cond:
            d = self._delivery
            return Delivery(d.sent, d.acked, d.no_subscribers, d.dropped, Counter(d.refused))


class PrintSink:
    """Dry run: one `<topic><TAB><payload>` line per message on stdout; writing it is the ack.

    A tab separates them because it can be in neither a topic level nor (unescaped) JSON.
    """

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self._delivery = Delivery()

    def connect(self) -> None:
        return None

    def wait_window(self, stop: threading.Event) -> bool:
        return not stop.is_set()

    def publish(self, topic: str, payload: bytes) -> None:
        self._delivery.sent += 1
        # Invalid UTF-8 (a not_json variant) is shown escaped rather than breaking the output.
        self.out.write(f"{topic}\t{payload.decode('utf-8', 'backslashreplace')}\n")
        self._delivery.acked += 1

    def drain(self, timeout_s: float, abort: threading.Event) -> bool:
        self.out.flush()
        return True

    def close(self) -> None:
        self.out.flush()

    @property
    def connected(self) -> bool:
        return True

    def delivery(self) -> Delivery:
        d = self._delivery
        return Delivery(d.sent, d.acked, d.no_subscribers, d.dropped, Counter(d.refused))
