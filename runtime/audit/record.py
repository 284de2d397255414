"""What a record says about a request: who called, what policy decided, and the typed record of one
MCP request. Records serialise to the trail's fields in the trail's order, which never changes:
existing trails still verify and ``gwc audit query|replay`` read old and new records alike. A
tracing node adds ``trace_id`` and ``span_id`` to its call and list records; others never have them."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, get_args

from gwc.runtime.policy.decide import Decision, Principal

# What a record's ``decision`` says: a policy effect, or what the gateway made of it (a shadow-mode
# denial that went through, an approval awaited or redeemed, a rate limit, a break-glass bypass),
# or a tool contract that refused the call before policy (arguments breaking the pinned schema, a
# definition that drifted from its pin).
RecordedDecision = Literal["allow", "deny", "would_deny", "not_found", "approval_required", "approved",
                           "rate_limited", "bypass", "invalid_params", "tool_changed"]
DECISIONS: tuple[RecordedDecision, ...] = get_args(RecordedDecision)


class Outcome(StrEnum):
    """How a request ended: a record's ``outcome``."""

    FORWARDED = "forwarded"  # an upstream answered, and the answer was relayed
    ANSWERED = "answered"  # the gateway answered it itself (the aggregate's lists)
    REFUSED = "refused"  # refused before any upstream saw it
    FAILED = "failed"  # the upstream failed, or broke off its answer
    DISCONNECTED = "disconnected"  # the client went away while its answer streamed

    @property
    def hands_out_an_answer(self) -> bool:
        """The answer waits for the record: an unwritten record withholds it (failure mode closed)."""
        return self in (Outcome.FORWARDED, Outcome.ANSWERED)


def principal_fields(principal: Principal) -> dict[str, Any]:
    return {"subject": principal.subject, "kind": principal.kind,
            "groups": sorted(principal.groups), "acting_for": principal.acting_for}


def policy_fields(decision: Decision) -> dict[str, Any]:
    """The policy evaluation as replay recomputes it."""
    return {"effect": decision.effect, "reason": decision.reason, "rules": list(decision.rule_ids),
            "mode": decision.mode, "approval_required": decision.approval_required}


def record_head(type_: str, time: str, request_id: str, client_request_id: str | None, node: str,
                bundle_digest: str, bundle_serial: int, principal: Principal) -> dict[str, Any]:
    """The fields every record of a request starts with, MCP call or governance action."""
    return {"type": type_, "time": time, "request_id": request_id,
            "client_request_id": client_request_id, "node": node,
            "bundle": {"digest": bundle_digest, "serial": bundle_serial},
            "principal": principal_fields(principal)}


@dataclass(slots=True)
class CallRecord:
    """The audit record of one MCP request, filled in as the request is decided and settled
    (only ``gwc.runtime.mcp.recording`` writes to it); :meth:`fields` is what the trail keeps."""

    type: str  # "call" when the request uses an upstream (counts against limits), else "list"
    time: str
    request_id: str
    client_request_id: str | None
    node: str
    bundle_digest: str
    bundle_serial: int
    principal: Principal
    endpoint: str  # the server of a per-server endpoint, "" for the aggregate /mcp
    method: str | None
    server: str | None
    tool: str | None = None  # the tool, prompt or resource the request is about
    access: str | None = None
    arguments: Any = None
    policy: Decision | None = None
    decision: RecordedDecision | None = None
    approval: str | None = None
    bypass: str | None = None
    outcome: Outcome | None = None
    error: str | None = None  # the refusal's or failure's stable reason
    upstream_status: int | None = None
    gateway_ms: float | None = None
    upstream_ms: float | None = None
    # with tracing on (OTEL_*): the request's trace and the node's span of it, else no such fields
    trace_id: str | None = None
    span_id: str | None = None

    def fields(self) -> dict[str, Any]:
        fields = record_head(self.type, self.time, self.request_id, self.client_request_id,
                             self.node, self.bundle_digest, self.bundle_serial, self.principal)
        fields.update(
            endpoint=self.endpoint, method=self.method, server=self.server, tool=self.tool,
            access=self.access, arguments=self.arguments,
            policy=policy_fields(self.policy) if self.policy is not None else None,
            decision=self.decision, approval=self.approval, bypass=self.bypass,
            outcome=self.outcome, error=self.error,  # a StrEnum: encoded as its text
            upstream_status=self.upstream_status,
            latency_ms={"gateway": self.gateway_ms, "upstream": self.upstream_ms})
        if self.trace_id is not None:  # a node that does not trace writes records as before
            fields["trace_id"], fields["span_id"] = self.trace_id, self.span_id
        return fields
