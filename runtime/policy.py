"""Access decisions over a compiled bundle: the semantics of DESIGN.md, evaluated by lookups.

Order: visibility wall (outside it a server does not exist) -> deny rules (override everything) ->
grants (allow rules when any names the server, else the server's audience) -> argument conditions.
Every rule a tool can be subject to is pre-indexed on the tool by the compiler, so a decision walks a
handful of rules, never the whole policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal

from runtime.bundle_format import Access, BundlePayload, Condition, Mode, Rule, Server

Effect = Literal["allow", "deny", "not_found"]
Entitlement = Literal["allow", "conditional"]

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token subject, its IdP groups, and whether it is an agent (maybe for a human)."""

    subject: str
    groups: frozenset[str] = frozenset()
    kind: Literal["human", "agent", "service"] = "human"  # service: the gateway itself
    acting_for: str | None = None

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reason: str  # visibility | rule | no_grant | deny_rule | unknown_server | unknown_tool
    rule_ids: tuple[str, ...] = ()
    access: Access | None = None
    mode: Mode | None = None
    rate_limit_per_minute: int | None = None  # from the granting rule(s), if any
    approval_required: bool = False
    rate_limit_rule: str | None = None  # the granting rule whose limit applies

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


def visible_server(payload: BundlePayload, principal: Principal, server_name: str) -> Server | None:
    """The server if the principal is inside its visibility; None means "does not exist" to them."""
    server = payload.servers.get(server_name)
    if server is None or not server.visibility.admits(principal.subject, principal.groups,
                                                       principal.is_agent):
        return None
    return server


def subject_matches(rule: Rule, principal: Principal) -> bool:
    kind, value = rule.subject.kind, rule.subject.value
    if kind == "group":
        return value in principal.groups
    if kind == "user":
        return value == principal.subject
    return principal.is_agent and value == principal.subject


def _lookup(arguments: Any, path: tuple[str, ...]) -> Any:
    value = arguments
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers (Python says True == 1)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _element_holds(cond: Condition, value: Any) -> bool | None:
    """True/False when the condition can be judged on ``value``; None when it cannot (wrong type)."""
    if isinstance(value, (dict, list)):
        return None
    if cond.in_ is not None and not any(_same(value, option) for option in cond.in_):
        return False
    if cond.not_in is not None and any(_same(value, option) for option in cond.not_in):
        return False
    if cond.regex is not None:
        if not isinstance(value, str):
            return None
        if cond.regex.fullmatch(value) is None:
            return False
    if cond.min is not None or cond.max is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if (cond.min is not None and value < cond.min) or (cond.max is not None and value > cond.max):
            return False
    return True


def condition_holds(cond: Condition, arguments: Any, every: bool = True) -> bool | None:
    """Judge one condition; None means it cannot be judged (missing argument, wrong type).

    A list argument is judged element by element: with ``every`` (allow rules) every element must
    satisfy the condition; without it (deny rules) one element suffices, so ``env: [dev, prod]``
    cannot slip past a deny on ``prod``. An empty list cannot be judged, like a missing argument.
    """
    value = _lookup(arguments, cond.path)
    if value is _MISSING:
        return None
    if not isinstance(value, list):
        return _element_holds(cond, value)
    if not value:
        return None
    verdicts = [_element_holds(cond, element) for element in value]
    decisive, other = (False, True) if every else (True, False)
    if decisive in verdicts:
        return decisive
    return None if None in verdicts else other


def allow_matches(rule: Rule, arguments: Any) -> bool:
    """An allow rule grants only when every condition demonstrably holds (missing argument: no)."""
    return all(condition_holds(c, arguments) is True for c in rule.conditions)


def deny_matches(rule: Rule, arguments: Any) -> bool:
    """A deny rule applies unless a condition demonstrably fails: what cannot be judged is denied."""
    return all(condition_holds(c, arguments, every=False) is not False for c in rule.conditions)


def decide(payload: BundlePayload, principal: Principal, server_name: str, tool_name: str,
           arguments: Any) -> Decision:
    """Decide one ``tools/call``. Mode (shadow) and approvals are reported, not applied, here:
    ``approval_required`` says whether the tool waits for an approval whenever a call goes through."""
    server = visible_server(payload, principal, server_name)
    if server is None:
        return Decision("not_found", "unknown_server")
    tool = server.tools.get(tool_name)
    if tool is None:
        return Decision("not_found", "unknown_tool")
    rules = payload.rules
    # Reported on denials too: a shadow-mode denial still goes through, and must still wait.
    approval = tool.approval is not None
    denies = tuple(rules[i].id for i in tool.deny
                   if subject_matches(rules[i], principal) and deny_matches(rules[i], arguments))
    if denies:
        return Decision("deny", "deny_rule", denies, tool.access, tool.mode, None, approval)
    if not server.restricted:
        return Decision("allow", "visibility", (), tool.access, tool.mode, None, approval)
    granting = [rules[i] for i in tool.allow
                if subject_matches(rules[i], principal) and allow_matches(rules[i], arguments)]
    if not granting:
        return Decision("deny", "no_grant", (), tool.access, tool.mode, None, approval)
    # Grants are a union: the most generous matching rule sets the rule-level limit (none when
    # any granting rule has none), and its budget is the one spent.
    limited = None if any(r.rate_limit_per_minute is None for r in granting) else max(
        granting, key=lambda r: r.rate_limit_per_minute or 0)
    return Decision("allow", "rule", tuple(r.id for r in granting), tool.access, tool.mode,
                    limited.rate_limit_per_minute if limited else None, approval,
                    limited.id if limited else None)


def entitlement(payload: BundlePayload, principal: Principal, server_name: str,
                tool_name: str) -> Entitlement | None:
    """What a principal may do with a tool regardless of arguments: for reports and access diffs.

    ``allow``: always granted; ``conditional``: granted only for some arguments; None: never.
    """
    server = visible_server(payload, principal, server_name)
    tool = server.tools.get(tool_name) if server is not None else None
    if tool is None:
        return None
    rules = payload.rules
    conditional = False
    for i in tool.deny:
        if subject_matches(rules[i], principal):
            if not rules[i].conditions:
                return None
            conditional = True
    if server.restricted:
        granting = [rules[i] for i in tool.allow if subject_matches(rules[i], principal)]
        if not granting:
            return None
        if all(r.conditions for r in granting):
            conditional = True
    return "conditional" if conditional else "allow"


def listed_everywhere(payload: BundlePayload, principal: Principal
                      ) -> Iterator[tuple[str, list[str]]]:
    """(server, listed tools) for every server where the principal sees any tool."""
    for name in payload.servers:
        tools = listed_tools(payload, principal, name)
        if tools:
            yield name, tools


def listed_tools(payload: BundlePayload, principal: Principal, server_name: str) -> list[str]:
    """The declared tools a principal sees in ``tools/list``: the ones it may call with some
    arguments, plus, in shadow mode, every tool (the call goes through, its denial is recorded)."""
    server = visible_server(payload, principal, server_name)
    if server is None:
        return []
    return [name for name, tool in server.tools.items()
            if tool.mode == "shadow" or entitlement(payload, principal, server_name, name)]
