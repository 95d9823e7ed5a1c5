"""Each project image holds every module its program imports.

run.sh sends each image build only some of the repository's files as its context, and the
Dockerfiles copy only some of those (the auth server and the broker exporter take a few of
the adapter's modules). A new import between them then breaks only the built image: at
build time, or at start in the stack. Here each image's context is made from run.sh's
`build_image` line, its files are laid out as its COPY lines put them, and every module is
imported from them alone, without Docker, with the test environment's packages standing in
for the image's pip installs."""

from __future__ import annotations

import glob
import re
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


def build_contexts() -> dict[str, list[str]]:
    """Dockerfile -> the paths run.sh sends as its build context (`build_image NAME
    DOCKERFILE VARIABLE PATH...`)."""
    script = (REPO_ROOT / "run.sh").read_text(encoding="utf-8").replace("\\\n", " ")
    calls = re.findall(r"^\s*build_image\s+(\S+)\s+(\S+)\s+(\S+)\s+(.+)$", script, re.MULTILINE)
    return {dockerfile: paths.split() for _, dockerfile, _, paths in calls}


def make_context(image: str, context: Path) -> None:
    for relative in build_contexts()[f"{image}/Dockerfile"]:
        source, target = REPO_ROOT / relative, context / relative
        assert source.exists(), f"run.sh sends {relative}, which does not exist"
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)


def lay_out(context: Path, image: str, app: Path) -> None:
    """Copies what the image's COPY lines copy from its build context into `app` (its WORKDIR)."""
    for word, args in instructions(context / image / "Dockerfile"):
        if word != "COPY":
            continue
        *sources, dest = [arg for arg in shlex.split(args) if not arg.startswith("--")]
        if dest.startswith("/"):
            continue  # outside the WORKDIR: requirement files for pip
        for source in sources:
            found = sorted(glob.glob(str(context / source)))
            assert found, f"{image}/Dockerfile copies {source}, which run.sh leaves out of its build context"
            for path in map(Path, found):
                if path.is_dir():  # Docker copies a folder's content
                    shutil.copytree(path, app / dest, dirs_exist_ok=True)
                    continue
                target = app / dest / path.name if dest.endswith("/") else app / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_holds_every_module_its_program_imports(image: str, tmp_path: Path) -> None:
    context, app = tmp_path / "context", tmp_path / "app"
    app.mkdir()
    make_context(image, context)
    lay_out(context, image, app)
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
