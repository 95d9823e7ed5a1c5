"""mosquitto_mqtt_vol/*.conf run by a real Mosquitto, with only their paths rewritten, and
the broker service's start-up script and health check from stack.yml run against them; the
secure configuration's TLS listener with real clients that verify the certificate."""

from __future__ import annotations

import glob
import json
import os
import queue
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.cmdline import CommandLineRecorder, command_lines, leaks
from tests.mqtt_client import Publisher
from tests.secure_influx import DATABASE, SecureInflux
from tests.servers import (
    REPO_ROOT,
    AdapterProcess,
    MosquittoServer,
    ServerError,
    free_port,
    require_binary,
    wait_for,
)
from tests.stack.conftest import make_certificate

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
        # The secure configuration's TLS listener (8883 in the stack).
        self.tls_port = free_port()
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
            .replace("listener 8883\n", f"listener {self.tls_port} 127.0.0.1\n")
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
def broker_service(open_stack: dict[str, Any]) -> dict[str, Any]:
    return open_stack["services"]["mqtt_broker"]


@pytest.fixture(scope="module")
def secure_broker_service(secure_stack: dict[str, Any]) -> dict[str, Any]:
    return secure_stack["services"]["mqtt_broker"]


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


@pytest.fixture
def secure_paths(tmp_path: Path, tls_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """The secure broker's secrets, as stack.secure.yml mounts them: the admin's password and
    the TLS certificate and key run.sh made; its environment, which the start-up script and
    the health check read."""
    paths = Paths(tmp_path)
    (paths.secrets / "mqtt_admin_password").write_text(uuid.uuid4().hex)
    shutil.copy(tls_dir / "mqtt.crt", paths.secrets / "mqtt_tls_cert")
    shutil.copy(tls_dir / "mqtt.key", paths.secrets / "mqtt_tls_key")
    monkeypatch.setenv("MQTT_ADMIN_USERNAME", ADMIN)
    return paths


def admin_password(paths: Paths) -> str:
    return (paths.secrets / "mqtt_admin_password").read_text()


def test_secure_mode_admits_only_accounts(secure_paths: Paths, secure_broker_service: dict[str, Any]) -> None:
    paths = secure_paths
    server = StackBroker(paths, "mosquitto-secure.conf", secure_broker_service)
    server.start()
    try:
        # The start-up script created the plugin's state with the admin account.
        assert f'"username":\t"{ADMIN}"' in (paths.data / "dynamic-security.json").read_text()
        pub = require_binary("mosquitto_pub")
        anonymous = [pub, "-h", "127.0.0.1", "-p", str(server.port), "-q", "1", "-t", "UPB/RPi_1", "-m", "{}"]
        refused = subprocess.run(anonymous, capture_output=True, text=True, timeout=30, check=False)
        assert refused.returncode != 0
        assert "not authorised" in refused.stderr.lower()
        result = health_check(secure_broker_service, paths, server.port)
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


def test_the_admin_password_is_never_on_a_command_line(
    secure_paths: Paths, secure_broker_service: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any user of a swarm node can read every process's arguments (`ps`), the containers'
    included: the start-up script and the health check pass the password another way."""
    recorder = CommandLineRecorder(
        secure_paths.workdir / "recorded", ["mosquitto_ctrl", "mosquitto_sub", "cat"]
    )
    monkeypatch.setenv("PATH", recorder.env()["PATH"])
    # Where the health check's mktemp makes its options folder.
    temporary = secure_paths.workdir / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    server = StackBroker(secure_paths, "mosquitto-secure.conf", secure_broker_service)
    server.start()
    try:
        for _ in range(3):
            result = health_check(secure_broker_service, secure_paths, server.port)
            assert result.returncode == 0, result.stderr
        everything = [*recorder.lines(), *command_lines().values()]
    finally:
        server.stop()
    # A failing check still fails (its clean-up keeps mosquitto_sub's status).
    assert health_check(secure_broker_service, secure_paths, server.port).returncode != 0
    # The commands that handle the password did run, and were recorded...
    assert len(recorder.runs_of("mosquitto_ctrl")) == 1
    assert len(recorder.runs_of("mosquitto_sub")) == 4
    # ... the health check's options folders are gone...
    assert list(temporary.iterdir()) == []
    # ... and the password was never an argument.
    assert leaks(everything, [admin_password(secure_paths)]) == []


class TlsClient:
    """paho over TLS, verifying the broker's certificate against `ca` (and its name)."""

    def __init__(self, port: int, ca: Path, username: str, password: str, host: str = "127.0.0.1") -> None:
        self.connected: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"stacktest-tls-{uuid.uuid4().hex}",
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put(m.payload)
        self.client.connect(host, port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_tls_listener_proves_its_identity_to_clients_that_verify_it(
    secure_paths: Paths, secure_broker_service: dict[str, Any], tls_dir: Path, tmp_path: Path
) -> None:
    server = StackBroker(secure_paths, "mosquitto-secure.conf", secure_broker_service)
    server.start()
    other_ca = tmp_path / "other-ca"
    assert make_certificate(other_ca, "unused", "localhost").returncode == 0
    port = secure_paths.tls_port
    try:
        # Mosquitto's own client, verifying against the CA run.sh made: a real MQTT round trip.
        options = tmp_path / "client-options"
        options.mkdir()
        (options / "mosquitto_sub").write_text(f"-u {ADMIN}\n-P {admin_password(secure_paths)}\n")
        sub = [
            require_binary("mosquitto_sub"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            "$SYS/broker/uptime",
        ]
        sub += ["-C", "1", "-W", "10"]
        env = {**os.environ, "XDG_CONFIG_HOME": str(options)}

        def run(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*sub, *extra], env=env, capture_output=True, text=True, timeout=30, check=False
            )

        verified = run("--cafile", str(tls_dir / "ca.crt"))
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.endswith("seconds\n")
        wrong_ca = run("--cafile", str(other_ca / "ca.crt"))
        # The handshake fails on the client's verification (paho below names the reason).
        assert wrong_ca.returncode != 0
        assert "tls error" in wrong_ca.stderr.lower()
        assert wrong_ca.stdout == ""
        plain = run()  # no TLS at all on the TLS port
        assert plain.returncode != 0

        # paho, as devices and the simulator use it.
        good = TlsClient(port, tls_dir / "ca.crt", ADMIN, admin_password(secure_paths))
        try:
            assert good.connected.get(timeout=10) == 0
            good.client.subscribe("$SYS/broker/uptime")
            assert good.messages.get(timeout=10).endswith(b"seconds")
        finally:
            good.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            TlsClient(port, other_ca / "ca.crt", ADMIN, admin_password(secure_paths))
    finally:
        server.stop()


def test_tls_clients_refuse_a_certificate_for_other_names(
    secure_paths: Paths, secure_broker_service: dict[str, Any], tmp_path: Path
) -> None:
    # A certificate from the right CA, for another host: a client checking names refuses it.
    named = tmp_path / "named"
    assert make_certificate(named, "mqtt", "broker.invalid").returncode == 0
    shutil.copy(named / "mqtt.crt", secure_paths.secrets / "mqtt_tls_cert")
    shutil.copy(named / "mqtt.key", secure_paths.secrets / "mqtt_tls_key")
    server = StackBroker(secure_paths, "mosquitto-secure.conf", secure_broker_service)
    server.start()
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
            TlsClient(secure_paths.tls_port, named / "ca.crt", ADMIN, admin_password(secure_paths))
    finally:
        server.stop()


def code_lines(name: str) -> list[str]:
    return [
        line
        for line in (CONF_DIR / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_secure_conf_differs_only_in_access_control_and_tls() -> None:
    access = ("allow_anonymous", "acl_file", "plugin", "plugin_opt_config_file")
    tls = ["listener 8883", "certfile /run/secrets/mqtt_tls_cert", "keyfile /run/secrets/mqtt_tls_key"]
    tls.append("tls_version tlsv1.2")
    default = [line for line in code_lines("mosquitto.conf") if not line.startswith(access)]
    secure = [line for line in code_lines("mosquitto-secure.conf") if not line.startswith(access)]
    # The TLS listener, right after the plain one, with its certificate and key from secrets.
    at = secure.index("listener 8883")
    assert secure[at : at + len(tls)] == tls
    assert secure[:at] + secure[at + len(tls) :] == default
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
    tmp_path: Path,
    broker_service: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    conf_name: str,
    tls_dir: Path,
) -> None:
    paths = Paths(tmp_path)
    password = uuid.uuid4().hex
    (paths.secrets / "mqtt_admin_password").write_text(password)
    # The secure configuration's TLS listener needs its certificate and key.
    shutil.copy(tls_dir / "mqtt.crt", paths.secrets / "mqtt_tls_cert")
    shutil.copy(tls_dir / "mqtt.key", paths.secrets / "mqtt_tls_key")
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


def test_a_device_over_tls_reaches_the_authenticated_influxdb(
    *,
    secure_paths: Paths,
    secure_broker_service: dict[str, Any],
    tls_dir: Path,
    secure_influx: SecureInflux,
    make_adapter: Callable[..., AdapterProcess],
    tmp_path: Path,
) -> None:
    """The secure profile's data path: a device publishes over TLS (verifying the CA) with an
    account limited to its topic; the adapter reads the broker's plain internal listener and
    writes with its own InfluxDB user."""
    server = StackBroker(secure_paths, "mosquitto-secure.conf", secure_broker_service)
    server.start()
    station = f"tls_{uuid.uuid4().hex[:8]}"
    device, device_password = f"device-{station}", uuid.uuid4().hex
    adapter_user, adapter_password = f"adapter-{station}", uuid.uuid4().hex
    options = tmp_path / "ctrl-options"
    options.mkdir()
    (options / "mosquitto_ctrl").write_text(
        f"-h 127.0.0.1\n-p {server.port}\n-u {ADMIN}\n-P {admin_password(secure_paths)}\n"
    )

    def ctrl(*args: str, password: str | None = None) -> None:
        # mosquitto_ctrl asks a new client's password twice, on its standard input.
        result = subprocess.run(
            [require_binary("mosquitto_ctrl"), "dynsec", *args],
            input=f"{password}\n{password}\n" if password else None,
            env={**os.environ, "XDG_CONFIG_HOME": str(options)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    try:
        ctrl("createClient", device, password=device_password)
        ctrl("createRole", device)
        ctrl("addRoleACL", device, "publishClientSend", f"SEC/{station}", "allow")
        ctrl("addClientRole", device, device)
        ctrl("createClient", adapter_user, password=adapter_password)
        ctrl("createRole", adapter_user)
        ctrl("addRoleACL", adapter_user, "subscribePattern", "#", "allow")
        ctrl("addRoleACL", adapter_user, "publishClientReceive", "#", "allow")
        ctrl("addClientRole", adapter_user, adapter_user)
        (tmp_path / "adapter-mqtt-password").write_text(adapter_password)
        adapter = make_adapter(
            server,
            secure_influx.server,
            DATABASE,
            MQTT_USERNAME=adapter_user,
            MQTT_PASSWORD_FILE=str(tmp_path / "adapter-mqtt-password"),
            INFLUXDB_USERNAME="adapter",
            INFLUXDB_PASSWORD_FILE=str(secure_influx.accounts.file("adapter")),
        )
        client = TlsClient(secure_paths.tls_port, tls_dir / "ca.crt", device, device_password)
        try:
            assert client.connected.get(timeout=10) == 0
            sent = [
                client.client.publish(
                    f"SEC/{station}", json.dumps({"BAT": i, "timestamp": 1_700_000_000 + i}), qos=1
                )
                for i in range(20)
            ]
            # Outside its rights: acknowledged as "not authorized" (MQTT 5), stored nowhere.
            other = client.client.publish("SEC/someone-else", json.dumps({"BAT": 1}), qos=1)
            for info in (*sent, other):
                info.wait_for_publish(timeout=10)
        finally:
            client.close()
        wait_for(lambda: len(secure_influx.points(f"{station}.BAT")) == 20, 30, "20 points over TLS")
        assert secure_influx.points("someone-else.BAT") == []
        assert adapter.metric("adapter_messages_received_total") == 20
    finally:
        server.stop()
