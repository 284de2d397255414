"""Browser pages of the gateway: who is signed in (a session cookie), forms that cannot be forged
(CSRF tokens), and HTML answers with the headers that keep them out of frames and sniffers.

A session is a random cookie value whose SHA-256 keys a record in the auth store (subject, groups,
CSRF token), so any node of a fleet knows the user and signing out on one ends it everywhere. The
cookie is HttpOnly, SameSite=Lax (it must come back on the top-level redirect from the IdP) and,
when the gateway is served over https, Secure with the ``__Host-`` prefix. Every form carries the
session's CSRF token, compared in constant time; SameSite alone is not relied on.
"""
from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from gwc.runtime.auth.store import AuthStore, secret_key
from gwc.runtime.policy.decide import Principal

SESSION_TTL_S = 8 * 3600
CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
       "frame-ancestors 'none'; base-uri 'none'")
SOURCE = re.compile(r"[a-z][a-z0-9+.-]*:(//[A-Za-z0-9.\-\[\]:]+)?")  # a CSP source: no injection
PAGE_HEADERS = {
    "Content-Security-Policy": CSP.format(form_action="'self'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                            autoescape=True, undefined=jinja2.StrictUndefined)


@dataclass(frozen=True, slots=True)
class BrowserUser:
    """The person behind a browser session."""

    subject: str
    groups: frozenset[str]
    csrf: str

    @property
    def principal(self) -> Principal:
        return Principal(self.subject, self.groups)


def page(name: str, *, status: int = 200, user: BrowserUser | None = None,
         form_target: str | None = None, **context: Any) -> web.Response:
    """A rendered page (``templates/<name>.html.j2``) with the headers every gateway page sends.
    Its forms post to the gateway only; ``form_target`` (an origin or a scheme) is where a form's
    answer may redirect besides (browsers check form-action on redirects too)."""
    body = _PAGES.get_template(f"{name}.html.j2").render(
        user=user.subject if user else None, csrf=user.csrf if user else "", **context)
    headers = PAGE_HEADERS if form_target is None or not SOURCE.fullmatch(form_target) else {
        **PAGE_HEADERS, "Content-Security-Policy": CSP.format(
            form_action=f"'self' {form_target}")}
    return web.Response(text=body, status=status, content_type="text/html", headers=headers)


def error_page(title: str, message: str, *, status: int = 400) -> web.Response:
    return page("error", status=status, title=title, message=message)


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a path on this gateway only, never another site (and
    nothing a Location header cannot carry)."""
    if (not path or len(path) > 2000 or not path.startswith("/") or path.startswith("//")
            or "\\" in path or not path.isascii() or not path.isprintable()):
        return "/approvals"
    return path


async def form_of(request: web.Request) -> Any | None:
    """A posted form, or None when its body cannot be read as one (a bogus charset, bad
    encoding): the caller answers with a page, not a stack trace."""
    try:
        return await request.post()
    except (ValueError, LookupError):
        return None


class BrowserSessions:
    def __init__(self, store: AuthStore, public_url: str, ttl_s: float = SESSION_TTL_S) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self.secure = public_url.startswith("https://")
        self.cookie = "__Host-gwc_session" if self.secure else "gwc_session"

    async def user(self, request: web.Request) -> BrowserUser | None:
        """The signed-in user, or None (no cookie, an unknown or expired session)."""
        value = request.cookies.get(self.cookie)
        if not value or len(value) > 200:
            return None
        record = await self._store.get("session", secret_key(value))
        if record is None:
            return None
        return BrowserUser(record["subject"], frozenset(record["groups"]), record["csrf"])

    async def start(self, response: web.StreamResponse, principal: Principal) -> BrowserUser:
        """Sign ``principal`` in on the browser ``response`` goes to."""
        user, value = await self.begin(principal)
        self.attach(response, value)
        return user

    async def begin(self, principal: Principal) -> tuple[BrowserUser, str]:
        """A new session (a fresh id: no fixation) and its cookie value, for :meth:`attach`."""
        value, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        await self._store.put("session", secret_key(value), {
            "subject": principal.subject, "groups": sorted(principal.groups), "csrf": csrf},
            self._ttl_s)
        return BrowserUser(principal.subject, principal.groups, csrf), value

    def attach(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(self.cookie, value, max_age=int(self._ttl_s), path="/", httponly=True,
                            secure=self.secure, samesite="Lax")

    async def end(self, request: web.Request, response: web.StreamResponse) -> None:
        value = request.cookies.get(self.cookie)
        if value:
            await self._store.delete("session", secret_key(value))
        response.del_cookie(self.cookie, path="/")

    @staticmethod
    def form_is_genuine(user: BrowserUser, form: dict[str, str] | Any) -> bool:
        """The form was posted by a page this session was shown (its CSRF token matches)."""
        sent = form.get("csrf", "")
        return isinstance(sent, str) and hmac.compare_digest(sent.encode(), user.csrf.encode())

    @staticmethod
    def login_redirect(request: web.Request) -> web.Response:
        """Send an anonymous browser to sign in, coming back to this page afterwards."""
        return web.Response(status=303, headers={
            **PAGE_HEADERS, "Location": f"/login?next={quote(request.path_qs, safe='')}"})
