"""Access decisions over a compiled bundle: the semantics of DESIGN.md, evaluated by lookups.

Order: visibility wall (outside it a server does not exist) -> deny rules (override everything) ->
grants (allow rules when any names the server, else the server's audience) -> argument conditions.
Every rule a tool can be subject to is pre-indexed on the tool by the compiler, so a decision walks a
handful of rules, never the whole policy.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from gwc.runtime.bundle.format import Access, BundlePayload, Condition, Mode, Rule, Server

Effect = Literal["allow", "deny", "not_found"]
Entitlement = Literal["allow", "conditional"]

MISSING = object()  # what argument_at finds where a call has no value


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


def argument_at(arguments: Any, path: tuple[str, ...]) -> Any:
    """The value at a condition's path in a call's arguments (objects only), else ``MISSING``:
    the one walk policy, the audit record and replay share."""
    value = arguments
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


class _Off:
    """The verdict on a reading of a type the condition does not compare against (the string
    ``"3"`` against ``min: 1``): it decides nothing, unless nothing else can be judged."""


_OFF = _Off()
Judgement = bool | None | _Off  # None: cannot be judged

# A scalar's JSON type by its Python type (arguments come from a JSON parser, so exact types).
# No condition judges what is not here: null, objects, lists inside lists, _UNREADABLE.
_KINDS: dict[type, str] = {bool: "boolean", int: "number", float: "number", str: "string"}

# The other forms an upstream may read a value in (_readings). Pydantic's lax mode, the MCP SDK's,
# reads these spellings (any case) and the numbers 0 and 1 as booleans and numeric strings as
# numbers; the SDK parses a string holding JSON into a list, an object or null.
_BOOLS = {spelling: flag for flag, spellings in (
    (True, ("true", "t", "yes", "y", "on", "1")), (False, ("false", "f", "no", "n", "off", "0")))
    for spelling in spellings}
_NUMBER = re.compile(r"[+-]?(?:(?P<int>[0-9][0-9_]*)|(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)"
                     r"(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.IGNORECASE)
_NUMBER_OPENERS = frozenset("0123456789+-.iInN")
_JSON_OPENERS = frozenset('[{"')
MAX_READ = 4096  # a longer numeric or JSON string is not parsed: it reads as _UNREADABLE
_UNREADABLE = object()  # of no known type: cannot be judged


def _member(value: Any, kind: str, options: tuple[Any, ...]) -> Judgement:
    """Whether ``value`` equals an option of its own JSON type (``true`` is not ``1``, ``1`` is
    ``1.0``); _OFF when no option is of its type, since then nothing says what it may be."""
    comparable = False
    for option in options:
        if _KINDS.get(type(option)) == kind:
            if option == value:
                return True
            comparable = True
    return False if comparable else _OFF


def _scalar_holds(cond: Condition, value: Any) -> Judgement:
    """Judge one reading; operators in order, the first that does not hold decides."""
    kind = _KINDS.get(type(value))
    if kind is None:
        return None
    if cond.in_ is not None:
        found = _member(value, kind, cond.in_)
        if found is not True:
            return found
    if cond.not_in is not None:
        found = _member(value, kind, cond.not_in)
        if found is not False:
            return False if found is True else found
    if cond.regex is not None:
        if kind != "string":
            return _OFF
        if cond.regex.fullmatch(value) is None:
            return False
    if cond.min is not None or cond.max is not None:
        if kind != "number":
            return _OFF
        if (cond.min is not None and value < cond.min) or (cond.max is not None and value > cond.max):
            return False
    return True


def _readings(value: Any) -> list[Any]:
    """The forms other than itself an upstream may read ``value`` in (``5.0`` needs none: it
    equals ``5``). Cheap for the common case: most strings are ruled out by their first
    character."""
    kind = _KINDS.get(type(value))
    if kind != "string":
        return [value == 1] if kind == "number" and value in (0, 1) else []
    readings: list[Any] = []
    text = value.strip()
    if len(text) <= 5 and (flag := _BOOLS.get(text.lower())) is not None:
        readings.append(flag)
    if text[:1] in _NUMBER_OPENERS and (number := _NUMBER.fullmatch(text)) is not None:
        try:
            readings.append(_UNREADABLE if len(text) > MAX_READ
                            else int(text) if number["int"] else float(text))
        except ValueError:
            pass  # misplaced underscores: nobody reads that as a number
    if text[:1] in _JSON_OPENERS or text == "null":
        try:
            readings.append(_UNREADABLE if len(text) > MAX_READ else json.loads(text))
        except (ValueError, RecursionError):
            pass  # not JSON, or nested too deep: the SDK passes the string on as it is
    return readings


def _combine(verdicts: list[Judgement], every: bool) -> bool | None:
    """One verdict from several (a list's elements, a value's readings). With ``every`` all must
    hold, without it one suffices; what cannot be judged outweighs the rest but the decisive; an
    _OFF reading counts only when nothing else can be judged, and then it cannot be judged."""
    decisive, other = (False, True) if every else (True, False)
    if decisive in verdicts:
        return decisive
    return None if None in verdicts or other not in verdicts else other


def _reading_holds(cond: Condition, reading: Any, every: bool, top: bool) -> Judgement:
    """Judge one reading: an argument's list element by element, anything else as one value."""
    if top and isinstance(reading, list):
        return _combine([_judge(cond, element, every, False) for element in reading], every)
    return _scalar_holds(cond, reading)


