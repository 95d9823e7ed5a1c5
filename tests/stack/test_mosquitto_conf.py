"""mosquitto_mqtt_vol/*.conf run by a real Mosquitto, with only their paths rewritten, and
the broker service's start-up script and health check from stack.yml run against them."""

from __future__ import annotations

import glob
import json
import os
import queue
import subprocess
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.mqtt_client import Publisher
from tests.servers import REPO_ROOT, MosquittoServer, ServerError, free_port, require_binary, wait_for

CONF_DIR = REPO_ROOT / "mosquitto_mqtt_vol"
RUN_BROKER = CONF_DIR / "run_broker.sh"
ADMIN = "iot-admin"
MESSAGE_SIZE_LIMIT = 262144  # the adapter's MAX_MESSAGE_BYTES default


def dynsec_plugin() -> str:
    found = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob(
        "/usr/lib/mosquitto_dynamic_security.so"
    )
    if not found:
        raise ServerError("mosquitto_dynamic_security.so is not installed (Debian package mosquitto)")
    return found[0]


class Paths:
    """Where a test's broker keeps what the stack keeps in its volumes and secrets."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.log = workdir / "log"
        self.secrets = workdir / "secrets"
        self.conf = workdir / "mosquitto.conf"
        for folder in (self.data, self.log, self.secrets):
            folder.mkdir(parents=True, exist_ok=True)

    def rewrite(self, text: str, port: int) -> str:
        """The container's paths and port replaced by this test's (nothing else changes)."""
        return (
            text.replace("/mosquitto/config/mosquitto.conf", str(self.conf))
            .replace("/mosquitto/config/mosquitto-open.acl", str(CONF_DIR / "mosquitto-open.acl"))
            .replace("/mosquitto/data/", f"{self.data}/")
            .replace("/mosquitto/log/", f"{self.log}/")
            .replace("/run/secrets/", f"{self.secrets}/")
            .replace("/usr/lib/mosquitto_dynamic_security.so", dynsec_plugin())
            .replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
            .replace("-p 1883 ", f"-p {port} ")
        )

    def config(self, name: str, port: int) -> str:
        text = self.rewrite((CONF_DIR / name).read_text(), port)
        # Started as root, mosquitto would switch to its own user, which cannot write into
        # pytest's private temporary folders (in the image, /mosquitto belongs to it).
        if os.geteuid() == 0:
            text += "user root\n"
        code_lines = [line for line in text.splitlines() if not line.startswith("#")]
        assert not any(" /mosquitto/" in line for line in code_lines), "a path was not rewritten"
        return text


class StackBroker(MosquittoServer):
    """Mosquitto started the way the stack's mqtt_broker service starts it: its
    entrypoint script from stack.yml, paths rewritten, ending in `exec mosquitto`."""

    def __init__(self, paths: Paths, conf_name: str, service: dict[str, Any]) -> None:
        port = free_port()
        super().__init__(paths.workdir, port=port, config_text=paths.config(conf_name, port))
        assert service["entrypoint"] == ["/bin/sh", "-ec"]
        script = paths.rewrite(service["command"][0], port)
        # The image's entrypoint only hands /mosquitto to its user; the log rotation script
        # is the repository's, mounted by the stack at /usr/local/bin/run_broker.sh.
        script = script.replace("/docker-entrypoint.sh /usr/local/bin/run_broker.sh", str(RUN_BROKER))
        self.script = script.replace("/usr/sbin/mosquitto", self.binary)
        assert (
            str(paths.conf) in self.script and self.binary in self.script and str(RUN_BROKER) in self.script
        )

    def command(self) -> list[str]:
        return ["/bin/sh", "-ec", self.script]


def health_check(service: dict[str, Any], paths: Paths, port: int) -> subprocess.CompletedProcess[str]:
    """The service's CMD-SHELL health check, run the way Docker runs it."""
    kind, command = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    return subprocess.run(
        ["/bin/sh", "-c", paths.rewrite(command, port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class Subscriber:
    """An MQTT 5 subscriber collecting (topic, payload) pairs; persistent when given a client id."""

    def __init__(
        self,
        port: int,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected: queue.Queue[int] = queue.Queue()
        self.subscribed: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"stacktest-{uuid.uuid4().hex}",
            protocol=mqtt.MQTTv5,
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc.value)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.put(mid)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300 if client_id else 0
        self.client.connect("127.0.0.1", port, clean_start=client_id is None, properties=props)
        self.client.loop_start()
        assert self.connected.get(timeout=10) == 0

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        self.subscribed.get(timeout=10)

    def take(self, count: int, timeout_s: float = 60.0) -> list[tuple[str, bytes]]:
        return [self.messages.get(timeout=timeout_s) for _ in range(count)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker_service(stack: dict[str, Any]) -> dict[str, Any]:
    return stack["services"]["mqtt_broker"]


@pytest.fixture
def default_broker(tmp_path: Path, broker_service: dict[str, Any]) -> Any:
    paths = Paths(tmp_path)
    server = StackBroker(paths, "mosquitto.conf", broker_service)
    server.start()
    yield server, paths
    server.stop()


def test_default_conf_lets_anonymous_clients_publish_and_subscribe(default_broker: Any) -> None:
    server, paths = default_broker
    topic = f"stacktest/{uuid.uuid4().hex}/RPi_1"
    subscriber = Subscriber(server.port)
    publisher = Publisher(server.port)
    try:
        subscriber.subscribe("#")  # any client may subscribe to everything
        publisher.publish(topic, b'{"BAT": 99}')
        publisher.wait(10)
        assert (topic, b'{"BAT": 99}') in subscriber.take(1)
    finally:
        publisher.close()
        subscriber.close()
    # The default mode never sets up the secure mode's accounts file.
    assert not (paths.data / "dynamic-security.json").exists()


def test_default_conf_refuses_only_the_topics_mqtt_reserves_for_the_broker(default_broker: Any) -> None:
    # `$` topics are invisible to `#`: retained messages there would stay in the broker's memory
    # where the adapter, which clears every retained message it sees, never sees them.
    server, _ = default_broker
    marker = f"stacktest/{uuid.uuid4().hex}"
    watcher = Subscriber(server.port)
    publisher = Subscriber(server.port)
    acks: queue.Queue[tuple[int, bool]] = queue.Queue()
    publisher.client.on_publish = lambda c, u, mid, rc, p: acks.put((mid, rc.is_failure))
    try:
        watcher.subscribe("$junk/#")
        watcher.subscribe("$SYS/broker/version")
        watcher.subscribe(f"{marker}/#")
        refused = publisher.client.publish("$junk/x", b"y" * 200_000, qos=1, retain=True)
        assert acks.get(timeout=10) == (refused.mid, True)  # MQTT 5 PUBACK "not authorized"
        accepted = publisher.client.publish(f"{marker}/ok", b"1", qos=1, retain=True)
        assert acks.get(timeout=10) == (accepted.mid, False)
        # The broker's own statistics still reach a subscriber (the health check reads one).
        topics = {topic for topic, _ in watcher.take(2)}
        assert topics == {"$SYS/broker/version", f"{marker}/ok"}
        late = Subscriber(server.port)
        late.subscribe("$junk/#")
        late.subscribe(f"{marker}/#")
        assert late.take(1) == [(f"{marker}/ok", b"1")]  # the retained one elsewhere is kept
        assert late.messages.empty()
        late.close()
    finally:
        publisher.close()
        watcher.close()


def test_default_conf_keeps_data_and_logs_in_the_volumes(default_broker: Any) -> None:
    server, paths = default_broker
    server.stop()
    assert (paths.data / "mosquitto.db").is_file(), "persistence goes to /mosquitto/data"
    assert "mosquitto version" in (paths.log / "mosquitto.log").read_text()
    assert "Error" not in server.log_text()


def test_queue_holds_the_adapters_backlog_while_it_is_away(default_broker: Any) -> None:
    # Mosquitto's default queue (1000 messages per client) would drop most of these.
    server, _ = default_broker
    prefix = f"stacktest/{uuid.uuid4().hex}"
    client_id = f"stacktest-adapter-{uuid.uuid4().hex}"
    away = Subscriber(server.port, client_id=client_id)
    away.subscribe(f"{prefix}/#")
    away.close()
    publisher = Publisher(server.port)
    try:
        publisher.publish_all((f"{prefix}/RPi_1", str(i).encode()) for i in range(5000))
        publisher.wait(60)
    finally:
        publisher.close()
    back = Subscriber(server.port, client_id=client_id)
    try:
        payloads = {int(payload) for _, payload in back.take(5000)}
    finally:
        back.close()
    assert payloads == set(range(5000))


def test_message_size_limit_drops_only_oversized_payloads(default_broker: Any) -> None:
    server, _ = default_broker
    prefix = f"stacktest/{uuid.uuid4().hex}"
    subscriber = Subscriber(server.port)
    publisher = Publisher(server.port)
    try:
        subscriber.subscribe(f"{prefix}/#")
        publisher.publish(f"{prefix}/fits", b"x" * MESSAGE_SIZE_LIMIT)
        publisher.publish(f"{prefix}/too_big", b"x" * (MESSAGE_SIZE_LIMIT + 1))
        publisher.publish(f"{prefix}/marker", b"end")
        # The oversized one is acknowledged too: the device is not stuck resending it.
        publisher.wait(10)
        received = [topic for topic, _ in subscriber.take(2)]
    finally:
        publisher.close()
        subscriber.close()
    assert received == [f"{prefix}/fits", f"{prefix}/marker"]


def test_health_check_passes_only_while_the_broker_answers(
    default_broker: Any, broker_service: dict[str, Any]
) -> None:
    server, paths = default_broker
    result = health_check(broker_service, paths, server.port)
    assert result.returncode == 0, result.stderr
    server.stop()
    assert health_check(broker_service, paths, server.port).returncode != 0


def test_secure_mode_admits_only_accounts(
    tmp_path: Path, broker_service: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = Paths(tmp_path)
    password = uuid.uuid4().hex
    (paths.secrets / "mqtt_admin_password").write_text(password)
    # The service's environment, which its start-up script and health check read.
    monkeypatch.setenv("MQTT_ADMIN_USERNAME", ADMIN)
    server = StackBroker(paths, "mosquitto-secure.conf", broker_service)
    server.start()
    try:
        # The start-up script created the plugin's state with the admin account.
        assert f'"username":\t"{ADMIN}"' in (paths.data / "dynamic-security.json").read_text()
        pub = require_binary("mosquitto_pub")
        anonymous = [pub, "-h", "127.0.0.1", "-p", str(server.port), "-q", "1", "-t", "UPB/RPi_1", "-m", "{}"]
        refused = subprocess.run(anonymous, capture_output=True, text=True, timeout=30, check=False)
        assert refused.returncode != 0
        assert "not authorised" in refused.stderr.lower()
        result = health_check(broker_service, paths, server.port)
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()

    # A restart keeps the accounts the auth server made: the file is not created again.
    state = (paths.data / "dynamic-security.json").read_text()
    (paths.secrets / "mqtt_admin_password").write_text("a-rotated-secret")
    server.start()
    try:
        assert (paths.data / "dynamic-security.json").read_text() == state
    finally:
        server.stop()


def code_lines(name: str) -> list[str]:
    return [
        line
        for line in (CONF_DIR / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_secure_conf_differs_only_in_access_control() -> None:
    access = ("allow_anonymous", "acl_file", "plugin", "plugin_opt_config_file")
    default = [line for line in code_lines("mosquitto.conf") if not line.startswith(access)]
    secure = [line for line in code_lines("mosquitto-secure.conf") if not line.startswith(access)]
    assert secure == default
    assert "allow_anonymous true" in code_lines("mosquitto.conf")
    assert "allow_anonymous false" in code_lines("mosquitto-secure.conf")
    assert "listener 1883" in default, "all addresses, the MQTT port"


def connect_and_leave(port: int, times: int) -> None:
    """Each connection and disconnection is a line in the broker's log (connection_messages)."""
    for _ in range(times):
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex
        )
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("conf_name", ["mosquitto.conf", "mosquitto-secure.conf"])
def test_log_file_is_rotated_by_size_and_the_broker_carries_on(
    tmp_path: Path, broker_service: dict[str, Any], monkeypatch: pytest.MonkeyPatch, conf_name: str
) -> None:
    paths = Paths(tmp_path)
    password = uuid.uuid4().hex
    (paths.secrets / "mqtt_admin_password").write_text(password)
    monkeypatch.setenv("MQTT_ADMIN_USERNAME", ADMIN)
    server = StackBroker(paths, conf_name, broker_service)
    settings = {k: str(v) for k, v in broker_service["environment"].items() if k.startswith("MOSQUITTO_LOG_")}
    # The stack's settings, then this test's small ones: 4 KiB files, checked every second.
    assert settings == {"MOSQUITTO_LOG_MAX_BYTES": "10485760", "MOSQUITTO_LOG_FILES": "4"}
    small = {
        "MOSQUITTO_LOG_MAX_BYTES": "4096",
        "MOSQUITTO_LOG_FILES": "2",
        "MOSQUITTO_LOG_CHECK_SECONDS": "1",
    }
    server.env = {**os.environ, **small}
    server.start()
    log = paths.log / "mosquitto.log"
    secure = conf_name != "mosquitto.conf"
    account = {"username": ADMIN, "password": password} if secure else {}
    # A session that must survive every rotation (SIGHUP reloads the configuration). In
    # secure mode the admin may only use the dynamic-security plugin's topics: its answer to
    # a command after the rotations shows that the plugin works as before.
    if secure:
        topic, payload = (
            "$CONTROL/dynamic-security/v1",
            json.dumps({"commands": [{"command": "listClients"}]}),
        )
        listen = f"{topic}/response"
    else:
        topic, payload = f"rotation/{uuid.uuid4().hex}", "after rotation"
        listen = topic
    try:
        subscriber = Subscriber(server.port, **account)
        subscriber.subscribe(listen)

        def rotated_twice() -> bool:
            # Log lines: anonymous clients connecting and leaving (refused in secure mode,
            # which is logged all the same).
            connect_and_leave(server.port, 10)
            return (paths.log / "mosquitto.log.2").exists()

        wait_for(rotated_twice, 60, "two rotations", server.proc, server.log_path)
        connect_and_leave(server.port, 100)  # and more: the oldest file is dropped, not kept
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 30, "a fresh log file", server.proc)
        files = sorted(p.name for p in paths.log.iterdir())
        assert files == ["mosquitto.log", "mosquitto.log.1", "mosquitto.log.2"]
        # Each rotated file was renamed just past the limit (lines of one check interval).
        for name in files[1:]:
            assert 4096 < (paths.log / name).stat().st_size < 64 * 1024, name
        assert "Reloading config." in log.read_text() + (paths.log / "mosquitto.log.1").read_text()
        publisher = Publisher(server.port, **account)
        try:
            publisher.publish(topic, payload)
            publisher.wait(10)
        finally:
            publisher.close()
        ((got_topic, got),) = subscriber.take(1)
        assert got_topic == listen
        assert (ADMIN.encode() in got) if secure else (got == payload.encode())
        subscriber.close()
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0, server.log_text()
    assert (paths.data / "mosquitto.db").is_file(), "a clean stop (SIGTERM passed on) saves the queue"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MOSQUITTO_LOG_MAX_BYTES": "10M"}, "MOSQUITTO_LOG_MAX_BYTES=10M must be a whole number"),
        ({"MOSQUITTO_LOG_FILES": "0"}, "MOSQUITTO_LOG_FILES >= 1"),
        ({"MOSQUITTO_LOG_MAX_BYTES": "100"}, "MOSQUITTO_LOG_MAX_BYTES >= 4096"),
        ({"MOSQUITTO_LOG_CHECK_SECONDS": "0.5"}, "MOSQUITTO_LOG_CHECK_SECONDS=0.5 must be a whole number"),
    ],
)
def test_run_broker_refuses_bad_settings(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [str(RUN_BROKER), str(tmp_path / "x.log"), "true"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
