"""The approval pages: approvers read what a call would do and approve or deny it in a browser.

- ``GET /approvals``: the approvals waiting for the signed-in user's decision, and the ones they
  asked for (whatever their status).
- ``GET /approvals/{id}``: one approval: who asked (subject, kind, acting-for), server and tool, the
  call's arguments as the approval kept them (the tool's ``sensitive`` arguments are ``"***"``;
  arguments over 16 KiB are not kept, the digest stands for them), when it was asked and expires,
  its status, and approve/deny buttons when the user may decide it.
- ``POST /approvals/{id}`` (``decision=approve|deny``, ``csrf``): decides it through the same
  :meth:`GovernanceApi.decide <gwc.runtime.api.governance.GovernanceApi.decide>` as the API (same
  rules, same ``approval`` record written before it takes effect), then 303 back to the page.

Who sees what is the API's rule (:func:`visible_to`): the requester and the approvers; to anyone
else an approval does not exist (404, also when deciding). A browser without a session is sent to
sign in (``/login``) and comes back. Forms carry the session's CSRF token; a form without it is
refused (403) and nothing changes. Refusals are pages with the decision's status (403, 404, 409,
503), never a trace. The session is the browser's (``gwc.runtime.auth.browser``): a person, never
an agent, so agents approve over the API only.
"""
from __future__ import annotations

import functools
import json
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gwc.runtime.api.governance import Decide
from gwc.runtime.auth.browser import PAGE_HEADERS, BrowserSessions, BrowserUser, error_page, form_of, page
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.approvals import (
    MAX_SHOWN_ARGUMENTS,
    Approval,
    Approvals,
    approval_page_path,
    is_own,
    may_approve,
    visible_to,
)
from gwc.runtime.governance.backend import Refusal, StateUnavailable
from gwc.runtime.protocol.errors import RpcError

log = logging.getLogger("gwc.governance")

PageHandler = Callable[["ApprovalPages", web.Request, BrowserUser], Awaitable[web.StreamResponse]]
Page = Callable[["ApprovalPages", web.Request], Awaitable[web.StreamResponse]]
DECISIONS = {"approve": True, "deny": False}
# Characters shown escaped (\uXXXX) in arguments: controls, format characters (bidirectional
# overrides, zero-width ones), separators and unassigned or private code points, so what an approver
# reads is what the call holds.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
STATUS_TEXT = {"pending": "waiting for a decision", "approved": "approved, not used yet",
               "denied": "denied", "used": "approved and used"}
TITLES = {400: "This form cannot be used", 403: "Not allowed", 404: "Approval not found",
          409: "Already decided", 503: "Try again shortly"}


