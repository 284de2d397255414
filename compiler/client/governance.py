"""The gateway's approvals and break-glass API (``/v1/approvals``, ``/v1/bypass``), called with the
caller's own bearer token, for ``gwc approvals`` and ``gwc bypass``: the one given (``--token`` or
``GWC_TOKEN``), else the user's sign-in from ``gwc login`` (``sign_in.py``), refreshed when it runs
out, or once more when the gateway refuses it.

The token is not sent in clear text to another machine: ``http://`` is accepted for loopback
addresses only, unless ``allow_http``. A refusal or an unreachable gateway is a
:class:`GatewayError` whose message says what the gateway said (``... (not_an_approver, HTTP 403)``).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

from gwc.compiler.build.hosts import is_loopback

TIMEOUT_S = 15.0


class GatewayError(Exception):
    """The call did not succeed: bad URL, unreachable gateway, or a refusal."""


class GovernanceClient:
    """One gateway's API, called with the caller's token."""

    def __init__(self, url: str, token: str | None, allow_http: bool) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GatewayError(f"--gateway must be an http(s) URL, not {url!r}")
        if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
            raise GatewayError(f"{url} is plain http: the token would travel in clear text; use "
                               "https (or --allow-http)")
        self.url, self.token, self.allow_http = url.rstrip("/"), token, allow_http

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer of a successful request."""
        import aiohttp  # here, not at the top: the offline commands must not load it

        try:
            status, answer = asyncio.run(self._send(method, path, body))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise GatewayError(f"cannot reach the gateway at {self.url}: "
                               f"{type(exc).__name__} {exc}".rstrip()) from None
        if 200 <= status < 300 and isinstance(answer, dict):
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and error.get("message"):
            raise GatewayError(f"{error['message']} ({error.get('reason')}, HTTP {status})")
        raise GatewayError(f"the gateway answered HTTP {status} without a usable JSON body")

    async def _send(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        import aiohttp

        from gwc.compiler.client.sign_in import Bearer, SignIn, SignInError, StaticBearer, StoredBearer
        from gwc.compiler.client.token_store import open_store

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                                         trust_env=True) as session:
            bearer: Bearer = StaticBearer(self.token) if self.token else StoredBearer(
                SignIn(self.url, open_store(), session, allow_http=self.allow_http),
                interactive=False)
            try:
                token = await bearer.token()
                status, answer, challenge = await self._request(session, method, path, body, token)
                if status == 401 and not self.token:  # refreshed once: revoked, or clocks apart
                    token = await bearer.refused(token, self.url, challenge)
                    status, answer, challenge = await self._request(session, method, path, body,
                                                                    token)
            except SignInError as exc:
                raise GatewayError(str(exc)) from None
            return status, answer

    async def _request(self, session: Any, method: str, path: str, body: dict[str, Any] | None,
                       token: str | None) -> tuple[int, Any, str | None]:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with session.request(method, self.url + path, json=body, headers=headers,
                                   allow_redirects=False) as resp:
            text = await resp.text()
            challenge = resp.headers.get("WWW-Authenticate")
        try:
            return resp.status, json.loads(text), challenge
        except ValueError:
            return resp.status, None, challenge
