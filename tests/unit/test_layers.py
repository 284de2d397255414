"""The direction of imports: each package of gwc imports only the layers below it, with no cycles.

The rules are read off the source with ``ast`` (every import counts: module level, inside a function,
under ``TYPE_CHECKING``), so an upward import fails here the moment it is written, before it can
hide in a lazy import path. The layers, lowest first:

- ``gwc.runtime.bundle``: the contract between compiler and nodes; imports nothing else of gwc.
- ``gwc.runtime.protocol``, and the node's leaves ``metrics``, ``logs``, ``request_keys``: nothing;
  ``telemetry`` (tracing, a leaf too) → protocol.
- ``gwc.runtime.policy`` → bundle. ``gwc.runtime.audit`` → bundle, policy.
- ``gwc.runtime.identity``, ``gwc.runtime.governance``, ``gwc.runtime.upstream`` → the layers above;
  ``gwc.runtime.auth`` (the authorization server) → those and identity, governance.
- ``gwc.runtime.mcp`` and the node's HTTP APIs → any of those.
- ``gwc.runtime.app|cli|config`` (wiring a node) → anything in the runtime.
- ``gwc.compiler.build`` → bundle, policy; ``gwc.compiler.audit`` → bundle, policy, audit;
  ``gwc.compiler.client`` → build and the contract; ``gwc.compiler.cli`` → the compiler and the
  runtime's offline layers. The runtime never imports the compiler.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.support.repo import REPO

ROOTS = {"gwc.runtime": REPO / "runtime", "gwc.compiler": REPO / "compiler"}
BUNDLE, POLICY, AUDIT, PROTOCOL = ("gwc.runtime.bundle", "gwc.runtime.policy", "gwc.runtime.audit",
                                   "gwc.runtime.protocol")
TELEMETRY = "gwc.runtime.telemetry"
LEAVES = ("gwc.runtime.metrics", "gwc.runtime.logs", "gwc.runtime.request_keys", TELEMETRY)
BELOW_NODE = (BUNDLE, POLICY, AUDIT, PROTOCOL, *LEAVES)
SERVICES = ("gwc.runtime.identity", "gwc.runtime.governance", "gwc.runtime.upstream",
            "gwc.runtime.auth")
RUNTIME = ("gwc.runtime",)
OFFLINE = (BUNDLE, POLICY, AUDIT)

# unit (a package or module) -> the units it may import besides itself
ALLOWED: dict[str, tuple[str, ...]] = {
    **{root: () for root in ROOTS},  # the two roots' own __init__ (a module under them needs a rule)
    BUNDLE: (),
    PROTOCOL: (),
    **{leaf: () for leaf in LEAVES},
    TELEMETRY: (PROTOCOL,),  # its spans name a refusal by its reason
    POLICY: (BUNDLE,),
    AUDIT: (BUNDLE, POLICY),
    "gwc.runtime.identity": (BUNDLE, POLICY, PROTOCOL, *LEAVES),
    "gwc.runtime.governance": (BUNDLE, POLICY, AUDIT, PROTOCOL, *LEAVES),
    "gwc.runtime.upstream": (BUNDLE, POLICY, PROTOCOL, *LEAVES),
    "gwc.runtime.auth": (BUNDLE, POLICY, PROTOCOL, "gwc.runtime.identity", "gwc.runtime.governance",
                         *LEAVES),
    "gwc.runtime.mcp": (*BELOW_NODE, *SERVICES),
    "gwc.runtime.api": (*BELOW_NODE, *SERVICES),
    "gwc.runtime.app": RUNTIME,
    "gwc.runtime.cli": RUNTIME,
    "gwc.runtime.config": RUNTIME,
    "gwc.compiler.build": (BUNDLE, POLICY),
    "gwc.compiler.audit": OFFLINE,
    "gwc.compiler.client": ("gwc.compiler.build", BUNDLE),
    "gwc.compiler.cli": ("gwc.compiler", *OFFLINE),
}


def modules() -> dict[str, Path]:
    """Every module of the installed import root, by dotted name."""
    found = {}
    for root, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((root, *parts))] = path
    return found


def imports_of(name: str, source: str, known: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import of gwc in ``source``, relative ones resolved."""
    known = set(known)
    package = name if name in known and _is_package(name, known) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[:len(anchor) - node.level + 1] + ([base] if base else []))
            # `from gwc.x import y` imports module gwc.x.y when there is one, else a name of gwc.x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in ("gwc", "runtime", "compiler"):
                yield node.lineno, target


def _is_package(name: str, known: set[str]) -> bool:
    return any(other.startswith(name + ".") for other in known)


def unit_of(module: str) -> str:
    """The longest rule key that ``module`` falls under."""
    keys = [key for key in ALLOWED if module == key or (module.startswith(key + ".") and key not in ROOTS)]
    if not keys:
        raise AssertionError(f"{module} is in no layer: add it to ALLOWED in {Path(__file__).name}")
    return max(keys, key=len)


def violations(graph: dict[str, list[tuple[int, str]]], paths: dict[str, Path]) -> list[str]:
    found = []
    for module, edges in graph.items():
        unit = unit_of(module)
        for line, target in edges:
            where = f"{paths[module].relative_to(REPO)}:{line}"
            if not target.startswith("gwc."):
                found.append(f"{where}: imports {target!r}; the import root is gwc ({module})")
            elif not (target == unit or target.startswith(unit + ".") or any(
                    target == allowed or target.startswith(allowed + ".")
                    for allowed in ALLOWED[unit])):
                found.append(f"{where}: {unit} may not import {target}")
    return found


def cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    edges = {m: sorted({t for _, t in targets if t in graph and t != m}) for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def graph_of(paths: dict[str, Path]) -> dict[str, list[tuple[int, str]]]:
    return {name: list(imports_of(name, path.read_text(), paths)) for name, path in paths.items()}


def test_every_import_points_down() -> None:
    paths = modules()
    found = violations(graph_of(paths), paths)
    assert not found, "\n" + "\n".join(found)


def test_there_are_no_import_cycles() -> None:
    found = cycles(graph_of(modules()))
    assert not found, "\n" + "\n".join(" <-> ".join(group) for group in found)


# --- the checks above can fail ---------------------------------------------------------------

@pytest.mark.parametrize("module, source, expected", [
    ("gwc.runtime.bundle.read", "from gwc.runtime.metrics import Metrics\n",
     "gwc.runtime.bundle may not import gwc.runtime.metrics"),
    ("gwc.runtime.policy.decide", "def f():\n    from gwc.runtime.mcp import endpoint\n",
     "gwc.runtime.policy may not import gwc.runtime.mcp.endpoint"),
    ("gwc.runtime.audit.chain", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from gwc.runtime.app import Gateway\n", "gwc.runtime.audit may not import gwc.runtime.app"),
    ("gwc.compiler.build.compile", "from gwc.runtime.upstream.client import UpstreamClient\n",
     "gwc.compiler.build may not import gwc.runtime.upstream.client"),
    ("gwc.runtime.bundle.read", "from gwc.compiler.build import keys\n",
     "gwc.runtime.bundle may not import gwc.compiler.build.keys"),
    ("gwc.compiler.audit.query", "import runtime.audit.chain\n", "the import root is gwc"),
])
def test_an_upward_import_is_reported_with_file_and_line(module: str, source: str, expected: str) -> None:
    paths = modules()
    graph = graph_of(paths)
    before = violations(graph, paths)
    graph[module] = graph[module] + list(imports_of(module, source, paths))
    found = [line for line in violations(graph, paths) if line not in before]
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith(str(paths[module].relative_to(REPO)) + ":")


def test_a_cycle_is_found() -> None:
    paths = modules()
    graph = graph_of(paths)
    graph["gwc.runtime.bundle.format"] = [(1, "gwc.runtime.bundle.read")]  # read imports format
    assert ["gwc.runtime.bundle.format", "gwc.runtime.bundle.read"] in cycles(graph)
    graph["gwc.runtime.bundle.format"] = []
    assert ["gwc.runtime.bundle.format", "gwc.runtime.bundle.read"] not in cycles(graph)


def test_relative_imports_resolve_to_the_module_they_name() -> None:
    paths = modules()
    found = list(imports_of("gwc.runtime.policy.decide", "from ..bundle import format\n"
                            "from . import names\n", paths))
    assert found == [(1, "gwc.runtime.bundle.format"), (2, "gwc.runtime.policy.names")]


# --- what an offline command loads -------------------------------------------------------------

NODE = ("aiohttp", "prometheus_client")
# what signing in, the dev IdP, pinning, templates and bundle signatures bring: `gwc validate` needs none
ONLINE_AND_SIGNING = (*NODE, "authlib", "keyring", "httpx", "httpx2", "mcp", "jinja2", "jwt", "cryptography")


def loaded_by(statement: str, packages: tuple[str, ...] = NODE) -> list[str]:
    code = (f"import sys\n{statement}\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(packages)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return eval(proc.stdout.splitlines()[-1])  # a printed list of strings


def running(*argv: str) -> str:
    """A statement that runs ``gwc ARGV`` to a successful end, its output discarded."""
    return ("import contextlib, io\nfrom gwc.compiler.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main({list(argv)!r})\n"
            "    except SystemExit as exc:\n        assert exc.code == 0, exc.code")


@pytest.mark.parametrize("statement", [
    "import gwc.compiler.audit.query, gwc.compiler.audit.replay, gwc.compiler.audit.verify",
    "import gwc.compiler.build.registry, gwc.compiler.build.compile, gwc.compiler.build.bundle",
    "import gwc.compiler.cli",
])
def test_offline_tools_load_neither_aiohttp_nor_prometheus(statement: str) -> None:
    assert loaded_by(statement) == []


def test_the_offline_check_can_fail() -> None:
    assert loaded_by("import gwc.runtime.app") == ["aiohttp", "prometheus_client"]


@pytest.mark.parametrize("argv, absent", [
    (["validate", str(REPO)], ONLINE_AND_SIGNING),
    (["validate", "--format", "json", str(REPO)], ONLINE_AND_SIGNING),
    (["--help"], (*ONLINE_AND_SIGNING, "pydantic", "yaml")),
    (["session-key"], (*ONLINE_AND_SIGNING, "pydantic", "yaml")),
    (["approvals", "--help"], (*ONLINE_AND_SIGNING, "pydantic", "yaml")),
], ids=["validate", "validate-json", "help", "session-key", "approvals-help"])
def test_a_command_loads_only_what_it_uses(argv: list[str], absent: tuple[str, ...]) -> None:
    """Start-up time (bench/startup.py): `gwc validate` is pydantic, PyYAML and the checks."""
    assert loaded_by(running(*argv), absent) == []


def test_the_command_check_can_fail(tmp_path: Path) -> None:
    assert loaded_by(running("keygen", "--out", str(tmp_path / "signing")),
                     ONLINE_AND_SIGNING) == ["cryptography"]


def test_validate_builds_no_bundle_models() -> None:
    """The bundle's pydantic models cost `gwc validate` about 15 ms to build and it uses none."""
    code = running("validate", str(REPO)) + "\nimport sys\nprint('gwc.runtime.bundle.format' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"
