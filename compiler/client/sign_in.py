"""Signing a user in to a gateway from the command line, as a native OAuth client of the
gateway's own authorization server (``runtime/auth/``, docs/security.md "Signing in").

The flow: discovery from a 401 (``discovery.py``); one dynamic registration per gateway (RFC
7591: a public client whose redirect is ``http://127.0.0.1/callback``, which matches on any port);
the browser opened on an authorization-code request with PKCE S256 and ``resource=<the gateway's
public URL>`` (a token for the gateway itself works on ``/mcp`` and on the ``/v1/`` APIs); the
code received on a loopback listener (``loopback.py``), its ``state`` and ``iss`` (RFC 9207)
checked; the code redeemed; tokens kept in the token store (``token_store.py``).

After that, tokens are refreshed before they expire. Refresh tokens rotate, so the new one is
always stored, under a lock shared with every other ``gwc`` process of the user. A refresh refused
with ``invalid_grant`` ends the sign-in (a new one is needed); ``temporarily_unavailable`` or an
unreachable gateway keeps it for later. Signing out revokes the refresh token (RFC 7009).

:class:`Bearer` is what callers use: a static token (``GWC_TOKEN``, never signs in), or the stored
sign-in, which signs in again in the browser when it may (``gwc connect``) or says to run
``gwc login`` when it may not (``gwc approvals``, ``gwc bypass``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import webbrowser
from collections.abc import Callable
from typing import Any, Protocol

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from gwc.compiler.client.discovery import AuthServer, DiscoveryError, authorization_server, discover
from gwc.compiler.client.loopback import LoopbackReceiver
from gwc.compiler.client.token_store import Credentials, TokenStore

log = logging.getLogger("gwc.sign_in")
REDIRECT_URI = "http://127.0.0.1/callback"  # registered once; the gateway matches any loopback port
CLIENT_NAME = "gwc (command line)"
SIGN_IN_TIMEOUT_S = 300.0  # how long the browser has to come back
REFRESH_MARGIN_S = 60.0  # refresh when the access token has less left than this
TIMEOUT_S = 15.0
MAX_ANSWER_BYTES = 64 * 1024


class SignInError(Exception):
    """Signing in or refreshing failed; the message says why and what to do."""


class SignInEnded(SignInError):
    """The gateway ended the stored sign-in (``invalid_grant``, or an unknown client): a new
    sign-in in the browser is needed."""

    def __init__(self, message: str, registration_gone: bool = False) -> None:
        super().__init__(message)
        self.registration_gone = registration_gone


class GatewayBusy(SignInError):
    """The gateway could not refresh now (``temporarily_unavailable``, 5xx, unreachable): the
    tokens are kept for another try."""


def say(message: str) -> None:
    """A line for the person at the keyboard, on stderr (stdout is the protocol)."""
    print(f"gwc: {message}", file=sys.stderr, flush=True)


def can_open_browser() -> bool:
    """A graphical browser can be opened: on Linux and the BSDs only with a display, since
    ``webbrowser`` falls back to console browsers that would read the bridge's stdin."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def _post(session: Any, url: str, *, form: dict[str, str] | None = None,
                body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, JSON answer or None) of a POST to the authorization server."""
    import aiohttp

    try:
        async with session.post(url, data=form, json=body, allow_redirects=False,
                                headers={"Accept": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as response:
            raw = await response.content.read(MAX_ANSWER_BYTES)
            status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise GatewayBusy(f"cannot reach {url}: {type(exc).__name__} {exc}".rstrip()) from None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _oauth_error(status: int, answer: Any) -> tuple[str, str]:
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return answer["error"], str(answer.get("error_description") or "")
    return "", f"HTTP {status}"


class SignIn:
    """One gateway's sign-in: the stored credentials, refreshing them, a new sign-in in the
    browser, and signing out."""

    def __init__(self, gateway: str, store: TokenStore, session: Any, *, allow_http: bool = False,
                 open_browser: bool = True, show: Callable[[str], None] = say,
                 timeout_s: float = SIGN_IN_TIMEOUT_S) -> None:
        self.gateway, self.store, self.session = gateway, store, session
        self.allow_http, self.open_browser, self.show = allow_http, open_browser, show
        self.timeout_s = timeout_s
        self._credentials: Credentials | None = None
        self._loaded = False
        self._lock = asyncio.Lock()  # one refresh or sign-in at a time in this process

    async def stored(self) -> Credentials | None:
        if not self._loaded:
            self._credentials = await asyncio.to_thread(self.store.load, self.gateway)
            self._loaded = True
        return self._credentials

    async def _save(self, credentials: Credentials) -> None:
        self._credentials, self._loaded = credentials, True
        await asyncio.to_thread(self.store.save, credentials)

    # --- tokens in use ---------------------------------------------------------------------

    async def access_token(self, rejected: str | None = None) -> str | None:
        """A usable access token: the stored one, refreshed first when it is about to expire or
        is ``rejected`` (the one the gateway just refused). None: not signed in, or the sign-in
        ended. :class:`GatewayBusy` when a needed refresh cannot be done now."""
        async with self._lock:
            credentials = await self.stored()
            if credentials is not None and self._usable(credentials, rejected):
                return credentials.access_token
            if credentials is None or not credentials.refresh_token:
                return None
            lock = self.store.locked()  # every gwc process of this user: one refresh at a time
            await asyncio.to_thread(lock.acquire)
            try:
                # another process may have refreshed meanwhile: its tokens, not a reuse of ours
                credentials = await asyncio.to_thread(self.store.load, self.gateway)
                self._credentials = credentials
                if credentials is not None and self._usable(credentials, rejected):
                    return credentials.access_token
                if credentials is None or not credentials.refresh_token:
                    return None
                try:
                    refreshed = await self._refresh(credentials)
                except SignInEnded as exc:
                    log.info("sign-in ended", extra={"gateway": self.gateway, "reason": str(exc)})
                    if exc.registration_gone:
                        await asyncio.to_thread(self.store.delete, self.gateway)
                        self._credentials = None
                    else:
                        await self._save(credentials.without_tokens())
                    return None
                except GatewayBusy:
                    if rejected is None and not credentials.expiring(time.time(), 0):
                        return credentials.access_token  # still good for a while: try later
                    raise
                await self._save(refreshed)
                return refreshed.access_token
            finally:
                lock.release()

    @staticmethod
    def _usable(credentials: Credentials, rejected: str | None) -> bool:
        return (credentials.access_token is not None and credentials.access_token != rejected
                and not credentials.expiring(time.time(), REFRESH_MARGIN_S))

    async def _refresh(self, credentials: Credentials) -> Credentials:
        assert credentials.refresh_token is not None
        status, answer = await _post(self.session, credentials.token_endpoint, form={
            "grant_type": "refresh_token", "refresh_token": credentials.refresh_token,
            "client_id": credentials.client_id, "resource": credentials.resource})
        tokens = self._tokens(status, answer, "refreshing the sign-in")
        return self._with_tokens(credentials, tokens, keep_refresh=credentials.refresh_token)

    def _tokens(self, status: int, answer: Any, doing: str) -> dict[str, Any]:
        """The token endpoint's answer when it is one, else the error it stands for."""
        if (status == 200 and isinstance(answer, dict) and isinstance(answer.get("access_token"), str)
                and str(answer.get("token_type", "")).lower() == "bearer"):
            return answer
        error, description = _oauth_error(status, answer)
        message = f"{doing} at {self.gateway} failed: {error or 'error'} {description}".rstrip()
        if error == "invalid_grant":
            raise SignInEnded(message)
        if error == "invalid_client":  # the gateway forgot our registration (expired, restarted)
            raise SignInEnded(message, registration_gone=True)
        if error == "temporarily_unavailable" or status >= 500 or status == 429:
            raise GatewayBusy(message)
        raise SignInError(message)

    @staticmethod
    def _with_tokens(credentials: Credentials, tokens: dict[str, Any],
                     keep_refresh: str | None = None) -> Credentials:
        expires_in = tokens.get("expires_in")
        refresh = tokens.get("refresh_token")
        return Credentials(
            gateway=credentials.gateway, issuer=credentials.issuer,
            token_endpoint=credentials.token_endpoint,
            revocation_endpoint=credentials.revocation_endpoint, resource=credentials.resource,
            client_id=credentials.client_id, access_token=tokens["access_token"],
            refresh_token=refresh if isinstance(refresh, str) else keep_refresh,
            expires_at=(time.time() + expires_in if isinstance(expires_in, (int, float))
                        and not isinstance(expires_in, bool) else None))

    # --- signing in ------------------------------------------------------------------------

    async def probe(self) -> tuple[str, str | None]:
        """(resource asked for, challenge) of an unauthenticated call of the gateway's own API:
        what ``gwc login`` discovers the authorization server from."""
        import aiohttp

        url = f"{self.gateway}/v1/catalog"
        try:
            async with self.session.get(url, allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as response:
                status, challenge = response.status, response.headers.get("WWW-Authenticate")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SignInError(f"cannot reach the gateway at {self.gateway}: "
                              f"{type(exc).__name__} {exc}".rstrip()) from None
        if status != 401:
            raise SignInError(f"{url} answered HTTP {status} without a token, not 401: is "
                              f"{self.gateway} a gwc gateway?")
        return self.gateway, challenge

    async def sign_in(self, requested: str, challenge: str | None,
                      rejected: str | None = None) -> str:
        """Sign in in the browser and store the tokens; the new access token. ``requested`` is
        the URL whose 401 carried ``challenge``."""
        async with self._lock:
            current = await self.stored()
            if (current is not None and current.access_token and current.access_token != rejected
                    and not current.expiring(time.time(), REFRESH_MARGIN_S)):
                return current.access_token  # signed in by another request while this one waited
            try:
                server = await discover(self.session, self.gateway, requested, challenge,
                                        self.allow_http)
            except DiscoveryError as exc:
                raise SignInError(str(exc)) from None
            except Exception as exc:  # aiohttp's errors, without importing it at module level
                raise SignInError(f"cannot reach the gateway at {self.gateway}: "
                                  f"{type(exc).__name__} {exc}".rstrip()) from None
            credentials = current if current is not None and current.issuer == server.issuer \
                else await self._register(server)
            try:
                return await self._authorize(server, credentials)
            except SignInEnded as exc:
                if exc.registration_gone:  # register again next time
                    await asyncio.to_thread(self.store.delete, self.gateway)
                    self._credentials = None
                raise

    async def _register(self, server: AuthServer) -> Credentials:
        """RFC 7591 registration, kept (without tokens) before the browser opens."""
        if server.registration_endpoint is None:
            raise SignInError(f"the gateway at {self.gateway} does not let applications register "
                              "themselves (dynamic registration is off): set GWC_TOKEN instead")
        status, answer = await _post(self.session, server.registration_endpoint, body={
            "client_name": CLIENT_NAME, "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": "none"})
        if status not in (200, 201) or not isinstance(answer, dict) or not isinstance(
                answer.get("client_id"), str):
            error, description = _oauth_error(status, answer)
            raise SignInError(f"registering gwc at {self.gateway} failed: "
                              f"{error or 'error'} {description}".rstrip())
        credentials = Credentials(gateway=self.gateway, issuer=server.issuer,
                                  token_endpoint=server.token_endpoint,
                                  revocation_endpoint=server.revocation_endpoint,
                                  resource=server.resource, client_id=answer["client_id"])
        await self._save(credentials)
        return credentials

    async def _authorize(self, server: AuthServer, credentials: Credentials) -> str:
        state, verifier = generate_token(32), generate_token(64)
        async with LoopbackReceiver(state, self.gateway) as receiver:
            url = prepare_grant_uri(
                server.authorization_endpoint, credentials.client_id, "code",
                redirect_uri=receiver.redirect_uri, state=state,
                code_challenge=create_s256_code_challenge(verifier),
                code_challenge_method="S256", resource=server.resource)
            await self._show_browser(url)
            try:
                redirect = await receiver.wait(self.timeout_s)
            except TimeoutError:
                # perhaps the gateway forgot the registration and showed "Unknown application",
                # which never comes back here: the next try registers afresh
                await asyncio.to_thread(self.store.delete, self.gateway)
                self._credentials = None
                raise SignInError(f"no answer from the browser within {self.timeout_s:.0f} s; "
                                  "try again") from None
        params = redirect.params
        if server.iss_in_response and params.get("iss") != server.issuer:  # RFC 9207 mix-up
            raise SignInError(f"the sign-in answer came from {params.get('iss')!r}, not from "
                              f"{server.issuer}: refused")
        if "error" in params:
            if params["error"] == "invalid_client":
                raise SignInEnded("the gateway no longer knows gwc's registration; try again",
                                  registration_gone=True)
            raise SignInError(f"the gateway refused the sign-in: {params['error']} "
                              f"{params.get('error_description', '')}".rstrip())
        if not params.get("code"):
            raise SignInError("the sign-in answer carried no code")
        status, answer = await _post(self.session, server.token_endpoint, form={
            "grant_type": "authorization_code", "code": params["code"],
            "redirect_uri": receiver.redirect_uri, "client_id": credentials.client_id,
            "code_verifier": verifier, "resource": server.resource})
        signed_in = self._with_tokens(credentials, self._tokens(status, answer, "signing in"))
        await self._save(signed_in)
        self.show(f"signed in to {self.gateway}; tokens are kept in {self.store.where}")
        assert signed_in.access_token is not None
        return signed_in.access_token

    async def _show_browser(self, url: str) -> None:
        self.show(f"sign in to {self.gateway} in your browser: {url}")
        if self.open_browser and can_open_browser():
            opened = await asyncio.to_thread(webbrowser.open, url)
            if not opened:
                self.show("could not open a browser: open the address above yourself")

    # --- signing out -----------------------------------------------------------------------

    async def sign_out(self) -> str | None:
        """Revoke the refresh token and forget the sign-in; a warning when the gateway could not
        be told (the local entry is deleted anyway)."""
        async with self._lock:
            credentials = await self.stored()
            warning = None
            if credentials is not None and credentials.refresh_token:
                endpoint = credentials.revocation_endpoint
                if endpoint is None:
                    try:
                        endpoint = (await authorization_server(
                            self.session, credentials.issuer, self.allow_http)).revocation_endpoint
                    except (DiscoveryError, Exception):
                        endpoint = None
                if endpoint is None:
                    warning = "the gateway offers no revocation endpoint"
                else:
                    try:
                        status, answer = await _post(self.session, endpoint, form={
                            "token": credentials.refresh_token,
                            "token_type_hint": "refresh_token",
                            "client_id": credentials.client_id})
                        if status != 200:
                            error, description = _oauth_error(status, answer)
                            warning = f"the gateway refused the revocation: {error} {description}"
                    except GatewayBusy as exc:
                        warning = str(exc)
            await asyncio.to_thread(self.store.delete, self.gateway)
            self._credentials, self._loaded = None, True
            return warning


class Bearer(Protocol):
    """Where a request's bearer token comes from, and what to do when the gateway refuses it."""

    async def token(self) -> str | None: ...

    async def refused(self, sent: str | None, requested: str, challenge: str | None) -> str:
        """A new token to try again with, after a 401 for ``requested``; or SignInError."""
        ...


class StaticBearer:
    """``GWC_TOKEN``: used as given, never refreshed, never signs in."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str | None:
        return self._token

    async def refused(self, sent: str | None, requested: str, challenge: str | None) -> str:
        from gwc.compiler.client.discovery import bearer_params

        reason = bearer_params(challenge).get("error_description") or "no reason given"
        raise SignInError(f"the gateway refused the token in GWC_TOKEN ({reason}); set a valid "
                          "one, or unset GWC_TOKEN to sign in in the browser")


class StoredBearer:
    """The stored sign-in, refreshed as needed. ``interactive``: sign in again in the browser
    when there is none (``gwc connect``); else say to run ``gwc login``."""

    def __init__(self, sign_in: SignIn, interactive: bool) -> None:
        self.sign_in, self.interactive = sign_in, interactive

    async def token(self) -> str | None:
        token = await self.sign_in.access_token()
        if token is None and not self.interactive:
            raise self._not_signed_in()
        return token

    async def refused(self, sent: str | None, requested: str, challenge: str | None) -> str:
        token = await self.sign_in.access_token(rejected=sent)
        if token is not None and token != sent:
            return token
        if not self.interactive:
            raise self._not_signed_in()
        return await self.sign_in.sign_in(requested, challenge, rejected=sent)

    def _not_signed_in(self) -> SignInError:
        gateway = self.sign_in.gateway
        return SignInError(f"not signed in to {gateway}: run `gwc login --gateway {gateway}` "
                           "(or set GWC_TOKEN)")
