"""Secure MQTT mode: keeps Mosquitto's dynamic-security plugin in step with the accounts in MySQL.

Each device account is a broker client with one role, `iot-device:<username>`, whose ACLs allow
publishing to exactly the `<location>/<station>` topics the account may write (`*` → `+`), and
bound to one MQTT client id, its username: nobody can connect with another account's client
id, so no device takes over the adapter's session or another device's. The adapter has its
own client and role, allowed to subscribe to `#` and to clear retained messages. Commands are
JSON published to `$CONTROL/dynamic-security/v1` as the plugin's admin; answers come back on
`.../response`. The plugin itself disconnects live sessions when a client is deleted or
disabled, its password or client id changes, or its role's ACLs change (Mosquitto 2.0
`mosquitto_kick_client_by_username`).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from auth_server.config import AuthConfig

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEVICE_ROLE_PREFIX = "iot-device:"
ADAPTER_ROLE = "iot-adapter"
BROKER_EXPORTER_ROLE = "iot-broker-exporter"
# Written into the clients we create, so a later reconcile knows which ones are ours to delete.
MANAGED_MARK = "managed by the IoT auth server"
# A command is at most a few hundred bytes (topics are short); 50 stay far below 256 KiB.
COMMANDS_PER_MESSAGE = 50

Command = dict[str, Any]


class MqttSyncError(RuntimeError):
    """The broker could not be reached, refused the admin login, or refused a command."""


def device_role(username: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{username}"


def device_client_id(username: str) -> str:
    """The one MQTT client id a device account may connect with: its username. One id per
    account (the plugin binds at most one), chosen so a device needs no new setting."""
    return username


def publish_acls(topics: Iterable[str]) -> list[dict[str, Any]]:
    return [{"acltype": "publishClientSend", "topic": t, "allow": True} for t in sorted(set(topics))]


# The adapter reads every device topic (`#`, also behind `$share/<group>/`); receiving is listed
# too, in case an operator sets the default for publishClientReceive to deny. It publishes an
# empty retained message wherever a device left a retained one, which deletes it.
ADAPTER_ACLS = [
    {"acltype": "subscribePattern", "topic": "#", "allow": True},
    {"acltype": "publishClientReceive", "topic": "#", "allow": True},
    {"acltype": "publishClientSend", "topic": "#", "allow": True},
]


# The broker metrics exporter reads the broker's statistics and nothing else.
BROKER_EXPORTER_ACLS = [
    {"acltype": "subscribePattern", "topic": "$SYS/#", "allow": True},
    {"acltype": "publishClientReceive", "topic": "$SYS/#", "allow": True},
]


def _acl_key(acls: Iterable[dict[str, Any]]) -> set[tuple[str, str, bool]]:
    return {(a["acltype"], a["topic"], bool(a.get("allow", False))) for a in acls}


def plan_role(rolename: str, existing: dict[str, Any] | None, acls: list[dict[str, Any]]) -> list[Command]:
    """Commands that make role `rolename` hold exactly `acls` (none when it already does:
    changing a role disconnects every client that has it)."""
    if existing is None:
        return [
            {"command": "createRole", "rolename": rolename, "textdescription": MANAGED_MARK, "acls": acls}
        ]
    if _acl_key(existing.get("acls", [])) != _acl_key(acls):
        return [{"command": "modifyRole", "rolename": rolename, "acls": acls}]
    return []


def plan_client(
    username: str,
    existing: dict[str, Any] | None,
    rolename: str,
    enabled: bool,
    password: str | None,
    *,
    clientid: str | None = None,
) -> list[Command]:
    """Commands that make client `username` have exactly role `rolename`, the given enabled
    state and, when given, the password and the one MQTT client id it may connect with (None:
    left as it is). The plugin stores no plaintext we could compare, so a password is only
    sent when the account's password is being set."""
    if existing is None:
        create: Command = {
            "command": "createClient",
            "username": username,
            "textdescription": MANAGED_MARK,
            "roles": [{"rolename": rolename}],
        }
        if password is not None:
            create["password"] = password
        if clientid is not None:
            create["clientid"] = clientid
        commands = [create]
        if not enabled:
            commands.append({"command": "disableClient", "username": username})
        return commands
    commands = []
    roles = {r.get("rolename") for r in existing.get("roles", [])}
    if roles != {rolename} or existing.get("groups"):
        commands.append(
            {
                "command": "modifyClient",
                "username": username,
                "textdescription": MANAGED_MARK,
                "roles": [{"rolename": rolename}],
                "groups": [],
            }
        )
    if clientid is not None and existing.get("clientid") != clientid:
        commands.append({"command": "setClientId", "username": username, "clientid": clientid})
    if password is not None:
        commands.append({"command": "setClientPassword", "username": username, "password": password})
    disabled = bool(existing.get("disabled", False))
    if enabled and disabled:
        commands.append({"command": "enableClient", "username": username})
    elif not enabled and not disabled:
        commands.append({"command": "disableClient", "username": username})
    return commands


