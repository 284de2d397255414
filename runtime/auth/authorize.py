"""The browser's side of signing in: the authorization endpoint, the return from the IdP, the
consent page, and the plain ``/login`` of the gateway's own pages.

When a problem goes back to the client as an OAuth error (with ``state`` and ``iss``) and when it
is shown on a page of the gateway instead: until the client and its redirect URI are known to
match, always a page. After that, a redirect only to a redirect URI the gateway trusts without
asking anyone: a client its operators registered, or a loopback address (the user's own machine).
A client that registered itself or is known by a metadata document could name any site, so before
the user has seen the consent page (which names that site) its errors are pages too: the gateway
never bounces a browser to an unvetted site unasked (RFC 9700 §4.11.2, open redirection).

A login at the IdP is bound to the browser that started it: a cookie named after the login holds a
random value whose hash the login record keeps, so an IdP answer (``code`` and ``state``) replayed
into another browser is refused (login CSRF). The login record is taken once: a second return with
the same ``state`` finds nothing.
"""
from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gwc.runtime.auth.browser import BrowserSessions, error_page, form_of, page, safe_next
from gwc.runtime.auth.client_metadata import ClientMetadataError
from gwc.runtime.auth.clients import LOOPBACK_HOSTS, host_of
from gwc.runtime.auth.context import CODE_TTL_S, LOGIN_TTL_S, AuthContext, log, see_other
from gwc.runtime.auth.idp import IdpError
from gwc.runtime.auth.store import secret_key
from gwc.runtime.auth.tokens import new_secret
from gwc.runtime.bundle.format import SignIn
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.backend import StateUnavailable
from gwc.runtime.policy.decide import visible_server
from gwc.runtime.protocol.errors import RpcError

S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")  # RFC 6749 §3.3
MAX_PARAM_CHARS = 2000
MAX_STATE_CHARS = MAX_SCOPE_CHARS = 512
# Logins started a minute across the gateway (each is kept up to ten minutes): more than a
# company signs in at once, few enough that nobody fills the store with unfinished ones.
LOGINS_PER_MINUTE = 1200
Handler = Callable[[Any, web.Request], Awaitable[web.StreamResponse]]


