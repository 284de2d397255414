"""The gateway's approvals and break-glass API (``/v1/approvals``, ``/v1/bypass``), called with the
caller's own bearer token, for ``gwc approvals`` and ``gwc bypass``.

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
        self.url, self.token = url.rstrip("/"), token

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

        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session,
                    session.request(method, self.url + path, json=body, headers=headers) as resp):
            text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, None