def _visible_char(char: str) -> str:
    if char == "\n" or unicodedata.category(char) not in HIDDEN_CATEGORIES:
        return char
    code = ord(char)
    if code > 0xFFFF:  # a JSON escape is UTF-16: a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def pretty_arguments(kept: str | None) -> str | None:
    """The kept arguments as indented JSON, every invisible or direction-changing character escaped."""
    if kept is None:
        return None
    text = json.dumps(json.loads(kept), indent=2, sort_keys=True, ensure_ascii=False)
    return "".join(map(_visible_char, text))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _in(ts: float, now: float) -> str:
    left = ts - now
    if left <= 0:
        return "expired"
    minutes = int(left // 60)
    return f"in {minutes} min" if minutes else f"in {int(left)} s"


def requester_text(approval: Approval) -> str:
    req = approval.requester
    text = req.subject if req.kind == "human" else f"{req.subject} ({req.kind})"
    return text if req.acting_for is None else f"{text} for {req.acting_for}"


STATE_UNAVAILABLE = ("The gateway's shared state is unreachable, so approvals cannot be read or "
                     "decided right now. Nothing was changed.")


def _signed_in_page(handler: PageHandler) -> Page:
    """For the signed-in user only (anyone else is sent to sign in), and every refusal the handler
    knows answered as a page with its status, never a trace."""
    @functools.wraps(handler)
    async def guarded(self: ApprovalPages, request: web.Request) -> web.StreamResponse:
        try:
            user = await self._sessions.user(request)
        except StateUnavailable as exc:  # the sessions' store is the same shared state
            log.warning("approval pages: %s", exc)
            return error_page(TITLES[503], STATE_UNAVAILABLE, status=503)
        if user is None:
            return self._sessions.login_redirect(request)
        try:
            return await handler(self, request, user)
        except Refusal as exc:
            return _refused(user, exc.status, exc.message)
        except RpcError as exc:  # the auditor's own error (503 audit_unavailable)
            return _refused(user, exc.http_status if exc.http_status >= 400 else 503, exc.message)
        except StateUnavailable as exc:
            log.warning("approval pages: %s", exc)
            return _refused(user, 503, STATE_UNAVAILABLE)
    return guarded


def _refused(user: BrowserUser, status: int, message: str) -> web.Response:
    title = TITLES.get(status, "Refused")
    return page("approvals", status=status, user=user, title=title, error=(title, message))


class ApprovalPages:
    """``decide`` is :meth:`GovernanceApi.decide`; ``bundle()`` the node's active bundle (None
    before the first one loads: a decision's record needs it, so deciding waits for it)."""

    def __init__(self, sessions: BrowserSessions, approvals: Approvals, decide: Decide,
                 bundle: Callable[[], Bundle | None], clock: Callable[[], float] = time.time) -> None:
        self._sessions, self._approvals, self._decide = sessions, approvals, decide
        self._bundle, self._clock = bundle, clock

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/approvals", self.list_page),
                web.get("/approvals/{id}", self.approval_page),
                web.post("/approvals/{id}", self.decide_page)]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_routes(self.routes())

    async def _visible(self, approval_id: str, user: BrowserUser) -> Approval:
        """The approval, if this user may see it; to anyone else it does not exist."""
        approval = await self._approvals.get(approval_id)
        if approval is None or not visible_to(approval, user.principal):
            raise Refusal(404, "not_found", f"There is no approval {approval_id} you can see: it "
                          "expired, or you are neither its requester nor one of its approvers.")
        return approval

    def _row(self, approval: Approval, now: float) -> dict[str, Any]:
        return {"id": approval.id, "server": approval.server, "tool": approval.tool,
                "requester": requester_text(approval),
                "status_text": STATUS_TEXT.get(approval.status, approval.status),
                "expires": _when(approval.expires), "expires_in": _in(approval.expires, now),
                "link": approval_page_path(approval.id)}

    @_signed_in_page
    async def list_page(self, request: web.Request, user: BrowserUser) -> web.StreamResponse:
        principal, now = user.principal, self._clock()
        found = await self._approvals.list_for(principal)
        return page("approvals", user=user, title="Approvals",
                    waiting=[self._row(a, now) for a in found
                             if a.status == "pending" and may_approve(a, principal)],
                    own=[self._row(a, now) for a in found if is_own(a, principal)])

    def _show(self, approval: Approval, user: BrowserUser, *, status: int = 200,
              error: tuple[str, str] | None = None) -> web.Response:
        principal = user.principal
        return page(
            "approval", status=status, user=user,
            title=f"{approval.tool} on {approval.server}", approval=approval,
            requester=approval.requester, status_text=STATUS_TEXT.get(approval.status, approval.status),
            arguments=pretty_arguments(approval.arguments), max_shown_kib=MAX_SHOWN_ARGUMENTS // 1024,
            created=_when(approval.created), expires=_when(approval.expires),
            expires_in=_in(approval.expires, self._clock()), decided_at=_when(approval.decided_at),
            used_at=_when(approval.used_at), own=is_own(approval, principal),
            decided_by_you=approval.decided_by == user.subject,
            can_decide=approval.status == "pending" and may_approve(approval, principal),
            action=approval_page_path(approval.id), error=error)

    @_signed_in_page
    async def approval_page(self, request: web.Request, user: BrowserUser) -> web.StreamResponse:
        return self._show(await self._visible(request.match_info["id"], user), user)

    @_signed_in_page
    async def decide_page(self, request: web.Request, user: BrowserUser) -> web.StreamResponse:
        form = await form_of(request)
        if form is None or not BrowserSessions.form_is_genuine(user, form):
            raise Refusal(403, "csrf", "This form was not sent from a page the gateway showed you "
                          "in this browser session, so nothing was decided. Open the approval again "
                          "and decide there.")
        approve = DECISIONS.get(str(form.get("decision", "")))
        if approve is None:
            raise Refusal(400, "invalid_request", "The form must say approve or deny.")
        approval = await self._visible(request.match_info["id"], user)
        bundle = self._bundle()
        if bundle is None:
            raise Refusal(503, "not_ready", "The gateway has no valid bundle yet, so it cannot "
                          "record a decision. Nothing was changed.")
        try:
            await self._decide(request, bundle, user.principal, approval.id, approve)
        except Refusal as exc:
            if exc.status not in (403, 409):
                raise
            # the approval is there to show, with why this decision did not happen
            current = await self._approvals.get(approval.id) or approval
            return self._show(current, user, status=exc.status,
                              error=(TITLES.get(exc.status, "Refused"), exc.message))
        return web.Response(status=303, headers={**PAGE_HEADERS,
                                                 "Location": approval_page_path(approval.id)})

