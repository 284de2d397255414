"""Whether a request may go on: visibility, the tool's contract (``contracts.py``), policy,
break-glass, limits and approvals, decided in that order into one :class:`Verdict` before anything
reaches an upstream (DESIGN rule 6).

Admission records nothing and counts nothing (``recording.py`` does, from the verdict). What it does
change is what deciding spends by nature: a call that passes its limits uses them, and an approval is
redeemed by the call it was granted for (or requested by the call that needs one)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gwc.runtime.audit.chain import utc_time
from gwc.runtime.audit.record import RecordedDecision
from gwc.runtime.bundle.format import Server
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.approvals import (
    TooManyApprovals,
    approval_page_path,
    approval_path,
    arguments_digest,
)
from gwc.runtime.governance.backend import StateUnavailable
from gwc.runtime.governance.bypasses import Bypass, is_break_glass
from gwc.runtime.governance.limits import limits_for
from gwc.runtime.governance.state import State
from gwc.runtime.mcp.contracts import Contracts
from gwc.runtime.mcp.routes import AGGREGATE, Call, Target
from gwc.runtime.policy.decide import Decision, Principal, decide_on, visible_server
from gwc.runtime.protocol.errors import (
    APPROVAL_REQUIRED,
    DENIED,
    INVALID_PARAMS,
    INVALID_REQUEST,
    NOT_FOUND,
    RATE_LIMITED,
    STATE_UNAVAILABLE,
    TOOL_CHANGED,
    RpcError,
)
from gwc.runtime.protocol.wire import NAMED_PARAM
from gwc.runtime.request_keys import REQUEST_ID

log = logging.getLogger("gwc.mcp")
# Requests that use an upstream (as opposed to listing it): they count against rate limits.
USES = frozenset(NAMED_PARAM)
NOT_FOUND_MESSAGES = {"tools/call": "Unknown tool: {}", "resources/read": "Resource not found: {}",
                      "prompts/get": "Unknown prompt: {}",
                      "resources/subscribe": "Resource not found: {}",
                      "resources/unsubscribe": "Resource not found: {}",
                      "completion/complete": "Unknown prompt or resource: {}"}
# An unknown tool is a protocol error with code -32602 (the MCP specification, tools); reason
# not_found all the same. Resources and prompts keep -32002.
NOT_FOUND_CODES = {"tools/call": INVALID_PARAMS}


def not_found(method: str, name: object) -> RpcError:
    return RpcError(NOT_FOUND_CODES.get(method, NOT_FOUND), NOT_FOUND_MESSAGES[method].format(name),
                    reason="not_found")


@dataclass(slots=True)
class Verdict:
    """What admission decided about one request: the record's decision and the metric's, and the
    refusal to answer with (None: go on)."""

    server: str  # the server decided on (AGGREGATE for a name that resolves to nothing)
    decision: RecordedDecision | None  # the record's decision; None when refused before any (bad params)
    counted: str | None  # the decision label it is counted under; None: not counted
    tool: str | None = None  # the tool, prompt or resource decided on
    counted_tool: str = ""  # the tool label it is counted under
    policy: Decision | None = None  # a tools/call's policy evaluation
    access: str | None = None  # a declared tool's access class
    arguments: Any = None  # a tools/call's arguments, as policy judged them
    bypass: Bypass | None = None  # the break-glass bypass it goes on under
    approval: str | None = None  # the approval it redeemed, or is waiting for
    refusal: RpcError | None = None

    def refuse(self, decision: RecordedDecision | None, counted: str, refusal: RpcError) -> Verdict:
        if decision is not None:
            self.decision = decision
        self.counted, self.refusal = counted, refusal
        return self

    def take_refusal(self) -> RpcError:
        """The refusal, to raise, no longer kept here. Raised, it carries a traceback whose frames
        hold this verdict: a verdict still holding it would make a reference cycle, which a node
        that froze it at a bundle swap (gc.freeze) never frees, with the bundle it holds."""
        refusal, self.refusal = self.refusal, None
        assert refusal is not None
        return refusal


def policy_outcome(decision: Decision, bypass: Bypass | None) -> RecordedDecision:
    """What policy makes of a tools/call before limits and approvals: a bypass, a shadow-mode denial
    that goes through (``would_deny``), or the policy's own effect."""
    if bypass is not None:
        return "bypass"
    if decision.effect == "deny" and decision.mode == "shadow":
        return "would_deny"
    return decision.effect


