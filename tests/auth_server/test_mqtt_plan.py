"""The broker commands planned for one account: only what differs, since every change to a
client or its role disconnects it."""

from __future__ import annotations

from auth_server.mqtt_sync import (
    MANAGED_MARK,
    describe,
    device_client_id,
    plan_client,
    plan_role,
    publish_acls,
)
from auth_server.policy import Account, Permission, Role

ROLE = "iot-device:dev"


def test_rights_become_publish_acls() -> None:
    account = Account(
        id=1,
        username="dev",
        role=Role.DEVICE,
        enabled=True,
        token_key=None,
        permissions=(
            Permission("UPB", "RPi_1", read=True, write=True),
            Permission("UPB", "*", read=False, write=True),
            Permission("*", "*", read=True, write=False),  # read only: no publish right
        ),
    )
    assert account.mqtt_publish_topics() == ["UPB/+", "UPB/RPi_1"]
    assert publish_acls(account.mqtt_publish_topics()) == [
        {"acltype": "publishClientSend", "topic": "UPB/+", "allow": True},
        {"acltype": "publishClientSend", "topic": "UPB/RPi_1", "allow": True},
    ]


def test_missing_role_and_client_are_created() -> None:
    acls = publish_acls(["UPB/RPi_1"])
    assert plan_role(ROLE, None, acls) == [
        {"command": "createRole", "rolename": ROLE, "textdescription": MANAGED_MARK, "acls": acls}
    ]
    commands = plan_client("dev", None, ROLE, enabled=False, password="secret-pw")
    assert [c["command"] for c in commands] == ["createClient", "disableClient"]
    assert commands[0]["password"] == "secret-pw"
    assert commands[0]["roles"] == [{"rolename": ROLE}]
    assert "password" not in plan_client("dev", None, ROLE, enabled=True, password=None)[0]


def test_nothing_is_sent_when_the_broker_already_agrees() -> None:
    acls = publish_acls(["UPB/RPi_1"])
    # As the plugin reports them: with priorities, in its own order.
    existing_role = {"rolename": ROLE, "acls": [{**acls[0], "priority": -1}]}
    existing_client = {"username": "dev", "roles": [{"rolename": ROLE}], "groups": []}
    assert plan_role(ROLE, existing_role, acls) == []
    assert plan_client("dev", existing_client, ROLE, enabled=True, password=None) == []


def test_differences_are_fixed() -> None:
    existing_role = {"rolename": ROLE, "acls": publish_acls(["UPB/old"])}
    assert [c["command"] for c in plan_role(ROLE, existing_role, publish_acls(["UPB/new"]))] == ["modifyRole"]
    wrong_roles = {"username": "dev", "roles": [{"rolename": "admin"}], "disabled": True}
    commands = plan_client("dev", wrong_roles, ROLE, enabled=True, password="pw-12345678")
    assert [c["command"] for c in commands] == ["modifyClient", "setClientPassword", "enableClient"]
    assert commands[0]["roles"] == [{"rolename": ROLE}] and commands[0]["groups"] == []
    enabled = {"username": "dev", "roles": [{"rolename": ROLE}]}
    assert [c["command"] for c in plan_client("dev", enabled, ROLE, enabled=False, password=None)] == [
        "disableClient"
    ]


def test_commands_are_logged_without_passwords() -> None:
    command = {"command": "setClientPassword", "username": "dev", "password": "pw-12345678"}
    assert describe(command) == "setClientPassword dev"


def test_a_device_is_bound_to_its_own_client_id() -> None:
    create = plan_client("dev", None, ROLE, enabled=True, password="pw", clientid="dev")
    assert create[0]["clientid"] == "dev"
    unbound = {"username": "dev", "roles": [{"rolename": ROLE}]}
    assert plan_client("dev", unbound, ROLE, enabled=True, password=None, clientid="dev") == [
        {"command": "setClientId", "username": "dev", "clientid": "dev"}
    ]
    other = {**unbound, "clientid": "someone-else"}
    assert [c["command"] for c in plan_client("dev", other, ROLE, True, None, clientid="dev")] == [
        "setClientId"
    ]
    bound = {**unbound, "clientid": "dev"}
    assert plan_client("dev", bound, ROLE, enabled=True, password=None, clientid="dev") == []
    # Without a client id to bind (the adapter: one account for all its replicas) it is left alone.
    assert plan_client("adapter", other, ROLE, enabled=True, password=None) == []
    assert device_client_id("rpi-1") == "rpi-1"
