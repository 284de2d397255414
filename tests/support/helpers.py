"""Small builders for throw-away registries, payloads and bundles used across the test modules."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from gwc.compiler.build.compile import compile_registry
from gwc.compiler.build.diagnostics import Diagnostic
from gwc.compiler.build.locks import LOCK_SUFFIX, lock_path, render_lock
from gwc.compiler.build.registry import Registry, load_registry
from gwc.compiler.cli import main
from gwc.runtime.bundle.format import BundlePayload

GATEWAY: dict[str, Any] = {
    "identity": {"issuer": "https://idp.example", "audience": "gwc",
                 "jwks_uri": "https://idp.example/.well-known/jwks.json"},
}


def manifest(name: str = "svc", owner: str = "team-a", **fields: Any) -> dict[str, Any]:
    """A valid manifest: one read tool and one write tool that requires approval."""
    doc: dict[str, Any] = {
        "name": name, "owner": owner, "upstream": f"https://{name}.internal/mcp",
        "visibility": [f"team:{owner}"],
        "tools": {"read_it": {"access": "read"},
                  "write_it": {"access": "write", "approval": "required"}},
    }
    doc.update(fields)
    return doc


def rule(server: str = "svc", *, group: str | None = None, team: str | None = None,
         user: str | None = None, agent: str | None = None, action: Any = "read",
         tool: Any = None, effect: str | None = None, conditions: dict | None = None,
         id: str | None = None) -> dict[str, Any]:
    """A policy rule; exactly one of group/team/user/agent (group 'g' when none is given)."""
    subject = {k: v for k, v in (("group", group), ("team", team), ("user", user), ("agent", agent))
               if v is not None} or {"group": "g"}
    out: dict[str, Any] = {}
    if id is not None:
        out["id"] = id
    out["subject"] = subject
    out["resource"] = {"server": server, **({"tool": tool} if tool is not None else {})}
    out["action"] = action
    if effect is not None:
        out["effect"] = effect
    if conditions is not None:
        out["conditions"] = conditions
    return out


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _write(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    elif path.suffix == ".json":
        path.write_text(json.dumps(content, indent=2) + "\n")
    else:
        path.write_text(dump(content))


def write_registry(root: Path, *, gateway: Any = GATEWAY,
                   manifests: dict[str, Any] | None = None,
                   policies: dict[str, Any] | None = None) -> Path:
    """Write gateway.yaml, registry/<file> and policies/<relpath> under ``root``.

    Values are either documents (dumped as YAML, or JSON for *.json) or raw text. ``gateway=None``
    leaves gateway.yaml out; by default there is one valid manifest, registry/svc.yaml.
    """
    root.mkdir(parents=True, exist_ok=True)
    if gateway is not None:
        _write(root / "gateway.yaml", copy.deepcopy(gateway) if not isinstance(gateway, str) else gateway)
    for name, content in (manifests if manifests is not None else {"svc.yaml": manifest()}).items():
        _write(root / "registry" / name, content)
    (root / "registry").mkdir(exist_ok=True)
    for rel, content in (policies or {}).items():
        _write(root / "policies" / rel, content)
    return root


def unpin_tool(root: Path, server: str, tool: str) -> None:
    """Take ``tool`` out of the server's lock file, as ``gwc pin`` does once it is undeclared."""
    path = lock_path(root, server)
    tools = json.loads(path.read_text())["tools"]
    del tools[tool]
    path.write_text(render_lock(server, tools))


def unpin_all(root: Path) -> Path:
    """The registry at ``root`` as before tool contracts: no lock files, no gateway-wide pin
    requirement (for tests about registries that pin nothing, or pin only what they write)."""
    for lock in (root / "registry").glob(f"*{LOCK_SUFFIX}"):
        lock.unlink()
    gateway = yaml.safe_load((root / "gateway.yaml").read_text())
    gateway.pop("tool_contracts", None)
    (root / "gateway.yaml").write_text(dump(gateway))
    return root


def diagnostics(root: Path) -> list[Diagnostic]:
    return sorted(load_registry(root).diagnostics)


def with_code(diags: list[Diagnostic], code: str) -> list[Diagnostic]:
    return [d for d in diags if d.code == code]


def errors(diags: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diags if d.is_error]


def load_ok(root: Path) -> Registry:
    registry = load_registry(root)
    assert registry.ok, [str(d) for d in registry.errors]
    return registry


def compile_root(root: Path, serial: int = 1, revision: str = "test") -> BundlePayload:
    return compile_registry(load_ok(root), serial, revision)


def gwc(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the gwc CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
