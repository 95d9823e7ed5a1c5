"""A test publisher that survives broker restarts and waits for every QoS 1 ack."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

import paho.mqtt.client as mqtt

_ids = itertools.count()


class Publisher:
    """paho client with a persistent session: unacked messages are resent after a reconnect."""

    def __init__(
        self,
        port: int,
        client_id: str | None = None,
        max_inflight: int = 1000,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-publisher-{next(_ids)}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        self._infos: list[tuple[mqtt.MQTTMessageInfo, str, bytes | str, int, bool]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self._infos.append((info, topic, payload, qos, retain))

    def publish_all(self, messages: Iterable[tuple[str, bytes | str]], qos: int = 1) -> None:
        for topic, payload in messages:
            self.publish(topic, payload, qos)

    def wait(self, timeout_s: float = 120.0) -> None:
        """Until the broker acked every message published so far."""
        deadline = time.monotonic() + timeout_s
        for n, (first_info, topic, payload, qos, retain) in enumerate(self._infos):
            info = first_info
            while info.rc == mqtt.MQTT_ERR_NO_CONN or not info.is_published():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self._infos) - n} messages still unacked by the broker")
                if info.rc == mqtt.MQTT_ERR_NO_CONN and self.client.is_connected():
                    # Published while the broker was away: paho did not take it, send it again.
                    info = self.client.publish(topic, payload, qos=qos, retain=retain)
                time.sleep(0.01)
        self._infos.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
