"""The client's side of signing in: redeeming a code, refreshing, revoking, registering.

Every answer is JSON with ``Cache-Control: no-store``; every refusal an RFC 6749 §5.2 error
(``invalid_request``, ``invalid_client``, ``invalid_grant``, ``invalid_target``,
``unsupported_grant_type``, ``temporarily_unavailable``), never a 500.

A code is taken from the store before it is checked, so a wrong verifier or redirect burns it: the
client starts over, an attacker gets one guess. A code presented twice revokes the refresh tokens
issued from it (RFC 6749 §4.1.2). A refresh token presented twice revokes its family.
"""
from __future__ import annotations

import hmac
import re
import time
from typing import Any

from aiohttp import web
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from gwc.runtime.auth.browser import form_of
from gwc.runtime.auth.clients import RegistrationError
from gwc.runtime.auth.context import NO_STORE, AuthContext, OAuthError, log, sign_in_id
from gwc.runtime.auth.idp import IdpError
from gwc.runtime.auth.store import secret_key
from gwc.runtime.auth.tokens import new_secret
from gwc.runtime.bundle.format import SignIn
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.backend import StateUnavailable
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import RpcError

VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 §4.1
USED_MARK_TTL_S = 3600  # how long a used code or refresh token is remembered, to detect reuse
MAX_TOKEN_CHARS = 512
# Dynamic registrations the whole gateway (every node, with Redis) accepts a minute: enough for
# a company's people adding clients, not for filling the store.
REGISTRATIONS_PER_MINUTE = 120


STATE_UNAVAILABLE = OAuthError("temporarily_unavailable", "the gateway's shared state cannot be "
                               "reached", 503)


