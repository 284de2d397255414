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

from gwc.compiler.build import checks, contracts
from gwc.compiler.build.diagnostics import Diagnostic
from gwc.compiler.build.entries import RuleEntry, ServerEntry
from gwc.compiler.build.locks import is_lock
from gwc.compiler.build.models import GatewayConfig, PolicyRule, ServerManifest
from gwc.compiler.build.schema_errors import validate
from gwc.compiler.build.sources import ResolvedTags, SourceFile, load_source

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
POLICY_SUFFIXES = (".yaml", ".yml", ".json")
_RULE = TypeAdapter(PolicyRule)


@dataclass
class Registry:
    root: Path
    gateway: GatewayConfig | None = None
    jwks: dict[str, Any] | None = None  # embedded from identity.jwks_file
    jwks_rel: str | None = None  # that file, relative to the root
    servers: dict[str, ServerEntry] = field(default_factory=dict)
    rules: list[RuleEntry] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # rel path -> bytes, for the digest
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # YAML tags resolved while loading this registry's files (a memo, not a module-global cache)
    resolved_tags: ResolvedTags = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    def input_paths(self) -> list[str]:
        """Every path that feeds the bundle, relative to the root (git pathspecs)."""
        return ["gateway.yaml", "registry", "policies", *([self.jwks_rel] if self.jwks_rel else [])]

    def source_digest(self) -> str:
        """SHA-256 over every input file (path and content), independent of the serial."""
        h = hashlib.sha256()
        for rel in sorted(self.files):
            h.update(rel.encode() + b"\0" + hashlib.sha256(self.files[rel]).digest())
        return "sha256:" + h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def load_gateway(root: Path) -> Registry:
    """A registry with only gateway.yaml read: for commands that need just the identity settings."""
    registry = Registry(root=root)
    _load_gateway(registry)
    return registry


def _load_gateway(registry: Registry) -> None:
    path = registry.root / "gateway.yaml"
    if not path.is_file():
        registry.diagnostics.append(Diagnostic(
            "gateway.yaml", 1, 1, "error", "missing-file",
            "gateway.yaml not found at the registry root (identity settings are required)"))
        return
    source, diags = load_source(path, "gateway.yaml", registry.resolved_tags)
    registry.diagnostics.extend(diags)
    if source is None:  # None only on a syntax error; duplicate keys still get checked
        return
    registry.files[source.rel] = source.text.encode("utf-8")
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
            loc, "jwks", f"jwks_file {name!r} is not a JWK Set (expected an object with a non-empty "
                         "'keys' list)"))
        return
    registry.jwks_rel = _rel(path, registry.root.resolve())
    registry.files[registry.jwks_rel] = raw
    registry.jwks = jwks


@dataclass
class _Parsed:
    """What parsing one file yields: its source, diagnostics, and the manifest or rules in it."""

    path: Path
    source: SourceFile | None
    diagnostics: list[Diagnostic]
    manifest: ServerManifest | None = None
    rules: list[tuple[int, int, PolicyRule]] = field(default_factory=list)  # (index, line, rule)
    pins: contracts.Definitions | None = None  # a lock file's pinned definitions


def _parse_manifest(path: Path, rel: str, resolved: ResolvedTags) -> _Parsed:
    source, diags = load_source(path, rel, resolved)
    if source is None:
        return _Parsed(path, None, diags)
    manifest, errors = validate(source, ServerManifest, source.data)
    diags += errors
    if manifest is not None:
        diags += checks.check_manifest(manifest, source, path.stem)
    return _Parsed(path, source, diags, manifest)


def _parse_policy(path: Path, rel: str, resolved: ResolvedTags) -> _Parsed:
    source, diags = load_source(path, rel, resolved)
    if source is None:
        return _Parsed(path, None, diags)
    parsed = _Parsed(path, source, diags)
    if len(Path(rel).parts) < 3:  # policies/<folder>/...
        diags.append(source.diag((), "policy-layout",
                                 "policy files live in policies/<team>/ or policies/global/"))
        return parsed
    data = source.data if source.data is not None else []
    if not isinstance(data, list):
        diags.append(source.diag((), "schema", "a policy file is a list of rules"))
        return parsed
    for index, item in enumerate(data):
        rule, errors = validate(source, _RULE, item, (index,))
        diags += errors
        if rule is not None:
            parsed.rules.append((index, source.position((index,))[0], rule))
    return parsed


def _parse_lock(path: Path, rel: str, resolved: ResolvedTags) -> _Parsed:
    source, diags = load_source(path, rel, resolved)
    if source is None:
        return _Parsed(path, None, diags)
    pins, errors = contracts.read_lock(source)
    return _Parsed(path, source, diags + errors, pins=pins)


_PARSERS = {"manifest": _parse_manifest, "policy": _parse_policy, "lock": _parse_lock}


def _parse(kind: str, path: Path, rel: str, resolved: ResolvedTags) -> _Parsed:
    return _PARSERS[kind](path, rel, resolved)


def _discover(registry: Registry) -> list[tuple[str, Path, str]]:
    root = registry.root
    folder = root / "registry"
    jobs: list[tuple[str, Path, str]] = []
    if folder.is_dir():
        jobs += [("lock" if is_lock(p) else "manifest", p, _rel(p, root)) for p in sorted(folder.iterdir())
                 if p.suffix in MANIFEST_SUFFIXES and p.is_file()]
    else:
        registry.diagnostics.append(Diagnostic("registry", 1, 1, "error", "missing-file",
                                               "registry/ folder not found at the registry root"))
    policies = root / "policies"
    if policies.is_dir():
        jobs += [("policy", p, _rel(p, root)) for p in sorted(policies.rglob("*"))
                 if p.suffix in POLICY_SUFFIXES and p.is_file()]
    return jobs


def _collect(registry: Registry, results: list[_Parsed]) -> list[tuple[SourceFile, contracts.Definitions]]:
    """Gather per-file results in file order; duplicate server names are a cross-file check. The
    lock files come back, to be matched with their servers once all are known."""
    locks = []
    for parsed in results:
        registry.diagnostics.extend(parsed.diagnostics)
        source = parsed.source
        if source is None:
            continue
        registry.files[source.rel] = source.text.encode("utf-8")
        if parsed.pins is not None:
            locks.append((source, parsed.pins))
        manifest = parsed.manifest
        if manifest is not None:
            previous = registry.servers.get(manifest.name)
            if previous is None:
                registry.servers[manifest.name] = ServerEntry(manifest, source)
            else:
                line = previous.source.position(("name",))[0]
                registry.diagnostics.append(source.diag(
                    ("name",), "duplicate-server",
                    f"server '{manifest.name}' is already defined in {previous.source.rel}:{line}"))
        folder = Path(source.rel).parts[1] if len(Path(source.rel).parts) > 2 else ""
        registry.rules += [RuleEntry(rule, source, index, folder, line)
                           for index, line, rule in parsed.rules]
    return locks


def load_registry(root: Path) -> Registry:
    """Load and check everything under ``root``; inspect ``.diagnostics`` / ``.ok`` for the verdict."""
    registry = load_gateway(root)
    locks = _collect(registry, [_parse(*job, registry.resolved_tags) for job in _discover(registry)])
    registry.diagnostics.extend(checks.check_rules(registry.rules, registry.servers))
    registry.diagnostics.extend(contracts.check_contracts(locks, registry.servers, registry.rules,
                                                          registry.gateway))
    return registry