def describe(command: Command) -> str:
    """A command for the log: its name and target, never its password."""
    target = command.get("username") or command.get("rolename") or ""
    return f"{command['command']} {target}".strip()


class DynsecConnection:
    """One MQTT connection as the plugin's admin: send commands, wait for their answers."""

    def __init__(self, host: str, port: int, username: str, password: str, timeout_s: float = 5.0) -> None:
        self._host = host
        self._port = port
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._answered = threading.Event()
        self._connect_rc: ReasonCode | None = None
        self._pending: dict[str, dict[str, Any] | None] = {}
        # A unique client id: several threads or replicas may administer the broker at once.
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"auth-server-{uuid.uuid4().hex[:16]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def __enter__(self) -> Self:
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise MqttSyncError(f"MQTT broker {self._host}:{self._port} unreachable: {exc}") from exc
        self._client.loop_start()
        try:
            if not self._connected.wait(self._timeout_s):
                raise MqttSyncError(f"no CONNACK from the MQTT broker {self._host}:{self._port}")
            if self._connect_rc is None or self._connect_rc.is_failure:
                raise MqttSyncError(
                    f"the MQTT broker refused the dynamic-security admin login ({self._connect_rc}); "
                    "check MQTT_ADMIN_USERNAME / MQTT_ADMIN_PASSWORD"
                )
            self._client.subscribe(RESPONSE_TOPIC, qos=1)
            if not self._subscribed.wait(self._timeout_s):
                raise MqttSyncError("no SUBACK for the dynamic-security response topic")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._connect_rc = rc
        self._connected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        if all(not rc.is_failure for rc in rcs):
            self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload).get("responses", [])
        except (ValueError, AttributeError):
            log.warning("unreadable message on %s ignored", RESPONSE_TOPIC)
            return
        with self._lock:
            for response in responses:
                key = response.get("correlationData") if isinstance(response, dict) else None
                if key in self._pending:
                    self._pending[key] = response
            if self._pending and all(v is not None for v in self._pending.values()):
                self._answered.set()

    def run(self, commands: Sequence[Command]) -> list[dict[str, Any]]:
        """Send the commands, in order; their answers, in the same order."""
        answers: list[dict[str, Any]] = []
        # Several commands per message, but not so many that a reconcile of many accounts
        # exceeds the broker's message_size_limit.
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            answers += self._run_batch(commands[start : start + COMMANDS_PER_MESSAGE])
        return answers

    def _run_batch(self, commands: Sequence[Command]) -> list[dict[str, Any]]:
        keys = [uuid.uuid4().hex for _ in commands]
        with self._lock:
            self._pending = dict.fromkeys(keys)
            self._answered.clear()
        payload = {"commands": [{**c, "correlationData": k} for c, k in zip(commands, keys, strict=True)]}
        self._client.publish(CONTROL_TOPIC, json.dumps(payload), qos=1)
        if not self._answered.wait(self._timeout_s):
            raise MqttSyncError(
                "the dynamic-security plugin did not answer; is it loaded by the broker "
                "(plugin + plugin_opt_config_file in mosquitto.conf)?"
            )
        with self._lock:
            answers = [self._pending[k] or {} for k in keys]
            self._pending = {}
        return answers

    def run_checked(self, commands: Sequence[Command], tolerate: Iterable[str] = ()) -> list[dict[str, Any]]:
        """run(), raising MqttSyncError for any answer with an error not in `tolerate`."""
        allowed = set(tolerate)
        answers = self.run(commands)
        for command, answer in zip(commands, answers, strict=True):
            error = answer.get("error")
            if error and error not in allowed:
                raise MqttSyncError(f"broker refused {describe(command)}: {error}")
            if not error and command["command"] not in ("getClient", "getRole", "listClients", "listRoles"):
                log.info("mqtt: %s", describe(command))
        return answers


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the broker must know about one device account."""

    username: str
    enabled: bool
    topics: tuple[str, ...]


@dataclass(slots=True)
class ReconcileReport:
    commands: list[str] = field(default_factory=list)
    without_password: list[str] = field(default_factory=list)


class MqttAccountSync:
    """Applies account changes to the broker and reconciles everything at start."""

    def __init__(self, config: AuthConfig, timeout_s: float = 5.0) -> None:
        self._config = config
        self._timeout_s = timeout_s

    def connect(self) -> DynsecConnection:
        c = self._config
        assert c.mqtt_admin_username and c.mqtt_admin_password  # checked by AuthConfig.from_env
        return DynsecConnection(
            c.mqtt_host, c.mqtt_port, c.mqtt_admin_username, c.mqtt_admin_password, self._timeout_s
        )

    def apply_device(self, device: DeviceState, password: str | None = None) -> None:
        """Create or update one device's client and role; `password` when it is being set."""
        rolename = device_role(device.username)
        with self.connect() as conn:
            client_answer, role_answer = conn.run_checked(
                [
                    {"command": "getClient", "username": device.username},
                    {"command": "getRole", "rolename": rolename},
                ],
                tolerate=("Client not found", "Role not found"),
            )
            client = client_answer.get("data", {}).get("client")
            role = role_answer.get("data", {}).get("role")
            commands = plan_role(rolename, role, publish_acls(device.topics))
            commands += plan_client(
                device.username,
                client,
                rolename,
                device.enabled,
                password,
                clientid=device_client_id(device.username),
            )
            conn.run_checked(commands)

    def remove_device(self, username: str) -> None:
        """Delete the device's client (which disconnects it) and its role."""
        with self.connect() as conn:
            conn.run_checked(
                [
                    {"command": "deleteClient", "username": username},
                    {"command": "deleteRole", "rolename": device_role(username)},
                ],
                tolerate=("Client not found", "Role not found"),
            )

    def login_works(self, username: str, password: str) -> bool:
        """Whether the broker accepts these credentials (a short connection of our own)."""
        outcome: list[ReasonCode] = []
        done = threading.Event()

        def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            outcome.append(rc)
            done.set()

        probe = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"auth-server-probe-{uuid.uuid4().hex[:16]}",
            protocol=mqtt.MQTTv311,
        )
        probe.username_pw_set(username, password)
        probe.on_connect = on_connect
        try:
            probe.connect(self._config.mqtt_host, self._config.mqtt_port, keepalive=10)
        except OSError as exc:
            raise MqttSyncError(f"MQTT broker unreachable: {exc}") from exc
        probe.loop_start()
        try:
            if not done.wait(self._timeout_s):
                raise MqttSyncError("no CONNACK from the MQTT broker")
            return not outcome[0].is_failure
        finally:
            probe.disconnect()
            probe.loop_stop()

    def reconcile(self, devices: Sequence[DeviceState]) -> ReconcileReport:
        """Make the broker's clients and roles match MySQL: the adapter's (and the broker
        exporter's) account, one client and role per device account, and nothing left of
        deleted accounts."""
        c = self._config
        assert c.adapter_mqtt_username and c.adapter_mqtt_password
        report = ReconcileReport()
        reserved = c.reserved_usernames
        with self.connect() as conn:
            clients_answer, roles_answer = conn.run_checked(
                [
                    {"command": "listClients", "verbose": True, "count": -1, "offset": 0},
                    {"command": "listRoles", "verbose": True, "count": -1, "offset": 0},
                ]
            )
            clients = {x["username"]: x for x in clients_answer.get("data", {}).get("clients", [])}
            roles = {x["rolename"]: x for x in roles_answer.get("data", {}).get("roles", [])}

            # The adapter and the broker exporter: their passwords are known, but only sent when
            # the broker rejects them, since setting a password disconnects the client.
            services = [(c.adapter_mqtt_username, c.adapter_mqtt_password, ADAPTER_ROLE, ADAPTER_ACLS)]
            if c.broker_exporter_mqtt_username and c.broker_exporter_mqtt_password:
                services.append(
                    (
                        c.broker_exporter_mqtt_username,
                        c.broker_exporter_mqtt_password,
                        BROKER_EXPORTER_ROLE,
                        BROKER_EXPORTER_ACLS,
                    )
                )
            commands: list[Command] = []
            for username, secret, rolename, acls in services:
                commands += plan_role(rolename, roles.get(rolename), acls)
                existing = clients.get(username)
                password: str | None = secret
                if existing is not None and self.login_works(username, secret):
                    password = None
                commands += plan_client(username, existing, rolename, True, password)

            wanted: set[str] = set()
            for device in devices:
                if device.username in reserved:
                    log.error(
                        "device account %r has the name of a reserved broker account; "
                        "it gets no MQTT access until renamed",
                        device.username,
                    )
                    continue
                wanted.add(device.username)
                rolename = device_role(device.username)
                commands += plan_role(rolename, roles.get(rolename), publish_acls(device.topics))
                existing = clients.get(device.username)
                if existing is None:
                    report.without_password.append(device.username)
                commands += plan_client(
                    device.username,
                    existing,
                    rolename,
                    device.enabled,
                    None,
                    clientid=device_client_id(device.username),
                )

            # Clients and roles we created for accounts that no longer exist (or are admins now).
            for username, client in clients.items():
                if username in wanted or username in reserved:
                    continue
                ours = client.get("textdescription") == MANAGED_MARK or any(
                    r.get("rolename", "").startswith(DEVICE_ROLE_PREFIX) for r in client.get("roles", [])
                )
                if ours:
                    commands.append({"command": "deleteClient", "username": username})
            for rolename in roles:
                if (
                    rolename.startswith(DEVICE_ROLE_PREFIX)
                    and rolename[len(DEVICE_ROLE_PREFIX) :] not in wanted
                ):
                    commands.append({"command": "deleteRole", "rolename": rolename})

            conn.run_checked(commands)
            report.commands = [describe(x) for x in commands]
        for username in report.without_password:
            log.warning(
                "device %r had no MQTT client; it was created without a password (MySQL keeps only "
                "a hash). Set the account's password again (PATCH /api/accounts/%s) to enable MQTT.",
                username,
                username,
            )
        return report
