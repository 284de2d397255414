"""What each upstream offers (tools, resources, resource templates, prompts), for the aggregate
endpoint: fetched lazily by the gateway under its own identity, cached per upstream and bundle.

An entry is fresh for ``LIST_TTL_S``, only under the bundle it was fetched for, and until the
upstream says the list changed (heard on a client's stream, ``mcp/fan_in.py``). A listing waits
at most ``LIST_DEADLINE_S`` for refreshes: an upstream that is slower (or dead) is served from its
stale entry if there is one, or left out, and logged; its fetch carries on in the background, so
the next listing has it. One fetch per upstream and kind at a time, however many callers wait.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from mcp_types.version import LATEST_HANDSHAKE_VERSION

from gwc.runtime.bundle.format import Server
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.wire import LIST_METHODS, ListKind
from gwc.runtime.upstream.client import (
    Outgoing,
    UpstreamClient,
    UpstreamFailure,
    answer_to,
    json_headers,
)

log = logging.getLogger("gwc.catalog")

LIST_TTL_S = 300.0
LIST_DEADLINE_S = 2.0
MAX_PAGES = 20
GATEWAY_SUBJECT = "gwc"  # who upstreams see asking for their lists
# kind "service" keeps it apart from an IdP user who happens to be called "gwc": in upstream
# tokens (the "kind" claim) and in the pool of upstream sessions
GATEWAY = Principal(subject=GATEWAY_SUBJECT, kind="service")
UNKNOWN_RETRY_S = 30.0  # how soon capabilities that could not be learnt are asked for again


@dataclass(frozen=True, slots=True)
class GatewayTerms:
    """The 2025-era session the gateway lists upstreams in: the latest version, no capabilities."""

    protocol_version: str = LATEST_HANDSHAKE_VERSION
    capabilities: dict[str, Any] = field(default_factory=dict)
    created: int = 0
    nonce: str = ""


GATEWAY_SESSION = GatewayTerms()
METHODS: dict[ListKind, str] = {kind: method for method, kind in LIST_METHODS.items()}
# told each tools list fetched (the bundle it was fetched under, the server, its tools)
ToolsListener = Callable[[Bundle, str, tuple[dict[str, Any], ...]], None]
# told each time an upstream says its tools changed (the server)
ChangeListener = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Entry:
    items: tuple[dict[str, Any], ...]
    bundle_digest: str
    fetched_at: float

    def fresh(self, bundle: Bundle) -> bool:
        return (self.bundle_digest == bundle.digest
                and time.monotonic() - self.fetched_at < LIST_TTL_S)


class UpstreamCatalog:
    def __init__(self, client: UpstreamClient, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics
        self._entries: dict[tuple[str, str], Entry] = {}
        self._fetching: dict[tuple[str, str], tuple[asyncio.Task[Entry], float]] = {}
        # server -> (its capabilities, None when they could not be learnt; the bundle digest
        # they were learnt under; until when they hold)
        self._capabilities: dict[str, tuple[dict[str, Any] | None, str, float]] = {}
        self._learning: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._tools_listeners: list[ToolsListener] = []
        self._change_listeners: list[ChangeListener] = []

    def on_tools(self, fetched: ToolsListener, changed: ChangeListener) -> None:
        """Tell ``fetched`` every tools list this catalog fetches, and ``changed`` every time an
        upstream says its tools changed (``contracts.py`` compares them with pins)."""
        self._tools_listeners.append(fetched)
        self._change_listeners.append(changed)

    async def capabilities(self, bundle: Bundle, name: str) -> dict[str, Any] | None:
        """The server capabilities the upstream announced in its own ``initialize`` answer (to
        the gateway's session), or None when it does not answer within ``LIST_DEADLINE_S``.
        Learnt once per bundle and ``LIST_TTL_S``; one handshake at a time per upstream."""
        known = self._capabilities.get(name)
        if known is not None and known[1] == bundle.digest and time.monotonic() < known[2]:
            return known[0]
        task = self._learning.get(name)
        if task is None:
            task = self._learning[name] = asyncio.get_running_loop().create_task(
                self._learn(bundle, name, bundle.payload.servers[name]))
            task.add_done_callback(lambda done: self._learnt(name, done))
        try:
            return await asyncio.wait_for(asyncio.shield(task), LIST_DEADLINE_S)
        except (TimeoutError, UpstreamFailure):
            return None

    def _learnt(self, name: str, task: asyncio.Task[dict[str, Any]]) -> None:
        self._learning.pop(name, None)
        if not task.cancelled():
            task.exception()  # logged in _learn

    async def _learn(self, bundle: Bundle, name: str, server: Server) -> dict[str, Any]:
        message = {"jsonrpc": "2.0", "id": 0, "method": "ping", "params": {}}
        # a probe for metadata: what callers' calls do to the upstream is what judges it
        out = Outgoing("ping", message, GATEWAY_SESSION, f"capabilities-{name}",
                       headers=json_headers(), judges=False)
        try:
            async with self._client.exchange(name, server, GATEWAY, out, server.timeout_ms) as answer:
                await answer.response.read()
                capabilities = answer.session.capabilities if answer.session else {}
        except UpstreamFailure as exc:
            log.warning("upstream capabilities unknown", extra={"server": name,
                                                                "reason": exc.message})
            # not asked again for a while: an endpoint whose upstream is down still answers
            # initialize at once (with tools only)
            self._capabilities[name] = (None, bundle.digest, time.monotonic() + UNKNOWN_RETRY_S)
            raise
        self._capabilities[name] = (capabilities, bundle.digest, time.monotonic() + LIST_TTL_S)
        return capabilities

    async def lists(self, bundle: Bundle, names: list[str], kind: ListKind
                    ) -> dict[str, tuple[dict[str, Any], ...]]:
        """The ``kind`` items of each named server, as fresh as the deadline allows."""
        waiting: dict[str, asyncio.Task[Entry]] = {}
        deadline = time.monotonic()
        for name in names:
            entry = self._entries.get((name, kind))
            if entry is None or not entry.fresh(bundle):
                task, started = self._fetch(bundle, name, bundle.payload.servers[name], kind)
                # each fetch is waited for until LIST_DEADLINE_S after it started: one already
                # late for an earlier listing delays no later one
                deadline = max(deadline, started + LIST_DEADLINE_S)
                waiting[name] = task
        if waiting:
            _, late = await asyncio.wait(waiting.values(),
                                         timeout=max(0.0, deadline - time.monotonic()))
            for name, task in waiting.items():
                if task in late:
                    log.warning("upstream list late; left out or served stale",
                                extra={"server": name, "kind": kind})
        out = {}
        for name in names:
            entry = self._entries.get((name, kind))
            if entry is not None:
                out[name] = entry.items
        return out

    def changed(self, name: str, kind: ListKind) -> None:
        """The upstream said its ``kind`` list changed: the next listing fetches it again (the
        old entry still serves if that fetch is late)."""
        self._stale(name, kind)
        if kind == "tools":
            for listener in self._change_listeners:
                listener(name)

    async def refresh(self, bundle: Bundle, names: list[str], kind: ListKind) -> None:
        """Fetch these lists again now, whatever their age (waiting as :meth:`lists` does)."""
        for name in names:
            self._stale(name, kind)
        await self.lists(bundle, names, kind)

    def _stale(self, name: str, kind: ListKind) -> None:
        entry = self._entries.get((name, kind))
        if entry is not None:
            self._entries[name, kind] = replace(entry, fetched_at=-LIST_TTL_S)

    def _fetch(self, bundle: Bundle, name: str, server: Server, kind: ListKind
               ) -> tuple[asyncio.Task[Entry], float]:
        """The fetch in flight for this upstream and kind (started now if there was none), with
        the time it started."""
        key = (name, kind)
        fetching = self._fetching.get(key)
        if fetching is None:
            task = asyncio.get_running_loop().create_task(self._run_fetch(bundle, name, server, kind))
            fetching = self._fetching[key] = (task, time.monotonic())
            task.add_done_callback(lambda done: self._fetched(key, done))
        return fetching

    def _fetched(self, key: tuple[str, str], task: asyncio.Task[Entry]) -> None:
        self._fetching.pop(key, None)
        if not task.cancelled():
            task.exception()  # logged in _run_fetch; retrieved so asyncio does not log it again

    async def _run_fetch(self, bundle: Bundle, name: str, server: Server, kind: ListKind) -> Entry:
        try:
            items = await self._fetch_all_pages(name, server, kind)
            result = "ok"
        except Exception as exc:  # never let one upstream's oddity break the others' listing
            expected = isinstance(exc, UpstreamFailure)
            log.warning("upstream list failed", exc_info=not expected, extra={
                "server": name, "kind": kind,
                "reason": exc.message if isinstance(exc, UpstreamFailure) else repr(exc)})
            self._metrics.catalog_fetches.labels(name, "failed").inc()
            raise
        if items is None:
            items, result = [], "unsupported"
        self._metrics.catalog_fetches.labels(name, result).inc()
        entry = self._entries[(name, kind)] = Entry(tuple(items), bundle.digest, time.monotonic())
        if kind == "tools":
            for listener in self._tools_listeners:
                listener(bundle, name, entry.items)
        return entry

    async def _fetch_all_pages(self, name: str, server: Server, kind: ListKind
                               ) -> list[dict[str, Any]] | None:
        """All pages of one list; None when the upstream does not offer that kind."""
        items: list[dict[str, Any]] = []
        cursor = None
        for page in range(MAX_PAGES):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            message = {"jsonrpc": "2.0", "id": page, "method": METHODS[kind], "params": params}
            out = Outgoing(METHODS[kind], message, GATEWAY_SESSION, f"catalog-{name}-{kind}",
                           headers=json_headers())
            async with self._client.exchange(name, server, GATEWAY, out, server.timeout_ms) as answer:
                body = await answer.response.read()
                content_type = answer.response.headers.get("Content-Type", "")
                if answer.response.status >= 400 and not body:
                    return None
                reply = answer_to(body, content_type, answer.upstream_id)
            result = reply.get("result")
            if not isinstance(result, dict):
                return None  # an error: the upstream does not offer this kind
            items.extend(i for i in result.get(kind, ()) if isinstance(i, dict))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        return items
