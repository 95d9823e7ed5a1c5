"""A persistent MQTT session of the end-to-end test, run in the simulator's image (paho-mqtt).

python3 mqtt_session.py --port 1883 subscribe CLIENT_ID TOPIC
    connects with a persistent session (clean session false), subscribes to TOPIC with
    QoS 1 and goes away: from then on the broker queues TOPIC's messages for it
python3 mqtt_session.py --port 1883 collect CLIENT_ID --count N [--timeout S]
    comes back as CLIENT_ID and prints {"session_present": ..., "payloads": [...]}: what
    the broker kept for it, in order (until N arrived, or S seconds passed)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt


def client(client_id: str) -> mqtt.Client:
    return mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )


def subscribe(host: str, port: int, client_id: str, topic: str) -> int:
    mqttc = client(client_id)
    done = threading.Event()
    mqttc.on_connect = lambda c, _u, _f, rc, _p: (
        c.subscribe(topic, qos=1) if not rc.is_failure else done.set()
    )
    mqttc.on_subscribe = lambda c, _u, _m, rcs, _p: (c.disconnect(), done.set())
    mqttc.connect(host, port, keepalive=30)
    mqttc.loop_start()
    try:
        return 0 if done.wait(30) else 1
    finally:
        mqttc.loop_stop()


def collect(host: str, port: int, client_id: str, count: int, timeout: float) -> int:
    mqttc = client(client_id)
    got: list[str] = []
    state: dict[str, Any] = {}
    enough = threading.Event()

    def on_connect(_c: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        state["session_present"] = bool(flags.session_present)
        if rc.is_failure:
            enough.set()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        got.append(message.payload.decode(errors="replace"))
        if len(got) >= count:
            enough.set()

    mqttc.on_connect = on_connect
    mqttc.on_message = on_message
    mqttc.connect(host, port, keepalive=30)
    mqttc.loop_start()
    enough.wait(timeout)
    mqttc.disconnect()
    mqttc.loop_stop()
    print(json.dumps({"session_present": state.get("session_present"), "payloads": got}))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("subscribe")
    sub.add_argument("client_id")
    sub.add_argument("topic")
    col = commands.add_parser("collect")
    col.add_argument("client_id")
    col.add_argument("--count", type=int, required=True)
    col.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "subscribe":
        return subscribe(args.host, args.port, args.client_id, args.topic)
    return collect(args.host, args.port, args.client_id, args.count, args.timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
