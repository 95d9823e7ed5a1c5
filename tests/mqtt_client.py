"""MQTT clients for tests: a publisher that survives broker restarts and waits for every QoS 1
ack, a stranger with a chosen client id, and a count of the broker's retained messages."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

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


class Intruder:
    """An MQTT 5 client with a chosen client id that counts every message the broker hands it:
    what a stranger taking over a session would receive."""

    def __init__(self, port: int, client_id: str, clean_start: bool, subscribe: str | None = None) -> None:
        self.received = 0
        self.connected = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_message = self._count
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError(f"no CONNACK for {client_id!r}")
        if subscribe:
            self.client.subscribe(subscribe, options=SubscribeOptions(qos=1))

    def _count(self, *_: object) -> None:
        self.received += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_count(port: int, timeout_s: float = 30.0) -> int:
    """How many retained messages a new subscriber to `#` is sent.

    The broker sends them right after the SUBACK; subscribed to next, the retained
    `$SYS/broker/version` comes after all of them and ends the count (`#` never matches a
    `$` topic, and the open broker's ACL lets anyone read `$SYS`)."""
    retained = 0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        nonlocal retained
        if message.topic == "$SYS/broker/version":
            done.set()
        elif message.retain:
            retained += 1

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        # QoS 1: the broker never drops them for a slow subscriber (it may drop QoS 0 ones past
        # its queue limit).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        client.subscribe("#", options=options)
        if not subscribed.wait(timeout_s):
            raise TimeoutError("no SUBACK")
        client.subscribe("$SYS/broker/version", options=options)
        if not done.wait(timeout_s):
            raise TimeoutError("the retained messages did not end")
    finally:
        client.disconnect()
        client.loop_stop()
    return retained
