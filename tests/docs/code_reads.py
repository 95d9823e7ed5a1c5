"""Which settings the code reads, found by parsing it: the environment variables of the
Python services (through `env.get`, `env_int`, `read_secret`...), the command-line options of
the simulator, and the settings of run.sh (`${X:-...}`, its indirect readers, and the
variables stack.yml interpolates that run.sh leaves to the user)."""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import REPO_ROOT

ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
# Names no component documents as its own setting: the environment Python itself reads.
_ENV_OBJECTS = ("env", "environ")


def _is_env(node: ast.AST) -> bool:
    """`env`, `os.environ` or `something.environ` used as the mapping of settings."""
    if isinstance(node, ast.Name):
        return node.id in _ENV_OBJECTS
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


@dataclass
class _Function:
    params: list[str]
    node: ast.FunctionDef
    # Parameter positions whose value names a secret: X is read as X and X_FILE.
    secret_params: set[int] = field(default_factory=set)


def _functions(modules: Iterable[ast.Module]) -> dict[str, _Function]:
    found: dict[str, _Function] = {}
    for module in modules:
        for node in ast.walk(module):
            if isinstance(node, ast.FunctionDef):
                found[node.name] = _Function([a.arg for a in node.args.args], node)
    # A function that reads f"{name}_FILE" makes `name` a secret; one that passes its own
    # parameter on to such a position does too (credentials → read_secret).
    changed = True
    while changed:
        changed = False
        for fn in found.values():
            for node in ast.walk(fn.node):
                positions: list[tuple[int, ast.AST]] = []
                if isinstance(node, ast.JoinedStr):
                    pairs = zip(node.values, node.values[1:], strict=False)
                    positions = [
                        (0, v.value)
                        for v, after in pairs
                        if isinstance(v, ast.FormattedValue)
                        and isinstance(after, ast.Constant)
                        and str(after.value).startswith("_FILE")
                    ]
                elif isinstance(node, ast.Call) and (callee := found.get(_callee(node) or "")):
                    positions = [(0, node.args[k]) for k in callee.secret_params if k < len(node.args)]
                for _, value in positions:
                    if isinstance(value, ast.Name) and value.id in fn.params:
                        k = fn.params.index(value.id)
                        if k not in fn.secret_params:
                            fn.secret_params.add(k)
                            changed = True
    return found


def _reads_in(node: ast.AST, functions: dict[str, _Function]) -> tuple[set[str], set[str]]:
    """The variables `node` reads directly, and the names of the functions it calls."""
    reads: set[str] = set()
    calls: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Subscript) and _is_env(sub.value) and isinstance(sub.slice, ast.Constant):
            reads.add(str(sub.slice.value))
        if not isinstance(sub, ast.Call):
            continue
        name = _callee(sub)
        if name:
            calls.add(name)
        direct = (
            isinstance(sub.func, ast.Attribute)
            and sub.func.attr in ("get", "getenv")
            and (
                _is_env(sub.func.value)
                or (isinstance(sub.func.value, ast.Name) and sub.func.value.id == "os")
            )
        )
        helper = any(_is_env(arg) for arg in sub.args)
        if not (direct or helper):
            continue
        secret = functions[name].secret_params if helper and name in functions else set()
        for k, arg in enumerate(sub.args):
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and ENV_NAME.fullmatch(arg.value):
                reads.add(arg.value)
                if k in secret:
                    reads.add(f"{arg.value}_FILE")
    return reads, calls


def python_env_reads(files: Iterable[Path], helpers: Iterable[Path] = ()) -> set[str]:
    """Every environment variable `files` read, directly or through the functions of
    `helpers` they call (the auth server reads the adapter's limits through its functions)."""
    own = [ast.parse(p.read_text(), str(p)) for p in files]
    shared = [ast.parse(p.read_text(), str(p)) for p in helpers]
    functions = _functions([*own, *shared])
    reads: set[str] = set()
    pending: set[str] = set()
    for module in own:
        r, c = _reads_in(module, functions)
        reads |= r
        pending |= c
    done: set[str] = set()
    own_names = {n.name for m in own for n in ast.walk(m) if isinstance(n, ast.FunctionDef)}
    while pending - done:
        name = (pending - done).pop()
        done.add(name)
        if name in functions and name not in own_names:
            r, c = _reads_in(functions[name].node, functions)
            reads |= r
            pending |= c
    return reads


