"""Compile a validated registry into the bundle payload the runtime loads.

Everything is resolved here, once: audiences become sets, modes and limits are resolved per tool
(tool > server > gateway default), approvers default to the owner team, and each tool gets the indexes
of exactly the allow and deny rules that can apply to it (server, tool and access class all match).
"""
from __future__ import annotations

from collections import defaultdict

from compiler.models import GatewayConfig, PolicyRule, ServerManifest
from compiler.registry import Registry, RuleEntry
from runtime import bundle_format as fmt
from runtime.canonical import canonical_json


def audience(entries: list[str]) -> fmt.Audience:
    groups, users, agents = set(), set(), set()
    for entry in entries:
        kind, _, value = entry.partition(":")
        {"team": groups, "group": groups, "user": users, "agent": agents}.get(kind, set()).add(value)
    return fmt.Audience(everyone="everyone" in entries, groups=tuple(sorted(groups)),
                        users=tuple(sorted(users)), agents=tuple(sorted(agents)))


def _rule(entry: RuleEntry) -> fmt.Rule:
    rule: PolicyRule = entry.rule
    kind, value = rule.subject.kind_value
    conditions = rule.conditions
    compiled_conditions = tuple(
        fmt.Condition(arg=arg, path=tuple(arg.split(".")),
                      **ops.model_dump(by_alias=True, exclude_none=True))
        for arg, ops in sorted((conditions.arguments if conditions else {}).items()))
    tools = tuple(sorted(set(rule.resource.tool))) if rule.resource.tool is not None else None
    return fmt.Rule(id=entry.rule_id, effect=rule.effect, subject=fmt.Subject(kind=kind, value=value),
                    server=rule.resource.server, tools=tools, actions=rule.actions,
                    conditions=compiled_conditions,
                    rate_limit_per_minute=conditions.rate_limit_per_minute if conditions else None,
                    source=entry.where)


def _server(manifest: ServerManifest, source: str, gateway: GatewayConfig, rules: list[fmt.Rule],
            indexes: list[int]) -> fmt.Server:
    tools = {}
    for name, spec in sorted(manifest.tools.items()):
        server_mode = getattr(manifest.mode, spec.access) if manifest.mode else None
        approval = None
        if spec.approval == "required":
            approvers = spec.approvers or manifest.approvers or [f"team:{manifest.owner}"]
            approval = fmt.Approval(approvers=audience(approvers))
        applicable = [i for i in indexes if spec.access in rules[i].actions
                      and (rules[i].tools is None or name in rules[i].tools)]
        tools[name] = fmt.Tool(
            access=spec.access, mode=spec.mode or server_mode or gateway.default_mode,
            approval=approval,
            limits=fmt.Limits(per_user_rpm=spec.limits.per_user_rpm if spec.limits else None),
            timeout_ms=spec.timeout_ms or manifest.timeout_ms,
            allow=tuple(i for i in applicable if rules[i].effect == "allow"),
            deny=tuple(i for i in applicable if rules[i].effect == "deny"))
    auth = manifest.upstream_auth
    limits = manifest.limits
    return fmt.Server(
        owner=manifest.owner, upstream=manifest.upstream, description=manifest.description,
        source=source, visibility=audience(manifest.visibility),
        restricted=any(rules[i].effect == "allow" for i in indexes), tools=tools,
        limits=fmt.ServerLimits(per_user_rpm=limits.per_user_rpm if limits else None,
                                upstream_rpm=limits.upstream_rpm if limits else None),
        timeout_ms=manifest.timeout_ms, max_concurrency=manifest.max_concurrency,
        upstream_auth=fmt.UpstreamAuth(**auth.model_dump()))


def _gateway(gateway: GatewayConfig, registry: Registry) -> fmt.GatewaySettings:
    identity = gateway.identity
    return fmt.GatewaySettings(
        identity=fmt.Identity(issuer=identity.issuer, audience=tuple(identity.audience),
                              jwks_uri=identity.jwks_uri, jwks=registry.jwks,
                              groups_claim=identity.groups_claim,
                              algorithms=tuple(identity.algorithms), leeway_s=identity.leeway_s),
        break_glass=fmt.BreakGlass(**gateway.break_glass.model_dump()),
        default_mode=gateway.default_mode, audit=fmt.Audit(**gateway.audit.model_dump()))


def compile_registry(registry: Registry, serial: int, revision: str) -> fmt.BundlePayload:
    """Build the payload of a registry that loaded without errors."""
    if not registry.ok or registry.gateway is None:
        raise ValueError("cannot compile a registry with errors")
    rules = [_rule(entry) for entry in registry.rules]
    by_server: dict[str, list[int]] = defaultdict(list)
    everywhere = [i for i, r in enumerate(rules) if r.server == "*"]
    for i, rule in enumerate(rules):
        if rule.server != "*":
            by_server[rule.server].append(i)
    servers = {name: _server(entry.manifest, entry.source.rel, registry.gateway, rules,
                             sorted(by_server.get(name, []) + everywhere))
               for name, entry in sorted(registry.servers.items())}
    return fmt.BundlePayload(format=fmt.FORMAT_V1, serial=serial, revision=revision,
                             source_digest=registry.source_digest(),
                             gateway=_gateway(registry.gateway, registry), servers=servers,
                             rules=tuple(rules))


def payload_bytes(payload: fmt.BundlePayload) -> bytes:
    """The canonical bytes that get signed."""
    return canonical_json(payload.model_dump(mode="json", by_alias=True))
