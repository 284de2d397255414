"""Semantic checks beyond the schema: what a reviewer of a registry pull request would look for.

Errors make the registry invalid; warnings (contradictory or shadowed rules, write tools without
approval, ...) are printed but do not fail the build.
"""
from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Collection
from urllib.parse import urlsplit

from gwc.compiler.build.diagnostics import Diagnostic
from gwc.compiler.build.entries import RuleEntry, ServerEntry
from gwc.compiler.build.hosts import is_loopback
from gwc.compiler.build.models import TOOL_NAME, GatewayConfig, PolicyRule, ServerManifest
from gwc.compiler.build.sources import Loc, SourceFile
from gwc.runtime.policy.names import collisions

AUDIENCE_KINDS = ("team", "group", "user", "agent")
GLOBAL_FOLDER = "global"  # policies/global/ may name any server
_TOOL_NAME = re.compile(TOOL_NAME)
_BAD_AUDIENCE_VALUE = re.compile(r"[\s,]")


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_url(url: str, source: SourceFile, loc: Loc, what: str) -> list[Diagnostic]:
    """https everywhere; http only for loopback (development); never credentials in the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:
        return [source.diag(loc, "url", f"{what} {url!r} is not a valid URL ({exc})")]
    if parts.scheme not in ("https", "http") or not host:
        return [source.diag(loc, "url", f"{what} {url!r} is not an absolute http(s) URL")]
    if parts.username is not None or parts.password is not None:
        return [source.diag(loc, "secret-in-registry",
                            f"{what} carries credentials: secrets never live in the registry "
                            "(use upstream_auth: {type: static_env, env: NAME})")]
    if parts.scheme == "http" and not is_loopback(host):
        return [source.diag(loc, "url", f"{what} must use https (http is allowed only for "
                                        f"loopback hosts, for development; got host {host!r})")]
    return []


def check_audience(entries: list[str], source: SourceFile, loc: Loc) -> list[Diagnostic]:
    """Entries are ``team:<name>``, ``group:<name>``, ``user:<subject>``, ``agent:<id>`` or ``everyone``."""
    diags = []
    as_string = isinstance(source.data, dict) and isinstance(_get(source.data, loc), str)
    for i, entry in enumerate(entries):
        kind, sep, value = entry.partition(":")
        if entry == "everyone" or (sep and kind in AUDIENCE_KINDS and value
                                   and not _BAD_AUDIENCE_VALUE.search(value)):
            continue
        hint = _suggest(kind, AUDIENCE_KINDS) if sep and kind not in AUDIENCE_KINDS else ""
        diags.append(source.diag(
            loc if as_string else (*loc, i), "audience",
            f"audience entry {entry!r} is not valid{hint} (expected team:<name>, group:<name>, "
            "user:<subject>, agent:<id> or everyone)"))
    return diags


def _get(data: object, loc: Loc) -> object:
    for part in loc:
        data = data[part] if isinstance(data, (dict, list)) else None  # type: ignore[index]
    return data


def check_gateway(gateway: GatewayConfig, source: SourceFile) -> list[Diagnostic]:
    identity = gateway.identity
    diags = check_url(identity.issuer, source, ("identity", "issuer"), "identity.issuer")
    if identity.jwks_uri is not None:
        diags += check_url(identity.jwks_uri, source, ("identity", "jwks_uri"), "identity.jwks_uri")
    return diags


def _check_burst(source: SourceFile, loc: Loc, rate_field: str, rate: int | None, burst_field: str,
                 burst: int | None) -> list[Diagnostic]:
    """A burst tightens its rate: at most the rate (its default), and never without a rate."""
    if burst is None:
        return []
    if rate is None:
        return [source.diag((*loc, burst_field), "limits", f"{burst_field} needs {rate_field}: "
                                                           "a burst tightens a rate")]
    if burst > rate:
        return [source.diag((*loc, burst_field), "limits",
                            f"{burst_field} {burst} is larger than {rate_field} {rate}: a burst is at "
                            f"most the rate (leave it out to allow all {rate} at once)")]
    return []


def _check_limits(manifest: ServerManifest, source: SourceFile) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    if manifest.limits is not None:
        limits = manifest.limits
        diags += _check_burst(source, ("limits",), "per_user_rpm", limits.per_user_rpm,
                              "per_user_burst", limits.per_user_burst)
        diags += _check_burst(source, ("limits",), "upstream_rpm", limits.upstream_rpm,
                              "upstream_burst", limits.upstream_burst)
    for name, tool in manifest.tools.items():
        if tool.limits is not None:
            diags += _check_burst(source, ("tools", name, "limits"), "per_user_rpm",
                                  tool.limits.per_user_rpm, "per_user_burst",
                                  tool.limits.per_user_burst)
    return diags


def check_manifest(manifest: ServerManifest, source: SourceFile, stem: str) -> list[Diagnostic]:
    diags = check_url(manifest.upstream, source, ("upstream",), "upstream")
    diags += _check_limits(manifest, source)
    if manifest.owner == GLOBAL_FOLDER:
        diags.append(source.diag(("owner",), "reserved-name",
                                 f"owner '{GLOBAL_FOLDER}' is reserved: policies/{GLOBAL_FOLDER}/ "
                                 "belongs to the gateway's owners (gateway.yaml owners)"))
    diags += check_audience(manifest.visibility, source, ("visibility",))
    if not manifest.visibility:
        diags.append(source.diag(("visibility",), "audience",
                                 "visibility is empty: nobody can see this server", "warning"))
    if manifest.approvers is not None:
        diags += check_audience(manifest.approvers, source, ("approvers",))
    if stem != manifest.name:
        diags.append(source.diag(("name",), "file-name",
                                 f"file is named '{stem}' but defines server '{manifest.name}'; "
                                 f"name it {manifest.name}{source.rel[source.rel.rfind('.'):]}",
                                 "warning"))
    if not manifest.tools:
        diags.append(source.diag(("tools",), "no-tools",
                                 "no tools declared: only declared tools exist behind the gateway",
                                 "warning"))
    for name, tool in manifest.tools.items():
        loc = ("tools", name)
        if not _TOOL_NAME.fullmatch(name):  # match() would let a trailing newline through
            diags.append(source.diag(loc, "schema", f"tool name {name!r} is not valid (expected "
                                                    "letters, digits, '_', '-' and '.', 1 to 128 "
                                                    "characters)", key=True))
        if tool.approvers is not None:
            diags += check_audience(tool.approvers, source, (*loc, "approvers"))
            if tool.approval != "required":
                diags.append(source.diag((*loc, "approvers"), "approvers-unused",
                                         f"tool '{name}' names approvers but does not require "
                                         "approval (add approval: required)", "warning", key=True))
        if tool.access == "write" and "approval" not in tool.model_fields_set:
            diags.append(source.diag(loc, "write-without-approval",
                                     f"write tool '{name}' runs without approval (add "
                                     "approval: required, or write approval: none to accept that "
                                     "granted callers run it directly)", "warning", key=True))
    return diags


def _check_conditions(entry: RuleEntry) -> list[Diagnostic]:
    rule, loc = entry.rule, (entry.index, "conditions")
    if rule.conditions is None:
        return []
    diags = []
    if rule.effect == "deny" and rule.conditions.rate_limit_per_minute is not None:
        diags.append(entry.source.diag((*loc, "rate_limit_per_minute"), "rule",
                                       "rate_limit_per_minute has no meaning on a deny rule"))
    diags += _check_burst(entry.source, loc, "rate_limit_per_minute",
                          rule.conditions.rate_limit_per_minute, "rate_limit_burst",
                          rule.conditions.rate_limit_burst)
    for arg, ops in rule.conditions.arguments.items():
        if not arg or any(not part for part in arg.split(".")):
            diags.append(entry.source.diag((*loc, arg), "rule",
                                           f"condition key {arg!r} is not an argument path "
                                           "(expected name or dotted.path)", key=True))
        if ops.pattern is not None:
            try:
                re.compile(ops.pattern)
            except re.error as exc:
                diags.append(entry.source.diag((*loc, arg, "pattern"), "rule",
                                               f"pattern for '{arg}' is not a valid regular "
                                               f"expression: {exc}"))
        if ops.min is not None and ops.max is not None and ops.min > ops.max:
            diags.append(entry.source.diag((*loc, arg), "rule",
                                           f"condition on '{arg}' can never hold (min > max)"))
    return diags


def _check_rule_target(entry: RuleEntry, servers: dict[str, ServerEntry]) -> list[Diagnostic]:
    rule, src, i = entry.rule, entry.source, entry.index
    server_name = rule.resource.server
    if server_name == "*":
        if entry.folder != GLOBAL_FOLDER or rule.effect != "deny":
            return [src.diag((i, "resource", "server"), "owner-boundary",
                             "server '*' is allowed only in deny rules under policies/global/")]
        if rule.resource.tool is not None:
            return [src.diag((i, "resource", "tool"), "rule",
                             "a rule for server '*' cannot name tools (tool names differ per server)")]
        return []
    target = servers.get(server_name)
    if target is None:
        return [src.diag((i, "resource", "server"), "unknown-server",
                         f"unknown server '{server_name}'{_suggest(server_name, set(servers))}")]
    manifest = target.manifest
    diags = []
    if entry.folder != GLOBAL_FOLDER and manifest.owner != entry.folder:
        diags.append(src.diag((i, "resource", "server"), "owner-boundary",
                              f"policies/{entry.folder}/ may only name servers owned by "
                              f"{entry.folder}; '{server_name}' is owned by {manifest.owner} (move "
                              f"this rule to policies/{manifest.owner}/ or policies/global/)"))
    tool_loc = (i, "resource", "tool")
    for tool in rule.resource.tool or ():
        spec = manifest.tools.get(tool)
        if spec is None:
            diags.append(src.diag(tool_loc, "unknown-tool",
                                  f"server '{server_name}' has no tool '{tool}'"
                                  f"{_suggest(tool, set(manifest.tools))}"))
        elif spec.access not in rule.actions:
            diags.append(src.diag(tool_loc, "never-matches",
                                  f"tool '{tool}' is a {spec.access} tool but the rule's action "
                                  f"is {'/'.join(rule.actions)}: the rule never applies to it",
                                  "warning"))
    return diags


def _covers(a: PolicyRule, b: PolicyRule) -> bool:
    """Does ``a`` apply to every (tool, action) that ``b`` applies to?"""
    tools_ok = a.resource.tool is None or (b.resource.tool is not None
                                           and set(b.resource.tool) <= set(a.resource.tool))
    return tools_ok and set(b.actions) <= set(a.actions)


def _unconditional(rule: PolicyRule) -> bool:
    return rule.conditions is None or not rule.conditions.arguments


def _rate(rule: PolicyRule) -> tuple[int, int] | None:
    """(rate, burst) of the rule's limit, the burst defaulting to the rate; None: no limit."""
    conditions = rule.conditions
    if conditions is None or conditions.rate_limit_per_minute is None:
        return None
    return (conditions.rate_limit_per_minute,
            conditions.rate_limit_burst or conditions.rate_limit_per_minute)


