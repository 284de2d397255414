"""Compile a validated registry into the bundle payload the runtime loads.

Everything is resolved here, once: audiences become sorted sets, modes and limits are resolved per
tool (tool > server > gateway default), approvers default to the owner team, and each tool gets the
indexes of exactly the allow and deny rules that can apply to it (server, tool and access class all
match); a pinned tool carries its lock's definition and that definition's digest. The payload is
built as plain data in the shape of ``gwc.runtime.bundle.format`` with default values left out (so a
setting added later changes no bundle that does not use it), then validated once against that model
before anything is signed.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import BaseModel

from gwc.compiler.build.entries import RuleEntry, ServerEntry
from gwc.compiler.build.models import GatewayConfig
from gwc.compiler.build.registry import Registry
from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.format import FORMAT_V1, BundlePayload, GatewaySettings, Server
from gwc.runtime.bundle.tool_definitions import definition_digest

Data = dict[str, Any]


def _compact(data: Data) -> Data:
    """Leave out unset optional fields (None, False, empty): the runtime model supplies defaults."""
    return {k: v for k, v in data.items() if v is not None and v is not False and v != [] and v != {}}


def _unless_default(model: type[BaseModel], name: str, value: Any) -> Any:
    """``value``, or None (left out) when it is the runtime model's default: a setting added
    later changes no bundle that does not use it."""
    return None if value == model.model_fields[name].default else value


def audience(entries: list[str]) -> Data:
    found: dict[str, set[str]] = {"team": set(), "group": set(), "user": set(), "agent": set()}
    for entry in entries:
        kind, _, value = entry.partition(":")
        if kind in found:
            found[kind].add(value)
    return _compact({"everyone": "everyone" in entries,
                     "groups": sorted(found["team"] | found["group"]),
                     "users": sorted(found["user"]), "agents": sorted(found["agent"])})


def _rule(entry: RuleEntry) -> Data:
    rule = entry.rule
    kind, value = rule.subject.kind_value
    conditions = rule.conditions
    compiled_conditions = [
        {"arg": arg, "path": arg.split("."), **ops.model_dump(by_alias=True, exclude_none=True)}
        for arg, ops in sorted((conditions.arguments if conditions else {}).items())]
    return _compact({
        "id": entry.rule_id, "effect": rule.effect, "subject": {"kind": kind, "value": value},
        "server": rule.resource.server,
        "tools": sorted(set(rule.resource.tool)) if rule.resource.tool is not None else None,
        "actions": list(rule.actions), "conditions": compiled_conditions,
        "rate_limit_per_minute": conditions.rate_limit_per_minute if conditions else None,
        "rate_limit_burst": conditions.rate_limit_burst if conditions else None,
        "source": entry.where})


def _pinned(definition: dict[str, Any] | None) -> Data | None:
    """The lock's definition as written (what nodes serve) and its digest (what they compare)."""
    if definition is None:
        return None
    return {"definition": definition, "digest": definition_digest(definition)}


def _server(entry: ServerEntry, gateway: GatewayConfig, rules: list[Data], indexes: list[int]) -> Data:
    manifest = entry.manifest
    tools = {}
    for name, spec in sorted(manifest.tools.items()):
        server_mode = getattr(manifest.mode, spec.access) if manifest.mode else None
        approval = None
        if spec.approval == "required":
            approvers = spec.approvers or manifest.approvers or [f"team:{manifest.owner}"]
            approval = {"approvers": audience(approvers)}
        applicable = [i for i in indexes if spec.access in rules[i]["actions"]
                      and name in rules[i].get("tools", (name,))]
        tools[name] = _compact({
            "access": spec.access, "mode": spec.mode or server_mode or gateway.default_mode,
            "approval": approval,
            "limits": _compact(spec.limits.model_dump()) if spec.limits else None,
            "timeout_ms": spec.timeout_ms or manifest.timeout_ms,
            "allow": [i for i in applicable if rules[i]["effect"] == "allow"],
            "deny": [i for i in applicable if rules[i]["effect"] == "deny"],
            "sensitive": sorted(set(spec.sensitive)), "pinned": _pinned(entry.pins.get(name))})
    drift = manifest.drift or gateway.tool_contracts.drift
    return _compact({
        "owner": manifest.owner, "upstream": manifest.upstream, "description": manifest.description,
        "source": entry.source.rel, "visibility": audience(manifest.visibility),
        "restricted": any(rules[i]["effect"] == "allow" for i in indexes), "tools": tools,
        "limits": _compact(manifest.limits.model_dump()) if manifest.limits else None,
        "timeout_ms": manifest.timeout_ms, "max_concurrency": manifest.max_concurrency,
        "upstream_auth": manifest.upstream_auth.model_dump(),  # scheme null means "no scheme"
        "drift": _unless_default(Server, "drift", drift)})


def _gateway(gateway: GatewayConfig, registry: Registry) -> Data:
    identity = gateway.identity
    return {
        "identity": _compact({
            "issuer": identity.issuer, "audience": list(identity.audience),
            "jwks_uri": identity.jwks_uri, "jwks": registry.jwks,
            "groups_claim": identity.groups_claim, "algorithms": list(identity.algorithms),
            "leeway_s": identity.leeway_s}),
        "break_glass": gateway.break_glass.model_dump(exclude_none=True),
        "default_mode": gateway.default_mode,
        "audit": gateway.audit.model_dump(exclude_none=True),
        **_compact({"allowed_origins": sorted(set(gateway.allowed_origins)),
                    "sign_in": gateway.sign_in.model_dump() if gateway.sign_in else None,
                    "drift_recheck_s": _unless_default(GatewaySettings, "drift_recheck_s",
                                                       gateway.tool_contracts.recheck_s)})}


def compile_data(registry: Registry, serial: int, revision: str) -> Data:
    """The payload (plain JSON data) of a registry that loaded without errors."""
    if not registry.ok or registry.gateway is None:
        raise ValueError("cannot compile a registry with errors")
    rules = [_rule(entry) for entry in registry.rules]
    by_server: dict[str, list[int]] = defaultdict(list)
    everywhere = [i for i, r in enumerate(rules) if r["server"] == "*"]
    for i, rule in enumerate(rules):
        if rule["server"] != "*":
            by_server[rule["server"]].append(i)
    servers = {name: _server(entry, registry.gateway, rules, sorted(by_server.get(name, []) + everywhere))
               for name, entry in sorted(registry.servers.items())}
    return {"format": FORMAT_V1, "serial": serial, "revision": revision,
            "source_digest": registry.source_digest(), "gateway": _gateway(registry.gateway, registry),
            "servers": servers, "rules": rules}


def checked_payload(payload: Data) -> BundlePayload:
    """Validate compiled data against the runtime's own model: never sign what a runtime would refuse."""
    return BundlePayload.model_validate(payload)


def compile_registry(registry: Registry, serial: int, revision: str) -> BundlePayload:
    """Compile and check: the payload as the runtime will see it."""
    return checked_payload(compile_data(registry, serial, revision))


def payload_bytes(payload: Data) -> bytes:
    """The canonical bytes that get signed."""
    return canonical_json(payload)