class ClientRefusal(Exception):
    """An OAuth error for the client, sent to its redirect URI when that is trusted."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


def _unavailable(why: str) -> web.Response:
    return error_page("Signing in is unavailable", f"{why} Try again in a minute.", status=503)


def _pages_only(handler: Handler) -> Handler:
    """Whatever goes wrong in a browser step is a page: the shared state unreachable (503), a
    form that cannot be read (400); never a stack trace."""
    @functools.wraps(handler)
    async def guarded(self: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(self, request)
        except StateUnavailable:
            return _unavailable("The gateway's shared state cannot be reached.")
    return guarded


def _is_loopback(redirect_uri: str) -> bool:
    parts = urlsplit(redirect_uri)
    return parts.scheme == "http" and host_of(parts.netloc).lower() in LOOPBACK_HOSTS


def consent_key(subject: str, client_id: str, redirect_uri: str, resource: str) -> str:
    """Consent is remembered per user, client, where it redirects and which resource. A loopback
    redirect counts as one place whatever its port (native apps get a new port each time)."""
    parts = urlsplit(redirect_uri)
    target = "loopback" if _is_loopback(redirect_uri) else f"{parts.scheme}://{parts.netloc}"
    return secret_key("\0".join((subject, client_id, target, resource)))


class Authorization:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/oauth/authorize", self.authorize),
                web.get("/oauth/callback", self.callback),
                web.post("/oauth/consent", self.consent),
                web.get("/login", self.login),
                web.post("/logout", self.logout)]

    def _settings(self) -> tuple[Bundle, SignIn]:
        found = self.ctx.settings()
        if found is None:
            raise web.HTTPNotFound(text="sign-in is not enabled on this gateway (gateway.yaml "
                                   "sign_in)")
        return found

    def _binder_cookie(self, login_id: str) -> str:
        # __Secure-: a sibling subdomain cannot plant it over https (login CSRF)
        return (("__Secure-" if self.ctx.sessions.secure else "") + "gwc_login_"
                + secret_key(login_id)[:16])

    def _refuse(self, trusted: bool, redirect_uri: str, step: str, state: str | None,
                error: str, description: str) -> web.Response:
        """An OAuth error: to the client when its redirect URI is trusted, else on a page."""
        if trusted:
            return self.ctx.redirect(redirect_uri, step=step, error=error,
                                     error_description=description, state=state)
        self.ctx.metrics.count_sign_in(step, error)
        return error_page("This sign-in cannot go on", f"{description} ({error}). Start again "
                          "from your application.", status=503 if error ==
                          "temporarily_unavailable" else 400)

    @_pages_only
    async def authorize(self, request: web.Request) -> web.StreamResponse:
        bundle, settings = self._settings()
        query = request.query
        client_id, redirect_uri = query.get("client_id", ""), query.get("redirect_uri", "")
        if not client_id or len(client_id) > MAX_PARAM_CHARS:
            return error_page("This sign-in link is incomplete", "The request names no client "
                              "(client_id). Start again from your MCP client.")
        try:
            client = await self.ctx.clients.find(client_id, settings)
        except ClientMetadataError as exc:
            log.info("client metadata document refused", extra={"client_id": client_id[:200],
                                                                "reason": str(exc)})
            return error_page("This application cannot sign in here", "Its client metadata "
                              "document could not be fetched or is not valid (the gateway's "
                              "log says why).")
        if client is None:
            return error_page("Unknown application", "No application with this client_id is "
                              "registered with this gateway (invalid_client).")
        if (not redirect_uri or len(query.getall("redirect_uri")) > 1
                or not client.redirect_allowed(redirect_uri)):
            return error_page("This sign-in link is not valid", "The redirect_uri is not one "
                              "this application registered, so the gateway will not send you "
                              "there.")
        trusted = client.origin == "registered" or _is_loopback(redirect_uri)
        state = query.get("state")
        try:
            login = self._login_request(query, bundle)
            limit = await self.ctx.limits.check("oauth:authorize", LOGINS_PER_MINUTE)
            if not limit.allowed:
                raise ClientRefusal("temporarily_unavailable", "too many sign-ins are starting "
                                    "right now; try again in a minute")
            login_id, binder = new_secret(), new_secret()
            nonce, verifier = new_secret(), new_secret()
            await self.ctx.store.put("login", secret_key(login_id), {
                **login, "kind": "client", "binder": secret_key(binder), "nonce": nonce,
                "verifier": verifier, "client_id": client.client_id,
                "client_name": client.client_name, "client_origin": client.origin,
                "redirect_uri": redirect_uri, "trusted": trusted}, LOGIN_TTL_S)
            target = await self.ctx.idp(bundle).authorization_url(login_id, nonce, verifier)
        except ClientRefusal as refusal:
            return self._refuse(trusted, redirect_uri, "authorize", state, refusal.error,
                                refusal.description)
        except (StateUnavailable, IdpError) as exc:
            log.warning("sign-in could not start", extra={"reason": str(exc)})
            return self._refuse(trusted, redirect_uri, "authorize", state,
                                "temporarily_unavailable", "signing in is unavailable right now")
        return self._to_idp(target, login_id, binder)

    def _login_request(self, query: Any, bundle: Bundle) -> dict[str, Any]:
        """What the client asked for, checked: or the ClientRefusal that says what is wrong."""
        repeated = sorted(k for k in set(query) if len(query.getall(k)) > 1)
        if repeated:
            raise ClientRefusal("invalid_request", f"parameters given more than once: "
                                f"{', '.join(repeated)}")
        if query.get("response_type") != "code":
            raise ClientRefusal("unsupported_response_type", "only response_type=code")
        if query.get("code_challenge_method") != "S256":
            raise ClientRefusal("invalid_request", "PKCE is required with "
                                "code_challenge_method=S256")
        if not S256_CHALLENGE.fullmatch(query.get("code_challenge", "")):
            raise ClientRefusal("invalid_request", "code_challenge must be the 43-character S256 "
                                "challenge")
        state, scope = query.get("state"), query.get("scope", "")
        if state is not None and (len(state) > MAX_STATE_CHARS or not state.isprintable()):
            raise ClientRefusal("invalid_request", f"state must be at most {MAX_STATE_CHARS} "
                                "printable characters")
        if scope and (len(scope) > MAX_SCOPE_CHARS or not SCOPE.fullmatch(scope)):
            raise ClientRefusal("invalid_scope", "scope must be space-separated scope tokens, "
                                f"at most {MAX_SCOPE_CHARS} characters")
        resource = query.get("resource") or self.ctx.public_url + "/mcp"
        if not self.ctx.looks_like_resource(resource):
            raise ClientRefusal("invalid_target", "resource is not an MCP endpoint of this "
                                "gateway")
        return {"state": state, "code_challenge": query["code_challenge"], "resource": resource,
                "scope": scope}

    def _to_idp(self, target: str, login_id: str, binder: str) -> web.Response:
        response = see_other(target, status=302)
        response.set_cookie(self._binder_cookie(login_id), binder, max_age=LOGIN_TTL_S,
                            path="/oauth/callback", httponly=True, secure=self.ctx.sessions.secure,
                            samesite="Lax")
        return response

    @_pages_only
    async def login(self, request: web.Request) -> web.StreamResponse:
        """Sign in to the gateway's own pages (approvals), then go back to ``next``."""
        bundle, _ = self._settings()
        next_path = safe_next(request.query.get("next"))
        if await self.ctx.sessions.user(request) is not None:
            return see_other(next_path)
        login_id, binder, nonce, verifier = new_secret(), new_secret(), new_secret(), new_secret()
        try:
            await self.ctx.store.put("login", secret_key(login_id), {
                "kind": "browser", "binder": secret_key(binder), "nonce": nonce,
                "verifier": verifier, "next": next_path}, LOGIN_TTL_S)
            target = await self.ctx.idp(bundle).authorization_url(login_id, nonce, verifier)
        except IdpError:
            return _unavailable("The identity provider cannot be reached.")
        return self._to_idp(target, login_id, binder)

    @_pages_only
    async def logout(self, request: web.Request) -> web.StreamResponse:
        user = await self.ctx.sessions.user(request)
        form = await form_of(request)
        if user is not None and (form is None or not BrowserSessions.form_is_genuine(user, form)):
            return error_page("This form has expired", "Reload the page and try again.",
                              status=403)
        response = page("signed_out", title="Signed out")
        await self.ctx.sessions.end(request, response)
        return response

    @_pages_only
    async def callback(self, request: web.Request) -> web.StreamResponse:
        """The IdP sends the browser back here with a code (or an error) for one login."""
        bundle, settings = self._settings()
        query = request.query
        state = query.get("state", "")
        login = (await self.ctx.store.take("login", secret_key(state))
                 if 0 < len(state) <= MAX_PARAM_CHARS else None)
        if login is None:
            return error_page("This sign-in has expired", "It took too long, or this page was "
                              "already used. Start again from your application.")
        cookie = self._binder_cookie(state)
        if not hmac.compare_digest(secret_key(request.cookies.get(cookie, "")), login["binder"]):
            log.warning("sign-in returned to another browser than the one that started it")
            return error_page("This sign-in was started elsewhere", "It was started in another "
                              "browser, so it cannot be finished here. Start again from your "
                              "application.", status=403)
        response = await self._signed_in(request, bundle, settings, login)
        response.del_cookie(cookie, path="/oauth/callback")
        return response

    async def _signed_in(self, request: web.Request, bundle: Bundle, settings: SignIn,
                         login: dict[str, Any]) -> web.Response:
        query = request.query
        refusal: tuple[str, str] | None = None
        if query.get("iss") not in (None, bundle.payload.gateway.identity.issuer):
            refusal = ("access_denied", "the answer did not come from the identity provider")
        elif "error" in query or not query.get("code"):
            refusal = ("access_denied", "the identity provider did not sign you in")
        else:
            try:
                signed_in = await self.ctx.idp(bundle).redeem(query["code"], login["verifier"],
                                                              login["nonce"])
            except IdpError as exc:
                log.warning("IdP login failed", extra={"reason": str(exc)})
                refusal = ("access_denied" if exc.refused else "temporarily_unavailable", str(exc))
        if refusal is not None:
            if login["kind"] == "browser":
                return error_page("You are not signed in", refusal[1], status=403)
            return self._refuse(login["trusted"], login["redirect_uri"], "callback",
                                login["state"], *refusal)
        principal = signed_in.principal
        if login["kind"] == "browser":
            response = see_other(login["next"])
            await self.ctx.sessions.start(response, principal)
            return response
        server = self.ctx.server_of(login["resource"])
        if server is not None and visible_server(bundle.payload, principal, server) is None:
            # a server that does not exist answers exactly as one this user may not see
            return self._refuse(login["trusted"], login["redirect_uri"], "callback",
                                login["state"], "invalid_target",
                                "resource is not an MCP endpoint of this gateway")
        grant = {**{k: login[k] for k in ("client_id", "client_name", "client_origin",
                                          "redirect_uri", "state", "code_challenge", "resource",
                                          "scope")},
                 "subject": principal.subject, "groups": sorted(principal.groups),
                 "idp_refresh": signed_in.refresh_token}
        key = consent_key(principal.subject, grant["client_id"], grant["redirect_uri"],
                          grant["resource"])
        user, session = await self.ctx.sessions.begin(principal)
        if settings.consent_ttl_s and await self.ctx.store.get("consent", key) is not None:
            response = await self._issue_code(grant)
        else:
            grant_id = new_secret()
            await self.ctx.store.put("consent_pending", secret_key(grant_id), grant, LOGIN_TTL_S)
            target = urlsplit(grant["redirect_uri"])
            response = page("consent", title="Allow access?", user=user, grant=grant_id,
                            form_target=(f"{target.scheme}://{target.netloc}" if target.netloc
                                         else f"{target.scheme}:"),
                            client_name=grant["client_name"], client_id=grant["client_id"],
                            client_origin=grant["client_origin"],
                            redirect_host=target.netloc or target.scheme + ":",
                            resource=grant["resource"], groups=sorted(principal.groups))
        self.ctx.sessions.attach(response, session)
        return response

    @_pages_only
    async def consent(self, request: web.Request) -> web.StreamResponse:
        bundle, settings = self._settings()
        form = await form_of(request)
        user = await self.ctx.sessions.user(request)
        if user is None:
            return error_page("You are not signed in", "Your sign-in session has ended. Start "
                              "again from your application.", status=403)
        if form is None or not BrowserSessions.form_is_genuine(user, form):
            return error_page("This form has expired", "It was not sent by a page of this "
                              "sign-in. Start again from your application.", status=403)
        grant_id = str(form.get("grant", ""))
        grant = (await self.ctx.store.take("consent_pending", secret_key(grant_id))
                 if 0 < len(grant_id) <= MAX_PARAM_CHARS else None)
        if grant is None or grant["subject"] != user.subject:
            return error_page("This request has expired", "It took too long or was already "
                              "answered. Start again from your application.")
        decision = "consent_granted" if form.get("decision") == "allow" else "consent_denied"
        try:
            await self.ctx.audit(request, bundle, user.principal, decision,
                                 client_id=grant["client_id"], resource=grant["resource"],
                                 redirect_uri=grant["redirect_uri"])
        except RpcError:
            return _unavailable("The gateway cannot write its audit trail right now, so it "
                                "gives no access.")
        if decision == "consent_denied":  # the user saw where this goes: a redirect is fine
            log.info("consent denied", extra={"subject": user.subject,
                                              "client_id": grant["client_id"]})
            return self.ctx.redirect(grant["redirect_uri"], step="consent", error="access_denied",
                                     error_description="the user did not allow access",
                                     state=grant["state"])
        if settings.consent_ttl_s:
            await self.ctx.store.put("consent", consent_key(
                user.subject, grant["client_id"], grant["redirect_uri"], grant["resource"]),
                {"at": grant["client_id"]}, settings.consent_ttl_s)
        return await self._issue_code(grant)

    async def _issue_code(self, grant: dict[str, Any]) -> web.Response:
        code = new_secret()
        await self.ctx.store.put("code", secret_key(code), grant, CODE_TTL_S)
        await self.ctx.clients.signed_in_with(grant["client_id"], grant["client_origin"])
        log.info("authorization code issued", extra={"subject": grant["subject"],
                                                     "client_id": grant["client_id"],
                                                     "resource": grant["resource"]})
        return self.ctx.redirect(grant["redirect_uri"], step="code", code=code,
                                 state=grant["state"])
