"""Each project image holds every module its own modules import: the files its Dockerfile
COPYs (from the repository root, the build context) are put where the image puts them, and
every one of them is imported from there alone, with the image's Python packages."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT

DOCKERFILES = [
    "adapter/Dockerfile",
    "auth_server/Dockerfile",
    "simulator/Dockerfile",
    "broker_exporter/Dockerfile",
]


def copy_as_the_image_does(dockerfile: str, app: Path) -> list[Path]:
    """The COPY instructions into the working directory, done into `app`; the .py files copied."""
    for line in (REPO_ROOT / dockerfile).read_text(encoding="utf-8").splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, dest = line.split()[1:]
        if dest.startswith("/"):
            continue  # outside the working directory (requirements read at build time)
        for source in sources:
            for found in sorted(glob.glob(source, root_dir=REPO_ROOT)):
                origin = REPO_ROOT / found
                target = app / dest / origin.name if dest.endswith("/") else app / dest
                if origin.is_dir():
                    shutil.copytree(origin, app / dest, dirs_exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target)
    return sorted(app.rglob("*.py"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_module_the_image_holds_imports_from_the_image_alone(dockerfile: str, tmp_path: Path) -> None:
    modules = [
        ".".join(path.relative_to(tmp_path).with_suffix("").parts)
        for path in copy_as_the_image_does(dockerfile, tmp_path)
        if path.name != "__main__.py" and "tests" not in path.parts
    ]
    assert modules, f"{dockerfile} copies no Python module"
    # -I: no PYTHONPATH, no user site, not the script's folder; the copied files come first.
    script = (
        f"import sys, importlib; sys.path.insert(0, {str(tmp_path)!r})\n"
        f"for m in {modules!r}: importlib.import_module(m)"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
