"""backup/dynsec_password.py against a real Mosquitto with the dynamic-security plugin: after a
restore the broker admin logs in with the deployment's password, every other client with its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.auth_server.test_mqtt_secure import DYNSEC_ADMIN, Device, secure_config
from tests.servers import REPO_ROOT, MosquittoServer, free_port, require_binary

SOURCE = (REPO_ROOT / "backup" / "dynsec_password.py").read_text()


def rebind(path: Path, username: str, password: str) -> subprocess.CompletedProcess[str]:
    # As restore.sh runs it in its helper container: the program as -c, the password on stdin.
    return subprocess.run(
        [sys.executable, "-c", SOURCE, str(path), username],
        input=password,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ctrl(port: int, password: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("mosquitto_ctrl"), "-h", "127.0.0.1", "-p", str(port), "-u", DYNSEC_ADMIN,
         "-P", password, "dynsec", *command],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def accepted(port: int, username: str, password: str) -> bool:
    device = Device(port, username, password)
    try:
        return device.accepted
    finally:
        device.close()


def test_the_admin_takes_the_new_password_and_every_client_keeps_its_own(tmp_path: Path) -> None:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    plugin_file = workdir / "dynamic-security.json"
    subprocess.run(
        [
            require_binary("mosquitto_ctrl"),
            "dynsec",
            "init",
            str(plugin_file),
            DYNSEC_ADMIN,
            "backup-admin-pw",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    broker = MosquittoServer(workdir, port=port, config_text=secure_config(port, workdir))
    broker.start()
    try:
        created = ctrl(port, "backup-admin-pw", "createClient", "device-7", "-p", "device-7-pw")
        assert created.returncode == 0, created.stderr
        assert accepted(port, "device-7", "device-7-pw")
    finally:
        broker.stop()
    os.chmod(plugin_file, 0o600)

    done = rebind(plugin_file, DYNSEC_ADMIN, "deployment-admin-pw")
    assert done.returncode == 0, done.stderr
    assert plugin_file.stat().st_mode & 0o777 == 0o600
    assert not list(workdir.glob("*.restore"))

    broker.start()
    try:
        assert accepted(port, DYNSEC_ADMIN, "deployment-admin-pw")
        assert not accepted(port, DYNSEC_ADMIN, "backup-admin-pw")
        assert accepted(port, "device-7", "device-7-pw")
        # Still the plugin's admin, with its role: it administers the restored clients.
        listed = ctrl(port, "deployment-admin-pw", "listClients")
        assert listed.returncode == 0 and "device-7" in listed.stdout, listed.stderr
    finally:
        broker.stop()


CLIENTS = {"clients": [{"username": "iot-admin", "password": "x", "salt": "y", "iterations": 101}]}
BAD_INPUT: list[tuple[str, Callable[[Path], Path], str, str, int, str]] = [
    ("no-such-client", lambda p: p, "someone-else", "pw", 1, "has no client 'someone-else'"),
    ("not-json", lambda p: p.write_text("{not json") and p, "iot-admin", "pw", 1, "dynamic-security.json"),
    (
        "no-clients",
        lambda p: p.write_text('{"roles": []}') and p,
        "iot-admin",
        "pw",
        1,
        "not a dynamic-security",
    ),
    ("missing-file", lambda p: p.with_name("gone.json"), "iot-admin", "pw", 1, "gone.json"),
    ("no-password", lambda p: p, "iot-admin", "", 2, "no password on stdin"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_changes_nothing(
    tmp_path: Path, case: tuple[str, Callable[[Path], Path], str, str, int, str]
) -> None:
    _, make, username, password, status, message = case
    original = tmp_path / "dynamic-security.json"
    original.write_text(json.dumps(CLIENTS))
    path = make(original)
    before = original.read_text()
    done = rebind(path, username, password)
    assert done.returncode == status
    assert message in done.stderr
    assert original.read_text() == before
