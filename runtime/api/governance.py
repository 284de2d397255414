"""The HTTP API of approvals and break-glass bypasses, for the ``gwc`` CLI and portals.

- ``GET /v1/approvals``: pending approvals the caller may decide, and the caller's own requests.
- ``GET /v1/approvals/{id}``: one, to its requester or its approvers (404 to anyone else), with the
  call's arguments (sensitive ones masked).
- ``POST /v1/approvals/{id}/approve`` and ``.../deny``: by an approver, never the requester.
  :meth:`GovernanceApi.decide` is the one path of a decision, shared with the approval pages
  (``approval_pages``): the approval record written, then the decision committed.
- ``POST /v1/bypass`` ``{"server", "reason", "ttl_s"}`` -> 201; ``GET /v1/bypass``;
  ``DELETE /v1/bypass/{id}`` (or ``POST /v1/bypass/{id}/close``): break-glass members only.

Answers are JSON; errors are ``{"error": {"reason", "message"}}`` with the HTTP status (401 with
``WWW-Authenticate``, 400, 403, 404, 409, 503), never a trace. Every change is audited before it
takes effect (records ``approval`` approved/denied, ``bypass`` opened/closed): when the record
cannot be written the answer is 503 ``audit_unavailable`` (or the auditor's own error) and nothing
changed. Shared state unreachable: 503 ``state_unavailable``.

The gateway injects what the API needs, so it is testable on its own: ``caller(request)`` -> (bundle,
principal) or raises ``RpcError``; ``audit(record)`` returns once the record is durable;
``base_record(request, bundle, principal, type)`` -> the fields every record has.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gwc.runtime.audit.chain import utc_time
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.approvals import Approval, approval_path, may_approve, visible_to
from gwc.runtime.governance.backend import Refusal, StateUnavailable
from gwc.runtime.governance.bypasses import Bypass, is_break_glass
from gwc.runtime.governance.state import State
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import RpcError

log = logging.getLogger("gwc.governance")

Caller = Callable[[web.Request], Awaitable[tuple[Bundle, Principal]]]
BaseRecord = Callable[[web.Request, Bundle, Principal, str], dict[str, Any]]
WriteRecord = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[["GovernanceApi", web.Request], Awaitable[web.Response]]
# (request, bundle, decider, approval id, approve?) -> the decided approval; raises as Approvals.decide
Decide = Callable[[web.Request, Bundle, Principal, str, bool], Awaitable[Approval]]
BYPASS_FIELDS = {"server", "reason", "ttl_s"}


def error_json(status: int, reason: str, message: str,
               headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"reason": reason, "message": message}}, status=status,
                             headers=headers)


def _answers_errors(handler: Handler) -> Handler:
    """Turn every refusal the handlers know into its JSON error answer."""
    @functools.wraps(handler)
    async def guarded(self: GovernanceApi, request: web.Request) -> web.Response:
        try:
            return await handler(self, request)
        except Refusal as exc:
            return error_json(exc.status, exc.reason, exc.message, exc.headers)
        except RpcError as exc:  # from caller (401, no bundle) or from the auditor (503)
            return error_json(exc.http_status if exc.http_status >= 400 else 503,
                              str(exc.data.get("reason")), exc.message, exc.headers)
        except StateUnavailable as exc:
            log.warning("governance API: %s", exc)
            return error_json(503, "state_unavailable", "the gateway's shared state is unreachable; "
                              "try again shortly")
    return guarded


def _time(ts: float | None) -> str | None:
    """The audit trail's fixed-width UTC form (None stays None)."""
    return None if ts is None else utc_time(ts)


def approval_json(approval: Approval, viewer: Principal | None = None, *,
                  arguments: bool = False) -> dict[str, Any]:
    """An approval as the API answers it; with ``arguments``, the call's arguments as kept (sensitive
    ones ``"***"``; null when they were too large to keep: the digest is all there is)."""
    out: dict[str, Any] = {"id": approval.id, "status": approval.status, "server": approval.server,
                           "tool": approval.tool, "arguments_digest": approval.arguments_digest,
                           "requester": approval.requester.as_dict(), "approvers": list(approval.approvers),
                           "created": _time(approval.created), "expires": _time(approval.expires),
                           "decided_by": approval.decided_by, "decided_at": _time(approval.decided_at),
                           "used_at": _time(approval.used_at), "path": approval_path(approval.id)}
    if viewer is not None:
        out["can_decide"] = approval.status == "pending" and may_approve(approval, viewer)
    if arguments:
        out["arguments"] = None if approval.arguments is None else json.loads(approval.arguments)
    return out


def bypass_json(bypass: Bypass) -> dict[str, Any]:
    return {"id": bypass.id, "server": bypass.server, "opened_by": bypass.opened_by,
            "reason": bypass.reason, "ttl_s": bypass.ttl_s, "opened_at": _time(bypass.opened_at),
            "expires": _time(bypass.expires)}


