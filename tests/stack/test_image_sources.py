"""Each project image holds every module its own modules import: the files its Dockerfile
COPYs from the build context run.sh gives it (`build_image NAME DOCKERFILE VAR PATH...`)
are put where the image puts them, and every one of them is imported from there alone, with
the image's Python packages."""

from __future__ import annotations

import glob
import re
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


def build_contexts() -> dict[str, list[str]]:
    """{Dockerfile: the paths run.sh puts into its build context}."""
    text = (REPO_ROOT / "run.sh").read_text(encoding="utf-8").replace("\\\n", " ")
    found = re.findall(r"^\s*build_image \S+ (\S+) \S+ (.+)$", text, re.M)
    return {dockerfile: paths.split() for dockerfile, paths in found}


def in_context(path: str, context: list[str]) -> bool:
    return any(path == entry or path.startswith(entry.rstrip("/") + "/") for entry in context)


def copy_as_the_image_does(dockerfile: str, app: Path) -> list[Path]:
    """The COPY instructions into the working directory, done into `app` from run.sh's build
    context of the image; the .py files copied."""
    context = build_contexts()[dockerfile]
    for line in (REPO_ROOT / dockerfile).read_text(encoding="utf-8").splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, dest = line.split()[1:]
        if dest.startswith("/"):
            continue  # outside the working directory (requirements read at build time)
        for source in sources:
            matches = [m for m in sorted(glob.glob(source, root_dir=REPO_ROOT)) if in_context(m, context)]
            assert matches, f"{dockerfile} copies {source}, which run.sh's build context {context} lacks"
            for found in matches:
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
