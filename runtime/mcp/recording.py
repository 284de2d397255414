"""The one place a request's fate becomes its audit record, its metric counts and its decision log
line: a record is opened when a request is understood, filled in from admission's verdict, and
written once the request is settled (answered, refused or failed)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gwc.runtime.audit.chain import utc_time
from gwc.runtime.audit.record import CallRecord, Outcome
from gwc.runtime.audit.shape import arguments_record
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.mcp.admission import USES, Verdict, policy_outcome
from gwc.runtime.mcp.routes import PASSED_METHODS, Call
from gwc.runtime.mcp.trail import Auditor
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Decision, Principal
from gwc.runtime.protocol.errors import RpcError
from gwc.runtime.request_keys import CLIENT_REQUEST_ID, REQUEST_ID, STARTED
from gwc.runtime.upstream.client import Answer

if TYPE_CHECKING:
    from gwc.runtime.telemetry.spans import Tracing

log = logging.getLogger("gwc.mcp")
# Requests the gateway answers itself, with no audit record.
ANSWERED_HERE = frozenset({"initialize", "ping", "server/discover"})
# The method label of gwc_requests_total: MCP methods the gateway serves and HTTP methods.
METHOD_LABELS = frozenset({*PASSED_METHODS, *USES, *ANSWERED_HERE, "GET", "POST", "DELETE"})
UNKNOWN_LABEL, OTHER_LABEL = "unknown", "other"
UNKNOWN_SERVER = Decision("not_found", "unknown_server")  # what the wall decides, for the record


class Recording:
    def __init__(self, auditor: Auditor, metrics: Metrics, active: Callable[[], Bundle | None],
                 tracing: Tracing | None = None) -> None:
        self._auditor, self._metrics, self._active = auditor, metrics, active
        self._tracing = tracing  # when the node traces: the span's ids go into the record

    def count(self, name: str, tool: str, decision: str, method: str) -> None:
        """Count a request. Labels never take a caller's words: a server name not in the bundle
        is ``unknown`` and a method outside the known set ``other``, so no caller can make
        series without end (tool names reach here only once resolved against the bundle)."""
        if name:
            bundle = self._active()
            if bundle is None or name not in bundle.payload.servers:
                name = UNKNOWN_LABEL
        self._metrics.count_request(
            name, method if method in METHOD_LABELS else OTHER_LABEL, tool, decision)

    def _new(self, request: web.Request, bundle: Bundle, principal: Principal, type_: str,
             endpoint: str, method: str | None) -> CallRecord:
        return CallRecord(type_, utc_time(time.time()), request[REQUEST_ID],
                          request.get(CLIENT_REQUEST_ID), self._auditor.node, bundle.digest,
                          bundle.serial, principal, endpoint, method, endpoint or None)

    def open(self, call: Call) -> None:
        """Give the call its record (with ``--audit none``, and for what the gateway answers
        itself, there is none)."""
        if self._auditor.enabled and call.method not in ANSWERED_HERE:
            call.record = self._new(call.request, call.bundle, call.principal,
                                    "call" if call.method in USES else "list", call.endpoint,
                                    call.method)
        if self._tracing is not None:
            self._describe(self._tracing, call)

    @staticmethod
    def _describe(tracing: Tracing, call: Call) -> None:
        """Name the request's span after its JSON-RPC request, and file its ids in the record."""
        session = call.session
        meta = call.params.get("_meta")
        version = (session.protocol_version if session is not None else
                   str(meta.get("io.modelcontextprotocol/protocolVersion")) if isinstance(meta, dict)
                   else "")
        ids = tracing.describe(call.method, call.params.get("name"), call.endpoint, call.id,
                               version)
        if call.record is not None and ids is not None:
            call.record.trace_id, call.record.span_id = ids

    def unauthenticated(self, request: web.Request, endpoint: str, error: RpcError) -> None:
        """No principal, so no audit record: a log line and a count."""
        log.info("refused", extra={"request_id": request[REQUEST_ID], "path": request.path,
                                   "reason": error.data["reason"], "detail": error.message})
        self.count(endpoint, "", error.data["reason"], request.method)

    async def unseen(self, request: web.Request, bundle: Bundle, principal: Principal,
                     endpoint: str, error: RpcError) -> None:
        """A server outside the caller's visibility: refused as not found, and recorded like every
        other denial."""
        self.count(endpoint, "", "not_found", request.method)
        if self._auditor.enabled:
            record = self._new(request, bundle, principal, "call", endpoint, None)
            record.policy, record.decision = UNKNOWN_SERVER, "not_found"
            if self._tracing is not None and (ids := self._tracing.current_ids()) is not None:
                record.trace_id, record.span_id = ids
            await self._write(record, Outcome.REFUSED, error, None, request[STARTED])

    def note(self, call: Call, verdict: Verdict) -> None:
        """Admission's verdict into the call's record and counts."""
        record, decision = call.record, verdict.policy
        if decision is not None and verdict.tool is not None:  # a tools/call that policy judged
            if record is not None:
                record.server, record.access = verdict.server, verdict.access
                record.arguments = arguments_record(call.bundle.payload, verdict.server,
                                                    verdict.tool, verdict.arguments)
                record.policy = decision
            if log.isEnabledFor(logging.DEBUG):
                self._log_decision(call, verdict, decision)
        if record is not None and verdict.decision is not None:
            record.tool, record.decision = verdict.tool, verdict.decision
            record.bypass = verdict.bypass.id if verdict.bypass is not None else None
            record.approval = verdict.approval
        if verdict.counted is not None:
            self.count(verdict.server, verdict.counted_tool, verdict.counted, call.method)

    def answered(self, call: Call) -> None:
        """An aggregate list, which the gateway answers itself from its catalog."""
        self.count("", "", "allow", call.method)
        if call.record is not None:
            call.record.decision = "allow"

    @staticmethod
    def _log_decision(call: Call, verdict: Verdict, decision: Decision) -> None:
        """The decision as a debug log line; the audit trail is the record of it."""
        principal = call.principal
        log.debug("decision", extra={
            "request_id": call.request[REQUEST_ID], "subject": principal.subject,
            "kind": principal.kind, "acting_for": principal.acting_for,
            "groups": sorted(principal.groups), "server": verdict.server, "tool": verdict.tool,
            "access": decision.access, "decision": policy_outcome(decision, verdict.bypass),
            "reason": decision.reason, "rules": list(decision.rule_ids),
            "bundle_serial": call.bundle.serial})

    async def settle(self, call: Call, outcome: Outcome, error: RpcError | None = None,
                     answer: Answer | None = None) -> None:
        """Write the call's record (once). For an answer that used an upstream, a record that
        cannot be written withholds the answer (audit failure mode closed); a refusal stands."""
        record, call.record = call.record, None
        if record is not None:
            await self._write(record, outcome, error, answer, call.request[STARTED])

    async def _write(self, record: CallRecord, outcome: Outcome, error: RpcError | None,
                     answer: Answer | None, started: float) -> None:
        total = time.perf_counter() - started
        upstream_s = answer.upstream_s if answer is not None else None
        record.outcome, record.error = outcome, error.data["reason"] if error else None
        record.upstream_status = answer.response.status if answer is not None else None
        record.gateway_ms = round((total - (upstream_s or 0.0)) * 1000, 3)
        record.upstream_ms = None if upstream_s is None else round(upstream_s * 1000, 3)
        try:
            if self._tracing is None:
                await self._auditor.write(record.fields())
            else:
                self._tracing.annotate({"gwc.outcome": str(outcome), "gwc.decision": record.decision,
                                        "gwc.server": record.server, "error.type": record.error})
                await self._tracing.child("gwc.audit.write", self._auditor.write(record.fields()))
        except RpcError:
            if outcome.hands_out_an_answer:
                raise
