"""Writes a consistent copy of a live SQLite database (Grafana's) to stdout.

    python3 backup/sqlite_copy.py DATABASE > copy.db

backup.sh runs it in a helper container beside the running Grafana, whose image has neither
Python nor the sqlite3 tool. SQLite's online backup API copies the database under SQLite's own
locking, in one step: the copy is the database of one moment, whatever Grafana writes
meanwhile (a plain file copy could interleave pages of two transactions). The copy is checked
with `PRAGMA integrity_check` before a byte of it is written out.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

# How long to wait for a writer's lock before giving up (Grafana's transactions are short).
BUSY_TIMEOUT_S = 30.0


class CopyError(RuntimeError):
    """The source could not be read, or its copy is not a sound database."""


def copy_database(source: Path, destination: Path) -> None:
    """A consistent copy of `source` (which another process may be writing) at `destination`."""
    if not source.is_file():
        raise CopyError(f"{source} does not exist (has the service ever started?)")
    # Read-only: the copy never changes the source, not even by rolling back a journal.
    src = sqlite3.connect(f"{source.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        dst = sqlite3.connect(destination)
        try:
            src.backup(dst)
            (result,) = dst.execute("PRAGMA integrity_check").fetchone()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise CopyError(f"copying {source}: {exc}") from exc
    finally:
        src.close()
    if result != "ok":
        raise CopyError(f"the copy of {source} fails SQLite's integrity check: {result}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        copy = Path(work) / "copy.db"
        try:
            copy_database(Path(argv[0]), copy)
        except CopyError as exc:
            print(f"sqlite_copy: {exc}", file=sys.stderr)
            return 1
        with copy.open("rb") as file:
            shutil.copyfileobj(file, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