def _shadows(a: PolicyRule, b: PolicyRule) -> bool:
    """Allow rule ``a`` grants everything ``b`` does, unconditionally and at least as generously."""
    ra, rb = _rate(a), _rate(b)
    return (_unconditional(a) and _covers(a, b)
            and (ra is None or (rb is not None and rb[0] <= ra[0] and rb[1] <= ra[1])))


def _check_overlaps(rules: list[RuleEntry]) -> list[Diagnostic]:
    """Warn about allow rules that can never grant (contradicted) or add nothing (shadowed)."""
    by_key: dict[tuple[str, str, str], list[RuleEntry]] = defaultdict(list)
    global_denies: dict[tuple[str, str], list[RuleEntry]] = defaultdict(list)
    for entry in rules:
        subject = entry.rule.subject.kind_value
        if entry.rule.resource.server == "*":
            if entry.rule.effect == "deny":  # an allow on '*' is refused elsewhere; never a blocker
                global_denies[subject].append(entry)
        else:
            by_key[(*subject, entry.rule.resource.server)].append(entry)
    diags = []
    for (kind, value, _), group in by_key.items():
        allows = [e for e in group if e.rule.effect == "allow"]
        denies = [e for e in group if e.rule.effect == "deny"] + global_denies.get((kind, value), [])
        for i, entry in enumerate(allows):
            blocker = next((d for d in denies
                            if _unconditional(d.rule) and _covers(d.rule, entry.rule)), None)
            if blocker is not None:
                diags.append(entry.source.diag((entry.index,), "contradiction",
                                               f"allow rule {entry.rule_id} never grants: deny rule "
                                               f"{blocker.rule_id} ({blocker.where}) always "
                                               "overrides it", "warning"))
                continue
            shadow = next((other for j, other in enumerate(allows) if j != i
                           and _shadows(other.rule, entry.rule)
                           and not (j > i and _shadows(entry.rule, other.rule))), None)
            if shadow is not None:
                diags.append(entry.source.diag((entry.index,), "shadowed",
                                               f"allow rule {entry.rule_id} is shadowed by "
                                               f"{shadow.rule_id} ({shadow.where}), which already "
                                               "grants all of it unconditionally", "warning"))
    return diags


