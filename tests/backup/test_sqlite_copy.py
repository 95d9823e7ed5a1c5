"""backup/sqlite_copy.py: a consistent copy of a SQLite database that another process keeps
writing (Grafana's, in the stack), run as backup.sh runs it (python3 -c SOURCE DATABASE)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT, wait_for

SOURCE = (REPO_ROOT / "backup" / "sqlite_copy.py").read_text()
BATCH = 50

# Another process, as Grafana is: every transaction adds BATCH rows and raises the total by
# BATCH, so any consistent moment of the database has count(rows) == total, a multiple of BATCH.
WRITER = textwrap.dedent(
    """
    import sqlite3, sys, pathlib
    db, mode, stop, batch_size = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), int(sys.argv[4])
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("PRAGMA synchronous=OFF")  # durability is not what this test is about
    conn.execute("CREATE TABLE IF NOT EXISTS rows (batch INTEGER, payload TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS total (n INTEGER)")
    conn.execute("INSERT INTO total SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM total)")
    batch = 0
    while not stop.exists():
        batch += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO rows VALUES (?, ?)", [(batch, "x" * 200)] * batch_size)
        conn.execute("UPDATE total SET n = n + ?", (batch_size,))
        conn.execute("COMMIT")
    """
)


def copy(database: Path, out: Path) -> subprocess.CompletedProcess[bytes]:
    with out.open("wb") as file:
        return subprocess.run(
            [sys.executable, "-c", SOURCE, str(database)],
            stdout=file,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )


def counts(database: Path) -> tuple[int, int]:
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (rows,) = conn.execute("SELECT count(*) FROM rows").fetchone()
        (total,) = conn.execute("SELECT n FROM total").fetchone()
        return rows, total
    finally:
        conn.close()


@pytest.fixture(params=["delete", "wal"])
def busy_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A database in either journal mode Grafana may use, written without pause."""
    database, stop = tmp_path / "grafana.db", tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(database), request.param, str(stop), str(BATCH)]
    )
    try:
        wait_for(lambda: database.exists() and counts_or_zero(database) >= 2 * BATCH, 30, "the writer")
        yield database
    finally:
        stop.touch()
        writer.wait(30)
    assert writer.returncode == 0, "the writer failed while the copies were made"


def counts_or_zero(database: Path) -> int:
    try:
        return counts(database)[0]
    except (sqlite3.Error, TypeError):
        return 0


def test_every_copy_is_one_consistent_moment_while_the_database_is_written(
    busy_database: Path, tmp_path: Path
) -> None:
    seen = []
    for n in range(5):
        out = tmp_path / f"copy{n}.db"
        done = copy(busy_database, out)
        assert done.returncode == 0, done.stderr.decode()
        rows, total = counts(out)
        assert rows == total and rows % BATCH == 0, (rows, total)
        seen.append(rows)
    # The writer went on between the copies, and each copy saw more of it.
    assert seen == sorted(seen) and seen[-1] > seen[0]


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda p: p / "missing.db", 1, "does not exist"),
        (lambda p: (p / "junk.db").write_bytes(b"not a database" * 100) and p / "junk.db", 1, "copying"),
    ],
    ids=["missing", "not-a-database"],
)
def test_a_source_that_cannot_be_copied_is_an_error(
    tmp_path: Path, make: Callable[[Path], Path], status: int, message: str
) -> None:
    out = tmp_path / "copy.db"
    done = copy(make(tmp_path), out)
    assert done.returncode == status
    assert message in done.stderr.decode()
    assert out.read_bytes() == b""  # nothing half-written reaches the archive


def test_usage_without_a_database() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SOURCE], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2 and "sqlite_copy.py DATABASE" in done.stderr
