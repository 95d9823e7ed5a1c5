"""Who could read a secret from a process list: the command lines of real processes.

Any user of a machine can read every process's /proc/<pid>/cmdline (that is what `ps`
shows), containers' processes included, so a password must never be an argument. Two
ways to look, because short-lived commands (a health check, a set-up step) come and go
between two scans:
- `CommandLineRecorder`: a folder of shims put first on PATH; each named program, when
  started, appends its own /proc/self/cmdline to a log and execs the real program with
  the same arguments, so every run is recorded, however short;
- `command_lines()`: the /proc/*/cmdline of every process running now (long-lived ones).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tests.servers import require_binary


def command_lines() -> dict[int, str]:
    """{pid: its command line, arguments joined by spaces} of every process we may read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if raw:
            found[int(entry.name)] = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    return found


def leaks(lines: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """The command lines holding any of the secrets (each secret at least 8 characters,
    so that a match cannot be a coincidence)."""
    wanted = [s for s in secrets if s]
    assert all(len(s) >= 8 for s in wanted), "too short to tell a leak from chance"
    return [line for line in lines if any(s in line for s in wanted)]


class CommandLineRecorder:
    """Shims for `programs` in `workdir/bin`; `env()` puts them first on PATH."""

    def __init__(self, workdir: Path, programs: Iterable[str]) -> None:
        self.bin = workdir / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "cmdlines.log"
        self.log.touch()
        for name in programs:
            real = require_binary(name)
            shim = self.bin / name
            # The shim's own command line is `/bin/sh <shim> <arguments...>`: the arguments
            # the real program gets from the exec, unchanged. One write per record (O_APPEND),
            # so that programs started together never mix their lines.
            shim.write_text(
                "#!/bin/sh\n"
                f"printf '%s\\n' \"$(tr '\\000' ' ' </proc/$$/cmdline)\" >>'{self.log}'\n"
                f'exec {real} "$@"\n'
            )
            shim.chmod(0o755)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin}:{env.get('PATH', '')}"
        return env

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]

    def runs_of(self, name: str) -> list[str]:
        """The recorded command lines of one program."""
        shim = str(self.bin / name)
        return [line for line in self.lines() if line.split(" ", 2)[1:2] == [shim]]