def os_environ_uses(files: Iterable[Path]) -> list[str]:
    """`file:line` of each `os.environ` / `os.getenv` use: settings are read in one place."""
    uses = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and node.attr in ("environ", "getenv", "environb")
            ):
                uses.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return uses


def argparse_options(path: Path) -> set[str]:
    """The long options of every `add_argument("--x", ...)` in `path`."""
    options = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and _callee(node) == "add_argument":
            options.update(
                a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")
            )
    return options


# --- run.sh -------------------------------------------------------------------------------

_DEFAULTED = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::?[-=+?])")
_FUNCTION = re.compile(r"^([a-z_][a-z0-9_]*)\(\) \{$", re.M)
_INDIRECT = re.compile(r"\$\{!([a-z_][a-z0-9_]*)(?![\[\w])")
_ASSIGNED = re.compile(r"(?:^|[\s;(])(?:export |local |readonly )?\[?([A-Z][A-Z0-9_]*)\]?=", re.M)


def _shell_functions(text: str) -> dict[str, str]:
    """Each top-level function's body (up to the `}` in column 0)."""
    bodies = {}
    for match in _FUNCTION.finditer(text):
        end = text.find("\n}", match.end())
        bodies[match.group(1)] = text[match.end() : end]
    return bodies


@dataclass(frozen=True)
class IndirectReader:
    """A run.sh function that reads the variable named by one of its arguments."""

    function: str
    position: int  # 1-based, as $1
    prefix: str  # e.g. alert_setting ALERT_X reads IOT_ALERT_X


def indirect_readers(text: str) -> tuple[list[IndirectReader], dict[str, str]]:
    """run.sh's functions using `${!var}`: the positional ones, and the others by name
    (which the caller must account for, e.g. a family such as IOT_SECRET_<NAME>)."""
    readers, unknown = [], {}
    for name, body in _shell_functions(text).items():
        for var in set(_INDIRECT.findall(body)):
            match = re.search(rf"\b{var}=([A-Z_]*)\$\{{?(\d)\}}?(?![\w}}])", body)
            if match:
                readers.append(IndirectReader(name, int(match.group(2)), match.group(1)))
            else:
                unknown[name] = (
                    re.search(rf"\b{var}=(\S+)", body).group(1) if re.search(rf"\b{var}=", body) else var
                )
    return readers, unknown


def _shell_words(line: str) -> list[str]:
    """A command's arguments as the shell splits them ("InfluxDB HTTP" is one)."""
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote: a line continued on the next one
        return line.split()


def run_sh_settings(run_sh: Path, stack_files: Iterable[Path], sourced: Iterable[Path] = ()) -> set[str]:
    """The variables a user may set for run.sh: those it reads with a default, those its
    indirect readers are called with, and those the stack files interpolate that run.sh does
    not set itself, in run.sh and the scripts it sources (which use its readers). A family of
    names is returned as `PREFIX<NAME>`."""
    # Comments name variables in prose (`local_port_setting VARIABLE DEFAULT`): not reads.
    # Nor does the usage text (a here-document) show reads: `ADAPTER_REPLICAS=3 ...` there is an example.
    source = "\n".join(p.read_text() for p in (run_sh, *sourced))
    text = re.sub(r"^\s*#.*$", "", source, flags=re.M)
    text = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "\n", text, flags=re.S)
    settings = set(_DEFAULTED.findall(text))
    readers, families = indirect_readers(text)
    for reader in readers:
        for call in re.finditer(rf"(?:^|[\s$(]){reader.function} ([^\n]*)", text, re.M):
            words = [w.rstrip(")") for w in _shell_words(call.group(1))]
            if len(words) >= reader.position and ENV_NAME.fullmatch(words[reader.position - 1]):
                settings.add(reader.prefix + words[reader.position - 1])
    for function, assignment in families.items():
        family = re.match(r"([A-Z][A-Z0-9_]*_)\$", assignment)
        if not family:
            raise ValueError(
                f"run.sh's {function} reads ${{!...}} of {assignment}: cannot tell which variables"
            )
        settings.add(f"{family.group(1)}<NAME>")
    assigned = set(_ASSIGNED.findall(text))
    # export "${name^^}_HASH=..." sets a whole family, e.g. MQTT_TLS_CERT_HASH.
    suffixes = tuple(re.findall(r"\$\{\w+\^\^\}(_[A-Z0-9_]+)=", text))
    for stack_file in stack_files:
        for name in _DEFAULTED.findall(stack_file.read_text()):
            if name not in assigned and not (suffixes and name.endswith(suffixes)):
                settings.add(name)
    return settings