def check_aggregate_names(servers: dict[str, ServerEntry]) -> list[Diagnostic]:
    """Every tool needs its own name on the aggregate endpoint /mcp (``gwc.runtime.policy.names``): refuse a
    tool whose name is already taken there, at the later declaration (in file order)."""
    diags: list[Diagnostic] = []
    declared = ((server, tool) for server, entry in servers.items() for tool in entry.manifest.tools)
    for shared, (other_server, other_tool), (server, tool) in collisions(declared):
        entry, other = servers[server], servers[other_server]
        line = other.source.position(("tools", other_tool), key=True)[0]
        diags.append(entry.source.diag(
            ("tools", tool), "duplicate-aggregate-name",
            f"tool '{tool}' of server '{server}' and tool '{other_tool}' of server "
            f"'{other_server}' ({other.source.rel}:{line}) would both be named '{shared}' on "
            "the aggregate endpoint /mcp: rename one of them", key=True))
    return diags


def check_rules(rules: list[RuleEntry], servers: dict[str, ServerEntry]) -> list[Diagnostic]:
    """The checks across files, run once every manifest is loaded: aggregate tool names, then rules."""
    diags = check_aggregate_names(servers)
    seen_ids: dict[str, RuleEntry] = {}
    for entry in rules:
        diags += _check_rule_target(entry, servers)
        diags += _check_conditions(entry)
        kind, value = entry.rule.subject.kind_value
        if not value or _BAD_AUDIENCE_VALUE.search(value):
            diags.append(entry.source.diag((entry.index, "subject"), "rule",
                                           f"subject {kind} {value!r} is empty or has white space "
                                           "or commas"))
        previous = seen_ids.get(entry.rule_id)
        if previous is not None:
            diags.append(entry.source.diag((entry.index, "id"), "duplicate-rule-id",
                                           f"rule id '{entry.rule_id}' is already used at "
                                           f"{previous.where}"))
        seen_ids.setdefault(entry.rule_id, entry)
    return diags + _check_overlaps(rules)
