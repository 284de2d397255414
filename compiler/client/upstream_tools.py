"""What ``gwc pin`` reads: the tools an upstream MCP server lists now, with the official MCP SDK
client over Streamable HTTP, every page.

Tools are kept as the JSON the upstream sent, not as the SDK's models: those drop annotation fields
they do not know and explicit nulls, and a node computes its digests from the JSON it reads, so a
pin made from the models could look drifted forever. This module loads ``mcp`` and ``httpx2``;
the ``gwc`` command imports it only inside ``gwc pin``.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ListToolsRequest, PaginatedRequestParams
from pydantic import BaseModel, Field, ValidationError

from gwc.compiler.build.models import ServerManifest, StaticEnvAuth

PIN_TOKEN_ENV = "GWC_PIN_TOKEN"
TIMEOUT_S = 30.0


class _ToolsPage(BaseModel):
    """A tools/list result with each tool left as the JSON object it came as."""

    tools: list[dict[str, Any]]
    next_cursor: str | None = Field(default=None, alias="nextCursor")


# The SDK logs what it then raises; unconfigured, Python would print that to stderr beside the
# command's own one-line error. A handler here keeps it out, and propagation keeps it for anyone
# who configures logging.
logging.getLogger("mcp").addHandler(logging.NullHandler())


class UpstreamError(Exception):
    """The upstream's tools could not be read; the message is one line, for the user."""


def credential(manifest: ServerManifest, environ: Mapping[str, str]) -> dict[str, str]:
    """The header to read the upstream's tools with: ``GWC_PIN_TOKEN`` as a bearer token when set
    (a gateway_jwt upstream, or a staging credential), else what a node sends to a ``static_env``
    upstream, else none. Raises UpstreamError when the static_env variable is not set."""
    token = environ.get(PIN_TOKEN_ENV)
    if token:
        return {"Authorization": f"Bearer {token}"}
    auth = manifest.upstream_auth
    if not isinstance(auth, StaticEnvAuth):
        return {}
    value = environ.get(auth.env)
    if not value:
        raise UpstreamError(f"server '{manifest.name}' authenticates to its upstream with ${auth.env} "
                            f"(upstream_auth: static_env): set it, or {PIN_TOKEN_ENV}")
    return {auth.header: f"{auth.scheme} {value}" if auth.scheme else value}


async def list_tools(url: str, headers: Mapping[str, str],
                     timeout_s: float = TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Every tool ``url`` lists (following ``nextCursor``), by name, as raw JSON objects.
    Raises UpstreamError for any failure: network, HTTP status, protocol, time-out."""
    # the status of every POST, to name a refusal (the SDK's errors do not); a GET stream or a
    # session DELETE an upstream does not offer (405) is no failure
    statuses: list[int] = []

    async def note(response: httpx2.Response) -> None:
        if response.request.method == "POST":
            statuses.append(response.status_code)

    try:
        async with (asyncio.timeout(timeout_s),
                    httpx2.AsyncClient(headers=dict(headers), timeout=httpx2.Timeout(timeout_s),
                                       event_hooks={"response": [note]}) as http,
                    Client(streamable_http_client(url, http_client=http), cache=None,
                           read_timeout_seconds=timeout_s) as client):
            tools: dict[str, dict[str, Any]] = {}
            cursor: str | None = None
            seen: set[str] = set()
            while True:
                params = PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await client.session.send_request(ListToolsRequest(params=params), _ToolsPage)
                tools.update((tool["name"], tool) for tool in page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    return tools
                if cursor in seen:
                    raise UpstreamError(f"{url} repeats the tools/list cursor {cursor!r}")
                seen.add(cursor)
    except UpstreamError:
        raise
    except Exception as exc:  # the SDK raises many kinds, often inside exception groups
        raise UpstreamError(_explain(url, exc, statuses, timeout_s)) from None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _explain(url: str, exc: Exception, statuses: list[int], timeout_s: float) -> str:
    """One line that says what went wrong: the last HTTP response when it was an error (a
    refused probe the SDK recovered from is not), else the innermost exception."""
    cause = next(_leaves(exc))
    if statuses and statuses[-1] >= 400:
        status = statuses[-1]
        hint = (f" (the credential was missing or refused: {PIN_TOKEN_ENV} sets one)"
                if status in (401, 403) else "")
        return f"{url} answered HTTP {status}{hint}"
    if isinstance(cause, TimeoutError):
        return f"{url} did not answer within {timeout_s:g} s"
    if isinstance(cause, httpx2.TransportError):
        what = f"cannot reach {url}"
    elif isinstance(cause, MCPError):
        what = f"{url} answered an MCP error"
    elif isinstance(cause, ValidationError):
        first = cause.errors()[0]
        return (f"{url} sent a tools list that is not valid MCP ({cause.error_count()} problem(s)), "
                f"at {'/'.join(map(str, first['loc']))}: {first['msg']}")
    else:
        what = f"reading the tools of {url} failed"
    detail = " ".join(str(cause).split()) or type(cause).__name__
    return f"{what}: {detail}"
