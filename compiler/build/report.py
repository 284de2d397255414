"""Human and JSON views of a compiled bundle: servers, tools, and who can call what."""
from __future__ import annotations

from typing import Any

from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.policy.decide import Entitlement, Principal, entitlement_on, visible_server

ToolKey = tuple[str, str]  # (server, tool)


def subjects(payload: BundlePayload) -> dict[str, Principal]:
    """Every audience named in the bundle, as a principal holding just that one membership.

    Placeholder subjects start with NUL so they can never equal a real ``user:`` rule's subject.
    """
    found: dict[str, Principal] = {}
    for server in payload.servers.values():
        vis = server.visibility
        if vis.everyone:
            found["everyone"] = Principal("\0everyone")
        for group in vis.groups:
            found[f"group:{group}"] = Principal(f"\0group:{group}", frozenset({group}))
        for user in vis.users:
            found[f"user:{user}"] = Principal(user)
        for agent in vis.agents:
            found[f"agent:{agent}"] = Principal(agent, kind="agent")
    for rule in payload.rules:
        kind, value = rule.subject.kind, rule.subject.value
        label = f"{kind}:{value}"
        if label not in found:
            found[label] = (Principal(f"\0{label}", frozenset({value})) if kind == "group"
                            else Principal(value, kind="agent" if kind == "agent" else "human"))
    return dict(sorted(found.items()))


def access_matrix(payload: BundlePayload,
                  principals: dict[str, Principal]) -> dict[str, dict[ToolKey, Entitlement]]:
    """For each audience, the tools it may call and whether only with some arguments."""
    matrix: dict[str, dict[ToolKey, Entitlement]] = {}
    for label, principal in principals.items():
        row = {}
        for server_name in payload.servers:
            server = visible_server(payload, principal, server_name)
            for tool_name in server.tools if server is not None else ():
                ent = entitlement_on(payload, server, principal, tool_name)
                if ent is not None:
                    row[(server_name, tool_name)] = ent
        matrix[label] = row
    return matrix


def counts(payload: BundlePayload) -> dict[str, int]:
    tools = [t for s in payload.servers.values() for t in s.tools.values()]
    return {"servers": len(payload.servers), "tools": len(tools),
            "read": sum(t.access == "read" for t in tools),
            "write": sum(t.access == "write" for t in tools),
            "approval": sum(t.approval is not None for t in tools),
            "rules": len(payload.rules), "deny_rules": sum(r.effect == "deny" for r in payload.rules)}


def one_line(payload: BundlePayload) -> str:
    c = counts(payload)
    return (f"{c['servers']} servers, {c['tools']} tools ({c['read']} read, {c['write']} write, "
            f"{c['approval']} with approval), {c['rules']} rules ({c['deny_rules']} deny)")


def _tool_text(name: str, tool: Any) -> str:
    flags = [tool.access] + (["approval"] if tool.approval else []) + (
        ["shadow"] if tool.mode == "shadow" else [])
    return f"{name} ({', '.join(flags)})"


def summary_text(bundle: Bundle, verified: bool) -> str:
    p = bundle.payload
    signature = (f"signature verified (key {bundle.keyid[:16]})" if verified and bundle.keyid
                 else "signature NOT checked (use gwc verify --trust)")
    lines = [f"bundle   {bundle.digest}", f"serial   {p.serial}   revision {p.revision}",
             f"sources  {p.source_digest}", signature,
             f"identity issuer {p.gateway.identity.issuer}, audience "
             f"{', '.join(p.gateway.identity.audience)}", one_line(p), "", "Servers:"]
    for name, server in p.servers.items():
        audience = ", ".join(server.visibility.entries()) or "nobody"
        lines.append(f"  {name}  owner {server.owner}  visible to {audience}")
        lines.append(f"      {server.upstream}")
        lines.append("      " + ", ".join(_tool_text(n, t) for n, t in server.tools.items()))
    lines += ["", "Who can call what (by that one membership alone; * = only with some arguments):"]
    for label, row in access_matrix(p, subjects(p)).items():
        by_server: dict[str, list[str]] = {}
        for (server_name, tool_name), ent in row.items():
            by_server.setdefault(server_name, []).append(tool_name + ("*" if ent == "conditional" else ""))
        text = "; ".join(f"{s}: {', '.join(ts)}" for s, ts in by_server.items()) or "nothing"
        lines.append(f"  {label}: {text}")
    return "\n".join(lines)


def summary_json(bundle: Bundle, verified: bool) -> dict[str, Any]:
    p = bundle.payload
    matrix = access_matrix(p, subjects(p))
    return {
        "digest": bundle.digest, "serial": p.serial, "revision": p.revision,
        "source_digest": p.source_digest,
        "signature": {"verified": verified, "keyid": bundle.keyid},
        "counts": counts(p),
        "servers": {name: {"owner": s.owner, "upstream": s.upstream,
                           "visibility": list(s.visibility.entries()),
                           "tools": {t: {"access": tool.access, "approval": tool.approval is not None,
                                         "mode": tool.mode} for t, tool in s.tools.items()}}
                    for name, s in p.servers.items()},
        "access": {label: {f"{s}/{t}": ent for (s, t), ent in row.items()}
                   for label, row in matrix.items()},
    }
