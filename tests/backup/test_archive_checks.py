"""restore.sh checks an archive completely before it touches anything, and backup.sh and
restore.sh refuse bad arguments with their usage. No platform runs in these tests."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT

NAME = "iot-backup-local-20260102T030405Z"
MANIFEST = f"""# IoT platform backup
format: 1
name: {NAME}
mode: local
broker_mode: open
components: influxdb mysql mosquitto
started_at: 2026-01-02T03:04:05Z
host: test
seconds: 1.5
influxdb.bytes: 10
influxdb.version: InfluxDB v1.6.7
secrets: not included
"""
FILES = {
    "MANIFEST": MANIFEST.encode(),
    "influxdb/20260102T030405Z.manifest": b"{}",
    "mysql/iot_accounts.sql.gz": b"not really gzip",
    "mosquitto/mosquitto.db": b"\x00\x01",
}


def sums(files: dict[str, bytes]) -> bytes:
    return "".join(
        f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in sorted(files.items())
    ).encode()


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def archive(tmp_path: Path, files: dict[str, bytes] | None = None, checksums: bytes | None = None) -> Path:
    """An archive as backup.sh writes it (or changed as a test says)."""
    files = FILES if files is None else files
    members = {f"{NAME}/{p}": d for p, d in files.items()}
    members[f"{NAME}/SHA256SUMS"] = sums(files) if checksums is None else checksums
    return write_tar(tmp_path / f"{NAME}.tar", members)


def environment(tmp_path: Path) -> dict[str, str]:
    # A private state folder, and no Docker engine: local mode.
    return {
        **os.environ,
        "IOT_STATE_DIR": str(tmp_path / "state"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker-engine.sock",
        "TMPDIR": str(tmp_path),
    }


def script(tmp_path: Path, name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO_ROOT / name), *map(str, args)],
        env=environment(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def changed(**replace: bytes | None) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        files = {k: v for k, v in {**FILES, **replace}.items() if v is not None}
        return archive(tmp_path, files)

    return make


BAD_ARCHIVES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing", lambda t: t / "nothing-here.tar", "no such file"),
    ("not-a-tar", lambda t: (t / "x.tar").write_bytes(os.urandom(3000)) and t / "x.tar", "not a tar archive"),
    ("other-folder", lambda t: write_tar(t / "x.tar", {"photos/a.jpg": b"x"}), "not an archive of backup.sh"),
    (
        "second-folder",
        lambda t: write_tar(t / "x.tar", {f"{NAME}/MANIFEST": b"", "elsewhere/file": b""}),
        "holds paths outside",
    ),
    (
        "dot-dot",
        lambda t: write_tar(t / "x.tar", {f"{NAME}/MANIFEST": b"", f"{NAME}/../../escaped": b""}),
        "holds paths outside",
    ),
    ("no-manifest", changed(MANIFEST=None), "no MANIFEST or SHA256SUMS"),
    ("newer-format", changed(MANIFEST=MANIFEST.replace("format: 1", "format: 2").encode()), "format '2'"),
    (
        "damaged",
        lambda t: archive(t, checksums=sums({**FILES, "mosquitto/mosquitto.db": b"other bytes"})),
        "is damaged",
    ),
    (
        "unlisted-file",
        lambda t: archive(t, checksums=sums({"MANIFEST": FILES["MANIFEST"]})),
        "without a checksum",
    ),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in BAD_ARCHIVES], ids=[c[0] for c in BAD_ARCHIVES])
@pytest.mark.parametrize("action", ["--check", "-y"])
def test_a_bad_archive_is_refused_before_anything_is_touched(
    tmp_path: Path, make: Callable[[Path], Path], message: str, action: str
) -> None:
    done = script(tmp_path, "restore.sh", action, make(tmp_path))
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert not (tmp_path / "state").exists()
    # Its unpacking folder goes too.
    assert not list(tmp_path.glob("iot-restore.*"))


def test_check_shows_what_a_sound_archive_holds(tmp_path: Path) -> None:
    done = script(tmp_path, "restore.sh", "--check", archive(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "every checksum matches" in done.stdout
    assert "made 2026-01-02T03:04:05Z on test (local mode, broker open)" in done.stdout
    assert "influxdb: 10 B (InfluxDB v1.6.7)" in done.stdout
    assert not (tmp_path / "state").exists()


def test_an_archive_of_the_other_mode_is_refused(tmp_path: Path) -> None:
    swarm = changed(MANIFEST=MANIFEST.replace("mode: local", "mode: swarm").encode())(tmp_path)
    done = script(tmp_path, "restore.sh", "-y", swarm)
    assert done.returncode != 0
    assert "made in swarm mode, the platform here runs in local mode" in done.stderr


def test_secrets_of_an_archive_without_any_are_refused(tmp_path: Path) -> None:
    done = script(tmp_path, "restore.sh", "--secrets", archive(tmp_path))
    assert done.returncode != 0
    assert "holds no secrets" in done.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("restore.sh", [], "which archive?"),
        ("restore.sh", ["a.tar", "b.tar"], "only one ARCHIVE"),
        ("restore.sh", ["--timeout", "soon", "a.tar"], "--timeout needs a number"),
        ("restore.sh", ["--no-such-option"], "unknown option: --no-such-option"),
        ("backup.sh", ["one", "two"], "only one DIR"),
        ("backup.sh", ["--no-such-option"], "unknown option: --no-such-option"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, name: str, args: list[str], message: str) -> None:
    done = script(tmp_path, name, *args)
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("backup.sh", ["--with-secrets", "--local", "DIR"]),
        ("restore.sh", ["--check", "--secrets", "--yes", "--local", "--timeout"]),
    ],
)
def test_answers_help(tmp_path: Path, name: str, options: list[str]) -> None:
    for flag in ("--help", "-h"):
        done = script(tmp_path, name, flag)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"Usage: ./{name}")
        assert all(option in done.stdout for option in options)
