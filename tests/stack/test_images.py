"""Each project image holds every module its program imports.

The Dockerfiles copy only some of the repository's files (the auth server and the broker
exporter take a few of the adapter's modules). A new import between them then breaks only
the built image, at start, in the stack. Here each image's files are laid out as its COPY
lines put them, and its program is loaded from them alone, without Docker: Python's own
import of every module, with the test environment's packages standing in for the image's
pip installs."""

from __future__ import annotations

import glob
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT

IMAGES = ("adapter", "auth_server", "broker_exporter", "simulator")

# Runs in the image's layout: imports every module that any copied file imports (found by
# reading the files, so that no program starts), which imports the copied modules too.
CHECKER = """
import ast, importlib, pathlib, sys
app = pathlib.Path.cwd()
names = set()
for path in app.rglob("*.py"):
    package = ".".join(path.relative_to(app).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            names.add(base)
missing = []
for name in sorted(names):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name}: {exc}")
print("\\n".join(missing))
sys.exit(1 if missing else 0)
"""


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) of each line, continuation lines joined."""
    joined = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    result = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def lay_out(image: str, app: Path) -> None:
    """Copies what the image's COPY lines copy from the repository into `app` (its WORKDIR)."""
    for word, args in instructions(REPO_ROOT / image / "Dockerfile"):
        if word != "COPY":
            continue
        *sources, dest = [arg for arg in shlex.split(args) if not arg.startswith("--")]
        if dest.startswith("/"):
            continue  # outside the WORKDIR: requirement files for pip
        for source in sources:
            for path in map(Path, sorted(glob.glob(str(REPO_ROOT / source)))):
                if path.is_dir():  # Docker copies a folder's content
                    shutil.copytree(path, app / dest, dirs_exist_ok=True)
                    continue
                target = app / dest / path.name if dest.endswith("/") else app / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_holds_every_module_its_program_imports(image: str, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    lay_out(image, app)
    assert any(app.rglob("*.py")), f"{image}: its Dockerfile copies no Python file"
    # -I: neither the checkout nor PYTHONPATH is on sys.path; the image's WORKDIR is.
    script = f"import sys; sys.path.insert(0, {str(app)!r}); exec({CHECKER!r})"
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{image} lacks: {result.stdout.strip() or result.stderr.strip()}"
