"""Loading a registry repo: discover its files, parse and validate each, run the semantic checks.

The result is a :class:`Registry` holding the validated models, the files they came from (for
positions and the source digest) and every diagnostic found; nothing stops at the first error.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from compiler import checks
from compiler.diagnostics import Diagnostic
from compiler.models import GatewayConfig, PolicyRule, ServerManifest
from compiler.schema_errors import validate
from compiler.sources import SourceFile, load_source

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
POLICY_SUFFIXES = (".yaml", ".yml")
GLOBAL_POLICY_DIR = "global"
_RULE = TypeAdapter(PolicyRule)


@dataclass
class ServerEntry:
    manifest: ServerManifest
    source: SourceFile


@dataclass
class RuleEntry:
    rule: PolicyRule
    source: SourceFile
    index: int  # position in its file's list
    folder: str  # the policies/<folder>/ it lives in: a team name or "global"

    @property
    def rule_id(self) -> str:
        return self.rule.id or f"{self.source.rel}#{self.index}"

    @property
    def where(self) -> str:
        return f"{self.source.rel}:{self.source.position((self.index,))[0]}"


@dataclass
class Registry:
    root: Path
    gateway: GatewayConfig | None = None
    gateway_source: SourceFile | None = None
    jwks: dict[str, Any] | None = None  # embedded from identity.jwks_file
    servers: dict[str, ServerEntry] = field(default_factory=dict)
    rules: list[RuleEntry] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # rel path -> bytes, for the digest
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    def source_digest(self) -> str:
        """SHA-256 over every input file (path and content), independent of the serial."""
        h = hashlib.sha256()
        for rel in sorted(self.files):
            h.update(rel.encode() + b"\0" + hashlib.sha256(self.files[rel]).digest())
        return "sha256:" + h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read(registry: Registry, path: Path) -> SourceFile | None:
    rel = _rel(path, registry.root)
    source, diags = load_source(path, rel)
    registry.diagnostics.extend(diags)
    if source is not None:  # None only on a syntax error; duplicate keys still get checked
        registry.files[rel] = source.text.encode("utf-8")
    return source


def _load_gateway(registry: Registry) -> None:
    path = registry.root / "gateway.yaml"
    if not path.is_file():
        registry.diagnostics.append(Diagnostic(
            "gateway.yaml", 1, 1, "error", "missing-file",
            "gateway.yaml not found at the registry root (identity settings are required)"))
        return
    source = _read(registry, path)
    if source is None:
        return
    registry.gateway_source = source
    registry.gateway, diags = validate(source, GatewayConfig, source.data)
    registry.diagnostics.extend(diags)
    if registry.gateway is not None:
        registry.diagnostics.extend(checks.check_gateway(registry.gateway, source))
        _embed_jwks(registry, registry.gateway, source)


def _embed_jwks(registry: Registry, gateway: GatewayConfig, source: SourceFile) -> None:
    """A jwks_file is compiled into the bundle, so the signature covers the IdP keys too."""
    name = gateway.identity.jwks_file
    if name is None:
        return
    loc = ("identity", "jwks_file")
    path = (registry.root / name).resolve()
    if not path.is_relative_to(registry.root.resolve()):
        registry.diagnostics.append(source.diag(loc, "jwks", f"jwks_file {name!r} is outside the registry"))
        return
    try:
        raw = path.read_bytes()
        jwks = json.loads(raw)
    except OSError as exc:
        registry.diagnostics.append(source.diag(loc, "jwks", f"cannot read jwks_file {name!r}: "
                                                             f"{exc.strerror or exc}"))
        return
    except ValueError:
        registry.diagnostics.append(source.diag(loc, "jwks", f"jwks_file {name!r} is not JSON"))
        return
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        registry.diagnostics.append(source.diag(
            loc, "jwks", f"jwks_file {name!r} is not a JWK Set (expected an object with a non-empty 'keys' list)"))
        return
    registry.files[_rel(path, registry.root.resolve())] = raw
    registry.jwks = jwks


def _load_manifests(registry: Registry) -> None:
    folder = registry.root / "registry"
    if not folder.is_dir():
        registry.diagnostics.append(Diagnostic("registry", 1, 1, "error", "missing-file",
                                               "registry/ folder not found at the registry root"))
        return
    first_seen: dict[str, ServerEntry] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file()):
        source = _read(registry, path)
        if source is None:
            continue
        manifest, diags = validate(source, ServerManifest, source.data)
        registry.diagnostics.extend(diags)
        if manifest is None:
            continue
        registry.diagnostics.extend(checks.check_manifest(manifest, source, path.stem))
        previous = first_seen.get(manifest.name)
        if previous is not None:
            line = previous.source.position(("name",))[0]
            registry.diagnostics.append(source.diag(
                ("name",), "duplicate-server",
                f"server '{manifest.name}' is already defined in {previous.source.rel}:{line}"))
            continue
        first_seen[manifest.name] = ServerEntry(manifest, source)
    registry.servers = first_seen


def _load_policies(registry: Registry) -> None:
    folder = registry.root / "policies"
    if not folder.is_dir():
        return
    for path in sorted(p for p in folder.rglob("*") if p.suffix in POLICY_SUFFIXES and p.is_file()):
        parts = path.relative_to(folder).parts
        source = _read(registry, path)
        if source is None:
            continue
        if len(parts) < 2:
            registry.diagnostics.append(source.diag(
                (), "policy-layout", "policy files live in policies/<team>/ or policies/global/"))
            continue
        data = source.data if source.data is not None else []
        if not isinstance(data, list):
            registry.diagnostics.append(source.diag((), "schema", "a policy file is a list of rules"))
            continue
        for index, item in enumerate(data):
            rule, diags = validate(source, _RULE, item, (index,))
            registry.diagnostics.extend(diags)
            if rule is not None:
                registry.rules.append(RuleEntry(rule, source, index, parts[0]))


def load_registry(root: Path) -> Registry:
    """Load and check everything under ``root``; inspect ``.diagnostics`` / ``.ok`` for the verdict."""
    registry = Registry(root=root)
    _load_gateway(registry)
    _load_manifests(registry)
    _load_policies(registry)
    registry.diagnostics.extend(checks.check_rules(registry.rules, registry.servers))
    return registry