def _judge(cond: Condition, value: Any, every: bool, top: bool = True) -> bool | None:
    """Judge ``value`` in every form an upstream may read it in (_readings): a deny applies if any
    reading triggers it, an allow holds only if every reading does. An allow also needs the value
    as sent to be of a type it names: it grants what it names, never a lookalike."""
    own = _reading_holds(cond, value, every, top)
    # No reading can change what cannot be judged, or what decides for this effect on its own
    # (holds for a deny, fails for an allow), or an allow's lookalike of another type.
    settled = own is None or own is (not every) or (every and own is _OFF)
    readings = () if settled else _readings(value)
    if readings:
        return _combine([own, *[_reading_holds(cond, r, every, top) for r in readings]], every)
    return None if isinstance(own, _Off) else own


def condition_holds(cond: Condition, arguments: Any, every: bool = True) -> bool | None:
    """Judge one condition; None means it cannot be judged (missing argument, wrong type).

    A list argument is judged element by element: with ``every`` (allow rules) every element must
    satisfy the condition; without it (deny rules) one element suffices, so ``env: [dev, prod]``
    cannot slip past a deny on ``prod``. An empty list cannot be judged, like a missing argument.
    Values are judged in every form the upstream may read them in (``"true"`` as ``true``, ``"0"``
    as ``0``, ``'["prod"]'`` as a list), so a deny cannot be bypassed by one it will coerce.
    """
    value = argument_at(arguments, cond.path)
    return None if value is MISSING else _judge(cond, value, every)


def allow_matches(rule: Rule, arguments: Any) -> bool:
    """An allow rule grants only when every condition demonstrably holds (missing argument: no)."""
    for cond in rule.conditions:  # noqa: SIM110 (no generator frame on every call)
        if condition_holds(cond, arguments) is not True:
            return False
    return True


def deny_matches(rule: Rule, arguments: Any) -> bool:
    """A deny rule applies unless a condition demonstrably fails: what cannot be judged is denied."""
    for cond in rule.conditions:  # noqa: SIM110 (no generator frame on every call)
        if condition_holds(cond, arguments, every=False) is False:
            return False
    return True


def decide(payload: BundlePayload, principal: Principal, server_name: str, tool_name: str,
           arguments: Any) -> Decision:
    """Decide one ``tools/call``. Mode (shadow) and approvals are reported, not applied, here:
    ``approval_required`` says whether the tool waits for an approval whenever a call goes through."""
    return decide_on(payload, visible_server(payload, principal, server_name), principal, tool_name,
                     arguments)


def decide_on(payload: BundlePayload, server: Server | None, principal: Principal, tool_name: str,
              arguments: Any) -> Decision:
    """``decide`` for a server already found by ``visible_server`` (None: not visible), so a caller
    that resolved the target checks visibility once per call."""
    if server is None:
        return Decision("not_found", "unknown_server")
    tool = server.tools.get(tool_name)
    if tool is None:
        return Decision("not_found", "unknown_tool")
    rules = payload.rules
    # Reported on denials too: a shadow-mode denial still goes through, and must still wait.
    approval = tool.approval is not None
    if tool.deny:  # (loops, not comprehensions: a decision is on every call's path)
        denies = []
        for i in tool.deny:
            rule = rules[i]
            if subject_matches(rule, principal) and deny_matches(rule, arguments):
                denies.append(rule.id)
        if denies:
            return Decision("deny", "deny_rule", tuple(denies), tool.access, tool.mode, None,
                            approval)
    if not server.restricted:
        return Decision("allow", "visibility", (), tool.access, tool.mode, None, approval)
    # Grants are a union: the most generous matching rule sets the rule-level limit (none when
    # any granting rule has none; the first of the most generous), and its budget is the one spent.
    granted: list[str] = []
    limited: Rule | None = None
    unlimited = False
    for i in tool.allow:
        rule = rules[i]
        if subject_matches(rule, principal) and allow_matches(rule, arguments):
            granted.append(rule.id)
            if rule.rate_limit_per_minute is None:
                unlimited = True
            elif limited is None or rule.rate_limit_per_minute > (limited.rate_limit_per_minute
                                                                  or 0):
                limited = rule
    if not granted:
        return Decision("deny", "no_grant", (), tool.access, tool.mode, None, approval)
    if unlimited:
        limited = None
    return Decision("allow", "rule", tuple(granted), tool.access, tool.mode,
                    limited.rate_limit_per_minute if limited else None, approval,
                    limited.id if limited else None)


def entitlement_on(payload: BundlePayload, server: Server | None, principal: Principal,
                   tool_name: str) -> Entitlement | None:
    """What a principal may do with a tool of ``server`` (the server as :func:`visible_server`
    found it for the principal, or None) regardless of arguments: for lists, catalogs and reports.

    ``allow``: always granted; ``conditional``: granted only for some arguments; None: never.
    Taking the visible server, not its name, lets a loop over its tools check visibility once.
    """
    tool = server.tools.get(tool_name) if server is not None else None
    if server is None or tool is None:
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
    return listed_on(payload, visible_server(payload, principal, server_name), principal)


def listed_on(payload: BundlePayload, server: Server | None, principal: Principal) -> list[str]:
    """:func:`listed_tools` on a server already found visible to the principal (or None)."""
    if server is None:
        return []
    return [name for name, tool in server.tools.items()
            if tool.mode == "shadow" or entitlement_on(payload, server, principal, name)]
