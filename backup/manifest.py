"""Reads the MANIFEST of an archive of ./backup.sh ("key: value" lines; see backup/common.sh)."""

from __future__ import annotations

import tarfile
from pathlib import Path


def read_manifest(archive: Path) -> dict[str, str]:
    """The manifest's keys and values; comment lines left out."""
    with tarfile.open(archive) as tar:
        member = next(
            (m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/MANIFEST")), None
        )
        file = tar.extractfile(member) if member else None
        if file is None:
            raise ValueError(f"{archive}: no MANIFEST")
        text = file.read().decode()
    return dict(
        line.split(": ", 1) for line in text.splitlines() if ": " in line and not line.startswith("#")
    )