async def _json_body(request: web.Request, required: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and not required:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise Refusal(400, "invalid_request", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "invalid_request", "the body must be a JSON object")
    return body


class GovernanceApi:
    def __init__(self, caller: Caller, state: State, audit: WriteRecord, base_record: BaseRecord) -> None:
        self._caller, self._state, self._audit, self._base = caller, state, audit, base_record

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/approvals", self.list_approvals),
                web.get("/v1/approvals/{id}", self.show_approval),
                web.post("/v1/approvals/{id}/approve", self.approve),
                web.post("/v1/approvals/{id}/deny", self.deny),
                web.post("/v1/bypass", self.open_bypass),
                web.get("/v1/bypass", self.list_bypasses),
                web.delete("/v1/bypass/{id}", self.close_bypass),
                web.post("/v1/bypass/{id}/close", self.close_bypass)]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_routes(self.routes())

    async def _write(self, record: dict[str, Any]) -> None:
        try:
            await self._audit(record)
        except RpcError:
            raise
        except Exception as exc:
            log.error("governance API: audit record not written, nothing changed: %s", exc)
            raise Refusal(503, "audit_unavailable", "the audit record could not be written, so "
                           "nothing was changed") from exc

    # Approvals
    @_answers_errors
    async def list_approvals(self, request: web.Request) -> web.Response:
        _, principal = await self._caller(request)
        found = await self._state.approvals.list_for(principal)
        return web.json_response({"approvals": [approval_json(a, principal) for a in found]})

    @_answers_errors
    async def show_approval(self, request: web.Request) -> web.Response:
        _, principal = await self._caller(request)
        approval_id = request.match_info["id"]
        approval = await self._state.approvals.get(approval_id)
        if approval is None or not visible_to(approval, principal):
            raise Refusal(404, "not_found", f"no approval {approval_id} (or it expired)")
        return web.json_response(approval_json(approval, principal, arguments=True))

    async def decide(self, request: web.Request, bundle: Bundle, principal: Principal,
                     approval_id: str, approve: bool) -> Approval:
        """Approve or deny as ``principal``: the one way a decision is made, over the API or on
        the approval pages. Its ``approval`` record is written before it takes effect; raises
        ``ApprovalError`` (a ``Refusal``), ``Refusal`` 503 ``audit_unavailable`` (or the
        auditor's ``RpcError``) and ``StateUnavailable``, and then nothing changed."""
        async def audit(decided: Approval) -> None:
            await self._write({**self._base(request, bundle, principal, "approval"),
                               "event": decided.status, "approval": decided.id,
                               "server": decided.server, "tool": decided.tool,
                               "requester": decided.requester.as_dict(),
                               "arguments_digest": decided.arguments_digest})

        return await self._state.approvals.decide(approval_id, principal, approve, audit=audit)

    async def _decide(self, request: web.Request, approve: bool) -> web.Response:
        bundle, principal = await self._caller(request)
        await _json_body(request, required=False)
        decided = await self.decide(request, bundle, principal, request.match_info["id"], approve)
        return web.json_response(approval_json(decided, principal, arguments=True))

    @_answers_errors
    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, True)

    @_answers_errors
    async def deny(self, request: web.Request) -> web.Response:
        return await self._decide(request, False)

    # Bypasses
    async def _member(self, request: web.Request) -> tuple[Bundle, Principal]:
        bundle, principal = await self._caller(request)
        group = bundle.payload.gateway.break_glass.group
        if group is None:
            raise Refusal(403, "break_glass_disabled", "break-glass is not configured on this "
                           "gateway (gateway.yaml: break_glass.group)")
        if not is_break_glass(bundle.payload, principal):
            raise Refusal(403, "not_break_glass", f"only members of the break-glass group {group!r} "
                           "(people, not agents) may open, list or close bypasses")
        return bundle, principal

    def _bypass_audit(self, request: web.Request, bundle: Bundle,
                      principal: Principal) -> Callable[[str, Bypass], Awaitable[None]]:
        async def audit(event: str, bypass: Bypass) -> None:
            await self._write({**self._base(request, bundle, principal, "bypass"), "event": event,
                               "bypass": bypass.id, "server": bypass.server, "reason": bypass.reason,
                               "ttl_s": bypass.ttl_s, "expires": _time(bypass.expires)})
        return audit

    @_answers_errors
    async def open_bypass(self, request: web.Request) -> web.Response:
        bundle, principal = await self._member(request)
        body = await _json_body(request, required=True)
        unknown = sorted(set(body) - BYPASS_FIELDS)
        if unknown:
            raise Refusal(400, "invalid_request", f"unknown field(s) {', '.join(unknown)}; "
                           "expected server, reason, ttl_s")
        server = body.get("server")
        if not isinstance(server, str) or not server:
            raise Refusal(400, "invalid_request", "server (a server name) is required")
        if server not in bundle.payload.servers:
            raise Refusal(404, "not_found", f"no server {server!r} in the active bundle")
        bypass = await self._state.bypasses.open(
            server, principal.subject, body.get("reason"), body.get("ttl_s"),  # type: ignore[arg-type]
            max_ttl_s=bundle.payload.gateway.break_glass.max_ttl_s,
            audit=self._bypass_audit(request, bundle, principal))
        log.warning("break-glass bypass opened", extra={
            "bypass": bypass.id, "server": server, "subject": principal.subject, "ttl_s": bypass.ttl_s})
        return web.json_response(bypass_json(bypass), status=201)

    @_answers_errors
    async def list_bypasses(self, request: web.Request) -> web.Response:
        await self._member(request)
        return web.json_response({"bypasses": [bypass_json(b) for b in
                                               await self._state.bypasses.list_open()]})

    @_answers_errors
    async def close_bypass(self, request: web.Request) -> web.Response:
        bundle, principal = await self._member(request)
        bypass = await self._state.bypasses.close(
            request.match_info["id"], audit=self._bypass_audit(request, bundle, principal))
        log.warning("break-glass bypass closed", extra={
            "bypass": bypass.id, "server": bypass.server, "subject": principal.subject})
        return web.json_response({**bypass_json(bypass), "closed": True})