def same(sent: str, kept: str) -> bool:
    """Constant-time equality of any two texts (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(sent.encode(), kept.encode())


class TokenEndpoint:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/oauth/token", self.token), web.post("/oauth/revoke", self.revoke),
                web.post("/oauth/register", self.register)]

    def _settings(self) -> tuple[Bundle, SignIn]:
        found = self.ctx.settings()
        if found is None:
            raise OAuthError("invalid_request", "sign-in is not enabled on this gateway", 404)
        return found

    async def _form(self, request: web.Request) -> dict[str, str]:
        if request.content_type != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "send the parameters as "
                             "application/x-www-form-urlencoded")
        if request.headers.get("Authorization", "").lower().startswith("basic "):
            raise OAuthError("invalid_client", "this gateway's clients are public: send "
                             "client_id, no secret", 401)
        form = await form_of(request)
        if form is None:
            raise OAuthError("invalid_request", "the form cannot be read (its charset?)")
        repeated = sorted(k for k in set(form) if len(form.getall(k)) > 1)
        if repeated:
            raise OAuthError("invalid_request", f"parameters given more than once: "
                             f"{', '.join(repeated)}")
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def token(self, request: web.Request) -> web.Response:
        try:
            bundle, settings = self._settings()
            form = await self._form(request)
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                answer = await self._redeem_code(request, form, bundle, settings)
            elif grant_type == "refresh_token":
                answer = await self._refresh(request, form, bundle, settings)
            else:
                raise OAuthError("unsupported_grant_type", "grant_type must be "
                                 "authorization_code or refresh_token")
        except OAuthError as refusal:
            log.info("token request refused", extra={"error": refusal.error,
                                                     "reason": refusal.description})
            self.ctx.metrics.count_sign_in("token", refusal.error)
            return refusal.response()
        except StateUnavailable:
            return STATE_UNAVAILABLE.response()
        except RpcError:  # the audit trail fails closed: no tokens without their record
            return OAuthError("temporarily_unavailable", "the audit trail cannot be written",
                              503).response()
        self.ctx.metrics.count_sign_in("token", "ok")
        return web.json_response(answer, headers=NO_STORE)

    async def _note(self, request: web.Request, bundle: Bundle, subject: str, event: str,
                    **fields: Any) -> None:
        """A record of something that went wrong for a sign-in; written if the trail can, as
        what it records (a revocation) has happened either way."""
        try:
            await self.ctx.audit(request, bundle, Principal(subject), event, **fields)
        except Exception as exc:  # the revocation stands; its record is what was lost
            log.error("sign-in record not written", extra={"event": event, "reason": str(exc)})

    async def _reused(self, request: web.Request, bundle: Bundle, used: dict[str, Any],
                      event: str) -> OAuthError:
        """A code or refresh token presented again: its sign-in is revoked (it leaked, or a
        copy is in use), the trail says so, and the answer is ``invalid_grant``."""
        await self.ctx.store.delete("family", used["family"])
        log.warning("a code or refresh token was used twice: its sign-in is revoked",
                    extra={"subject": used["subject"], "event": event})
        await self._note(request, bundle, used["subject"], event, client_id=used["client_id"],
                         sign_in=sign_in_id(used["family"]))
        return OAuthError("invalid_grant", "this code or refresh token was already used; its "
                          "sign-in is revoked, sign in again")

    async def _unused(self, request: web.Request, bundle: Bundle, kind: str, key: str
                      ) -> dict[str, Any]:
        """The code's or refresh token's record; ``invalid_grant`` when it is unknown, expired or
        used (and then, if it was used, its sign-in is revoked)."""
        found = await self.ctx.store.get(kind, key)
        if found is not None:
            return found
        used = await self.ctx.store.get(f"{kind}_used", key)
        if used is not None:
            raise await self._reused(request, bundle, used, f"{kind}_reused")
        raise OAuthError("invalid_grant", f"the {kind.replace('_', ' ')} is unknown, expired or "
                         "already used")

    async def _redeem_code(self, request: web.Request, form: dict[str, str], bundle: Bundle,
                           settings: SignIn) -> dict[str, Any]:
        code, verifier = form.get("code", ""), form.get("code_verifier", "")
        if not code or not form.get("client_id") or len(code) > MAX_TOKEN_CHARS:
            raise OAuthError("invalid_request", "code and client_id are required")
        key = secret_key(code)
        grant = await self._unused(request, bundle, "code", key)
        family = new_secret()
        used = {"family": family, "subject": grant["subject"], "client_id": grant["client_id"]}
        # the sign-in exists before its code is taken, so a reuse at any moment can revoke it
        await self.ctx.store.put("family", family, {"subject": grant["subject"]},
                                 settings.refresh_token_ttl_s)
        # taken and marked used in one step: from here on, any other presentation is a reuse
        if await self.ctx.store.take("code", key, mark=("code_used", used,
                                                        USED_MARK_TTL_S)) is None:
            # another redemption took it first: the sign-in to revoke is the one it started
            winner = await self.ctx.store.get("code_used", key)
            raise await self._reused(request, bundle, winner or used, "code_reused")
        if not same(form["client_id"], grant["client_id"]):
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization "
                             "request's")
        if not VERIFIER.fullmatch(verifier) or not same(create_s256_code_challenge(verifier),
                                                        grant["code_challenge"]):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        if form.get("resource", grant["resource"]) != grant["resource"]:
            raise OAuthError("invalid_target", "resource differs from the authorization "
                             "request's")
        if not self.ctx.serves(bundle, grant["resource"]):
            raise OAuthError("invalid_target", "resource is no longer served by this gateway")
        principal = Principal(grant["subject"], frozenset(grant["groups"]))
        await self.ctx.audit(request, bundle, principal, "tokens_issued",
                             grant_type="authorization_code", client_id=grant["client_id"],
                             resource=grant["resource"], sign_in=sign_in_id(family))
        expires = time.time() + settings.refresh_token_ttl_s
        return await self._issue(grant, principal, family, expires, grant["idp_refresh"],
                                 settings)

    async def _issue(self, grant: dict[str, Any], principal: Principal, family: str,
                     family_expires: float, idp_refresh: str | None, settings: SignIn
                     ) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "access_token": self.ctx.tokens.mint(principal, client_id=grant["client_id"],
                                                 resource=grant["resource"],
                                                 scope=grant["scope"],
                                                 ttl_s=settings.access_token_ttl_s),
            "token_type": "Bearer", "expires_in": settings.access_token_ttl_s}
        if grant["scope"]:
            answer["scope"] = grant["scope"]
        left = family_expires - time.time()
        if idp_refresh is not None and left > 0:
            refresh = new_secret()
            # only while the sign-in stands: a revocation during this refresh is not undone
            if not await self.ctx.store.put_while("refresh", secret_key(refresh), {
                    "family": family, "family_expires": family_expires,
                    "client_id": grant["client_id"], "resource": grant["resource"],
                    "scope": grant["scope"], "subject": principal.subject,
                    "groups": sorted(principal.groups), "idp_refresh": idp_refresh}, left,
                    exists=("family", family)):
                raise OAuthError("invalid_grant", "this sign-in was revoked; sign in again")
            answer["refresh_token"] = refresh
        log.info("tokens issued", extra={"subject": principal.subject,
                                         "client_id": grant["client_id"],
                                         "resource": grant["resource"]})
        return answer

    async def _refresh(self, request: web.Request, form: dict[str, str], bundle: Bundle,
                       settings: SignIn) -> dict[str, Any]:
        token = form.get("refresh_token", "")
        if not token or not form.get("client_id") or len(token) > MAX_TOKEN_CHARS:
            raise OAuthError("invalid_request", "refresh_token and client_id are required")
        key = secret_key(token)
        record = await self._unused(request, bundle, "refresh", key)
        # a refusal here leaves the token as it was: the client may try again, correctly
        if not same(form["client_id"], record["client_id"]):
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if form.get("resource", record["resource"]) != record["resource"]:
            raise OAuthError("invalid_target", "resource differs from the one signed in for")
        left = max(record["family_expires"] - time.time(), 1)
        used = {"family": record["family"], "subject": record["subject"],
                "client_id": record["client_id"]}
        if await self.ctx.store.take("refresh", key, mark=("refresh_used", used, left)) is None:
            raise await self._reused(request, bundle, used, "refresh_reused")  # a concurrent use
        if await self.ctx.store.get("family", record["family"]) is None:
            raise OAuthError("invalid_grant", "this sign-in was revoked; sign in again")
        known = Principal(record["subject"], frozenset(record["groups"]))
        try:
            login = await self.ctx.idp(bundle).refresh(record["idp_refresh"], known)
        except IdpError as exc:
            if exc.refused:
                await self.ctx.store.delete("family", record["family"])
                await self._note(request, bundle, record["subject"], "idp_refused",
                                 client_id=record["client_id"],
                                 sign_in=sign_in_id(record["family"]))
                raise OAuthError("invalid_grant", "the identity provider no longer accepts "
                                 "this sign-in; sign in again") from None
            await self._restore(key, record, left)
            raise OAuthError("temporarily_unavailable", "the identity provider cannot be "
                             "reached; try again", 503) from None
        try:
            await self.ctx.audit(request, bundle, login.principal, "tokens_issued",
                                 grant_type="refresh_token", client_id=record["client_id"],
                                 resource=record["resource"], sign_in=sign_in_id(record["family"]))
            return await self._issue(record, login.principal, record["family"],
                                     record["family_expires"], login.refresh_token, settings)
        except (RpcError, StateUnavailable):  # not the client's fault: its token stays good
            await self._restore(key, {**record, "idp_refresh": login.refresh_token}, left)
            raise

    async def _restore(self, key: str, record: dict[str, Any], left: float) -> None:
        """Put a refresh token back as unused, after a failure that was not the client's."""
        try:
            await self.ctx.store.delete("refresh_used", key)
            await self.ctx.store.put("refresh", key, record, left)
        except StateUnavailable:
            log.error("a refresh token could not be restored; its user signs in again")

    async def revoke(self, request: web.Request) -> web.Response:
        """RFC 7009: revoking a refresh token ends its whole sign-in; anything else is a no-op
        (access tokens are short-lived and not tracked). Always 200, so nothing is learnt."""
        try:
            bundle, _ = self._settings()
            form = await self._form(request)
            token = form.get("token", "")
            if not token:
                raise OAuthError("invalid_request", "token is required")
            record = await self.ctx.store.get("refresh", secret_key(token))
            if record is not None and same(form.get("client_id", ""), record["client_id"]):
                await self.ctx.store.delete("refresh", secret_key(token))
                await self.ctx.store.delete("family", record["family"])
                log.info("sign-in revoked", extra={"subject": record["subject"],
                                                   "client_id": record["client_id"]})
                await self._note(request, bundle, record["subject"], "revoked",
                                 client_id=record["client_id"],
                                 sign_in=sign_in_id(record["family"]))
        except OAuthError as refusal:
            return refusal.response()
        except StateUnavailable:
            return STATE_UNAVAILABLE.response()
        return web.Response(status=200, headers=NO_STORE)

    async def register(self, request: web.Request) -> web.Response:
        try:
            _, settings = self._settings()
            if settings.dynamic_registration != "open":
                raise OAuthError("access_denied", "dynamic client registration is off on this "
                                 "gateway; use a pre-registered client or a client ID metadata "
                                 "document", 403)
            limit = await self.ctx.limits.check("oauth:register", REGISTRATIONS_PER_MINUTE)
            if not limit.allowed:
                return web.json_response({"error": "temporarily_unavailable", "error_description":
                                          "too many client registrations; try again shortly"},
                                         status=429, headers={**NO_STORE, "Retry-After": str(
                                             max(1, round(limit.retry_after_s)))})
            try:
                body = await request.json()
            except (ValueError, RecursionError):
                raise OAuthError("invalid_client_metadata", "the body must be JSON") from None
            try:
                answer = await self.ctx.clients.register(body, settings)
            except RegistrationError as exc:
                raise OAuthError(exc.error, exc.description) from None
        except OAuthError as refusal:
            return refusal.response()
        except StateUnavailable:
            return STATE_UNAVAILABLE.response()
        self.ctx.metrics.count_sign_in("register", "ok")
        log.info("client registered", extra={"client_id": answer["client_id"],
                                             "redirect_uris": answer["redirect_uris"]})
        return web.json_response(answer, status=201, headers=NO_STORE)
