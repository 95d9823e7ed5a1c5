"""run.sh's certificates for the secure profile, made by the real openssl: a private CA once,
server certificates signed by it, your own certificates used as they are, safe to re-run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers import require_binary
from tests.stack.conftest import make_certificate, run_sh_function


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("openssl"), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file: (content, mode, modification time in ns)."""
    return {
        path.name: (path.read_bytes(), path.stat().st_mode & 0o777, path.stat().st_mtime_ns)
        for path in sorted(directory.iterdir())
    }


def extension(cert: Path, name: str) -> str:
    return openssl("x509", "-in", cert, "-noout", "-ext", name).stdout


def test_makes_a_ca_and_server_certificates_it_signs(tmp_path: Path) -> None:
    made = make_certificate(tmp_path, "mqtt", "mqtt.example.com", "localhost", "127.0.0.1", "10.0.0.5")
    assert made.returncode == 0, made.stderr
    assert "Creating a private certificate authority" in made.stdout
    kong = make_certificate(tmp_path, "kong", "api.example.com")
    assert kong.returncode == 0, kong.stderr
    assert "certificate authority" not in kong.stdout  # the same CA signs both
    files = snapshot(tmp_path)
    assert {name: mode for name, (_, mode, _) in files.items()} == {
        "ca.crt": 0o644,
        "ca.key": 0o600,
        "kong.crt": 0o644,
        "kong.key": 0o600,
        "mqtt.crt": 0o644,
        "mqtt.key": 0o600,
    }
    for server in ("mqtt", "kong"):
        verified = openssl(
            "verify", "-CAfile", tmp_path / "ca.crt", "-purpose", "sslserver", tmp_path / f"{server}.crt"
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    names = extension(tmp_path / "mqtt.crt", "subjectAltName")
    for name in ("DNS:mqtt.example.com", "DNS:localhost", "IP Address:127.0.0.1", "IP Address:10.0.0.5"):
        assert name in names
    assert "CA:TRUE" in extension(tmp_path / "ca.crt", "basicConstraints")
    assert "CA:FALSE" in extension(tmp_path / "mqtt.crt", "basicConstraints")
    assert "TLS Web Server Authentication" in extension(tmp_path / "mqtt.crt", "extendedKeyUsage")
    # The private keys are nowhere but in their files.
    assert "PRIVATE KEY" not in made.stdout + made.stderr + kong.stdout + kong.stderr


def test_running_again_changes_nothing(tmp_path: Path) -> None:
    assert make_certificate(tmp_path, "mqtt", "localhost").returncode == 0
    before = snapshot(tmp_path)
    again = make_certificate(tmp_path, "mqtt", "localhost", "another.example.com")
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert snapshot(tmp_path) == before


def test_your_own_certificate_is_used_as_it_is(tmp_path: Path) -> None:
    # A certificate from somewhere else (here another CA), given with its key: no private CA
    # is made, the files are not touched, and they pass the check run.sh does.
    elsewhere = tmp_path / "elsewhere"
    assert make_certificate(elsewhere, "mqtt", "mqtt.example.com").returncode == 0
    given = tmp_path / "tls"
    given.mkdir()
    for name in ("mqtt.crt", "mqtt.key"):
        shutil.copy2(elsewhere / name, given / name)
    before = snapshot(given)
    used = make_certificate(given, "mqtt", "localhost")
    assert used.returncode == 0, used.stderr
    assert snapshot(given) == before
    checked = run_sh_function(f"tls_check_pair {given} mqtt")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == ""


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("key of another", "is not the key of"),
        ("no key", "has only one of mqtt.crt and mqtt.key"),
        ("not a certificate", "is not a PEM certificate"),
    ],
)
def test_refuses_a_broken_pair(tmp_path: Path, damage: str, message: str) -> None:
    assert make_certificate(tmp_path / "a", "mqtt", "localhost").returncode == 0
    assert make_certificate(tmp_path / "b", "mqtt", "localhost").returncode == 0
    pair = tmp_path / "a"
    if damage == "key of another":
        shutil.copy2(tmp_path / "b" / "mqtt.key", pair / "mqtt.key")
    elif damage == "no key":
        (pair / "mqtt.key").unlink()
    else:
        (pair / "mqtt.crt").write_text("-----BEGIN NOTHING-----\n")
    result = run_sh_function(f"tls_make_server_cert {pair} mqtt localhost && tls_check_pair {pair} mqtt")
    assert result.returncode != 0
    assert message in result.stderr


def test_warns_when_a_certificate_expires_soon(tmp_path: Path) -> None:
    assert make_certificate(tmp_path, "mqtt", "localhost").returncode == 0
    # A short-lived certificate from the same CA, as a given one might be.
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=short",
        "-keyout", tmp_path / "short.key", "-out", tmp_path / "short.csr",
    )  # fmt: skip
    signed = openssl(
        "x509", "-req", "-in", tmp_path / "short.csr", "-out", tmp_path / "short.crt",
        "-CA", tmp_path / "ca.crt", "-CAkey", tmp_path / "ca.key", "-days", "10", "-set_serial", "7",
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    checked = run_sh_function(f"tls_check_pair {tmp_path} short")
    assert checked.returncode == 0, checked.stderr
    assert "short.crt expires within 30 days" in checked.stdout


def test_default_names_and_refused_ones() -> None:
    names = run_sh_function("tls_default_names", {"IOT_TLS_NAMES": "mqtt.example.com, 192.0.2.7,,localhost"})
    assert names.returncode == 0, names.stderr
    listed = names.stdout.split()
    assert listed[:2] == ["localhost", "127.0.0.1"]
    assert {"mqtt.example.com", "192.0.2.7"} <= set(listed)
    assert len(listed) == len(set(listed))
    refused = run_sh_function("tls_alt_names 'bad name' localhost")
    assert refused.returncode != 0
    assert "'bad name' is not a host name or an IP address" in refused.stderr
    assert run_sh_function("tls_alt_names a.example 10.1.2.3 ::1").stdout.strip() == (
        "DNS:a.example,IP:10.1.2.3,IP:::1"
    )
