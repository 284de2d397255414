"""``notifications/tools/list_changed`` for 2025-era clients that keep a GET stream open.

A client opens the stream with its session id; the node keeps it (streams are connections, so they
are naturally this node's). When a new bundle is activated, each stream's caller is re-evaluated:
if the set of tools it would see on that endpoint changed, it is told to list again. Streams get a
comment line every ``KEEPALIVE_S`` so proxies between the client and the gateway keep them open.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from gwc.runtime.bundle.read import Bundle
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal, listed_everywhere, listed_tools

log = logging.getLogger("gwc.list_changed")
KEEPALIVE_S = 15.0
NOTIFICATION = b"event: message\ndata: " + orjson.dumps(
    {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}) + b"\n\n"
Fingerprint = frozenset[tuple[str, str]]


YIELD_EVERY = 100  # servers evaluated between two yields to the event loop


async def visible_tools(bundle: Bundle, principal: Principal, endpoint: str) -> Fingerprint:
    """(server, tool) of every tool the caller sees on an endpoint ("" is the aggregate); on a
    big bundle it yields now and then, so requests are not held up meanwhile."""
    if endpoint:
        return frozenset((endpoint, t) for t in listed_tools(bundle.payload, principal, endpoint))
    seen: set[tuple[str, str]] = set()
    for i, (server, tools) in enumerate(listed_everywhere(bundle.payload, principal)):
        seen.update((server, t) for t in tools)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    return frozenset(seen)


@dataclass(eq=False)
class Listener:
    principal: Principal
    endpoint: str
    seen: Fingerprint
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ListChangedStreams:
    def __init__(self, active: Callable[[], Bundle | None], metrics: Metrics) -> None:
        self._active = active
        self._listeners: set[Listener] = set()
        self._tasks: set[asyncio.Task] = set()
        self._gauge = metrics.open_streams
        self._closing = False

    async def stream(self, request: web.Request, principal: Principal, endpoint: str
                     ) -> web.StreamResponse:
        bundle = self._active()
        assert bundle is not None  # the proxy answers 503 before this without a bundle
        listener = Listener(principal, endpoint, await visible_tools(bundle, principal, endpoint))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        self._listeners.add(listener)
        self._gauge.inc()
        try:
            while not self._closing:
                try:
                    await asyncio.wait_for(listener.wake.wait(), KEEPALIVE_S)
                    listener.wake.clear()
                    if not self._closing:
                        await response.write(NOTIFICATION)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
        except (ConnectionResetError, ConnectionError):
            pass  # the client closed its stream
        finally:
            self._listeners.discard(listener)
            self._gauge.dec()
        return response

    def bundle_changed(self, old: Bundle | None, new: Bundle) -> None:
        """Store hook: re-evaluate the streams in the background, one caller at a time."""
        if self._listeners:
            task = asyncio.get_running_loop().create_task(self._notify(new))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _notify(self, bundle: Bundle) -> None:
        cache: dict[tuple[Principal, str], Fingerprint] = {}
        for listener in list(self._listeners):
            key = (listener.principal, listener.endpoint)
            if key not in cache:
                cache[key] = await visible_tools(bundle, listener.principal, listener.endpoint)
            if cache[key] != listener.seen:
                listener.seen = cache[key]
                listener.wake.set()
        log.info("list_changed evaluated", extra={"streams": len(self._listeners),
                                                  "serial": bundle.serial})

    async def close(self) -> None:
        """End every stream (at shutdown, so the node does not wait on idle clients)."""
        self._closing = True
        for listener in self._listeners:
            listener.wake.set()
        for task in list(self._tasks):
            task.cancel()