class Admission:
    def __init__(self, state: State, public_url: str, contracts: Contracts) -> None:
        self._state, self._contracts = state, contracts
        self._public_url = public_url  # where approvers are sent to approve

    async def wall(self, bundle: Bundle, principal: Principal, server: str
                   ) -> tuple[Server | None, bool]:
        """The visibility wall, checked once per request: the server if it is visible to the
        caller, and whether the caller may know it exists at all (it is visible, or a break-glass
        bypass opens it: looked up only when it is not visible)."""
        visible = visible_server(bundle.payload, principal, server)
        return visible, (visible is not None
                         or await self._bypass(bundle, principal, server) is not None)

    async def admit(self, call: Call, target: Target) -> Verdict:
        if target.found and not target.seen:  # an aggregate tool name, resolved but not judged
            target.visible, target.seen = await self.wall(call.bundle, call.principal, target.name)
        if not target.seen:
            named = (call.params.get(NAMED_PARAM[call.method]) if call.method in NAMED_PARAM
                     else target.named)  # the name as the caller gave it
            return Verdict(AGGREGATE, "not_found", "not_found",
                           tool=named if isinstance(named, str) else None,
                           refusal=not_found(call.method, named))
        if call.method == "tools/call":
            return await self._tool(call, target)
        return await self._passed(call, target)

    async def _tool(self, call: Call, target: Target) -> Verdict:
        """A tools/call: its contract, then policy, then break-glass, then limits, then
        approvals. A contract holds under break-glass too: a bypass opens policy, not a tool
        nobody reviewed or arguments the tool does not take."""
        name, tool = target.name, target.named
        if not isinstance(tool, str):
            return Verdict(name, None, None, refusal=RpcError(INVALID_REQUEST, "tools/call needs "
                                                              "params.name", 400))
        bundle, principal = call.bundle, call.principal
        arguments = call.params.get("arguments") or {}
        decision = decide_on(bundle.payload, target.visible, principal, tool, arguments)
        # Break-glass: an open bypass skips policy, limits and approvals (never auth or audit);
        # the policy is still evaluated, so the record says what it would have decided.
        spec = target.server.tools.get(tool) if target.server is not None else None
        bypass = await self._bypass(bundle, principal, name) if spec is not None else None
        outcome = policy_outcome(decision, bypass)
        verdict = Verdict(name, outcome, outcome, tool, tool, decision,
                          spec.access if spec is not None else None, arguments, bypass)
        if spec is not None and spec.pinned is not None and decision.effect != "not_found":
            assert target.server is not None
            unchecked = await self._contracts.ready(bundle, name, target.server)
            if unchecked is not None:
                return verdict.refuse(None, "upstream_unavailable", unchecked)
            broken = self._contracts.refusal(name, target.server, tool, spec.pinned, arguments)
            if broken is not None:
                refused: RecordedDecision = ("tool_changed" if broken.code == TOOL_CHANGED
                                             else "invalid_params")
                return verdict.refuse(refused, refused, broken)
        if bypass is not None:
            return verdict
        if decision.effect == "not_found":
            verdict.counted_tool = ""
            return verdict.refuse(None, "not_found", not_found(call.method, tool))
        if outcome == "deny":
            return verdict.refuse(None, "deny", RpcError(
                DENIED, f"{principal.subject} may not call {tool} on {name}",
                rules=list(decision.rule_ids)))
        limited = await self._limit(call, name, tool, decision)
        if limited is not None:
            return verdict.refuse("rate_limited", "rate_limited", limited)
        # Shadow mode makes only the access decision advisory: approvals still hold.
        if decision.approval_required:
            await self._approval(call, verdict, tool, arguments)
        return verdict

    async def _approval(self, call: Call, verdict: Verdict, tool: str, arguments: Any) -> None:
        """Go on only with an approval granted for exactly this call (used up by going on);
        otherwise refuse, with the pending approval the caller's approvers must decide."""
        name = verdict.server
        declared = call.bundle.payload.servers[name].tools[tool]
        spec = declared.approval
        assert spec is not None
        try:
            found = await self._state.approvals.redeem_or_request(
                call.principal, name, tool, arguments_digest(arguments), spec.approvers,
                arguments=arguments, sensitive=declared.sensitive)
        except TooManyApprovals as exc:  # answered as it is
            verdict.refuse(None, "too_many_approvals", exc)
            return
        except StateUnavailable as exc:
            log.warning("approvals unavailable", extra={
                "request_id": call.request[REQUEST_ID], "server": name, "reason": str(exc)})
            verdict.refuse(None, "state_unavailable", RpcError(
                STATE_UNAVAILABLE, "approvals cannot be checked: the gateway's shared state is "
                "unreachable", 503))
            return
        approval = found.approval
        if approval is not None:
            verdict.approval = approval.id
        if found.status == "redeemed":
            verdict.decision = verdict.counted = "approved"
            return
        if found.status == "denied" and approval is not None:
            verdict.refuse("deny", "approval_denied", RpcError(
                DENIED, f"the approval of this call ({approval.id}) was denied by "
                f"{approval.decided_by}", approval_id=approval.id))
            return
        assert approval is not None
        # Where approvers go: the approval's page, when the gateway signs browsers in (sign_in);
        # without it a page could not know who they are, so the API's approve URL.
        if call.bundle.payload.gateway.sign_in is not None:
            url = self._public_url + approval_page_path(approval.id)
            where = f"at {url}"
        else:
            url = self._public_url + approval_path(approval.id) + "/approve"
            where = f"POST {url}"
        verdict.refuse("approval_required", "approval_required", RpcError(
            APPROVAL_REQUIRED, f"{tool} on {name} needs an approval: ask one of "
            f"{', '.join(approval.approvers)} to approve {approval.id} ({where} or "
            f"`gwc approvals approve {approval.id}`), then call again with the same arguments",
            approval_id=approval.id, approve_url=url,
            approvers=list(approval.approvers), expires_at=utc_time(approval.expires)))

    async def _passed(self, call: Call, target: Target) -> Verdict:
        """A request that needs no tool decision: visible is enough. Reads and prompts still
        count against the server's limits; lists do not."""
        name, named = target.name, target.named
        bypass = await self._bypass(call.bundle, call.principal, name)
        outcome: RecordedDecision = "bypass" if bypass is not None else "allow"
        verdict = Verdict(name, outcome, outcome, named if isinstance(named, str) else None,
                          bypass=bypass)
        if call.method in USES and bypass is None:
            limited = await self._limit(call, name, None, None)
            if limited is not None:
                verdict.refuse("rate_limited", "rate_limited", limited)
        return verdict

    async def _bypass(self, bundle: Bundle, principal: Principal, server: str) -> Bypass | None:
        """The open break-glass bypass of ``server`` that covers this caller, if any (looked
        up only for members of the break-glass group)."""
        if not is_break_glass(bundle.payload, principal):
            return None
        return await self._state.bypasses.active(server)

    async def _limit(self, call: Call, name: str, tool: str | None,
                     decision: Decision | None) -> RpcError | None:
        """Every limit that applies (DESIGN rule 6), checked together: a refused call uses none."""
        limits = limits_for(call.bundle.payload, name, call.principal.subject, tool, decision)
        if not limits:
            return None
        checked = await self._state.limits.check_all(limits)
        if checked.allowed:
            return None
        retry = round(checked.retry_after_s, 3)
        return RpcError(RATE_LIMITED, f"rate limit reached ({checked.limited_by}); retry in "
                        f"{retry:g} s", 429, retry_after_s=retry,
                        headers={"Retry-After": str(max(1, round(checked.retry_after_s + 0.5)))})
