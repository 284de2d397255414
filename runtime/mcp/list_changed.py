"""``notifications/tools/list_changed`` for clients that keep a stream open (the 2025 GET stream,
a 2026-07-28 ``subscriptions/listen``), with what upstreams send outside any call (``fan_in.py``).

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

from aiohttp import web

from gwc.runtime.bundle.read import Bundle
from gwc.runtime.mcp.fan_in import ENDED, Source
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal, listed_everywhere, listed_tools
from gwc.runtime.protocol.sse import event

log = logging.getLogger("gwc.list_changed")
KEEPALIVE_S = 15.0
# how often a stream checks that its client is still there: a client that went away releases the
# upstream's stream at once (an upstream keeps one per session; the next client needs it)
WATCH_S = 1.0
UPSTREAM_OPEN_S = 2.0  # how long a client's GET stream waits for its upstream's to open
NOTIFICATION = event({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
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


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _pump(upstream: Source, response: web.StreamResponse, opened: asyncio.Event,
                prepared: asyncio.Event) -> None:
    """The upstream's events onto the client's stream (once it is open), each whole event in
    one write; ends quietly when either side does."""
    try:
        async with upstream() as events:
            opened.set()
            if events is None:
                return
            async for chunk in events:
                await prepared.wait()  # the client's stream may still be being opened
                await response.write(chunk)
    except ENDED as exc:
        log.info("upstream stream ended", extra={"reason": type(exc).__name__})
    finally:
        opened.set()


class ListChangedStreams:
    def __init__(self, active: Callable[[], Bundle | None], metrics: Metrics) -> None:
        self._active = active
        self._listeners: set[Listener] = set()
        self._tasks: set[asyncio.Task] = set()
        self._gauge = metrics.open_streams
        self._closing = False

    async def stream(self, request: web.Request, principal: Principal, endpoint: str,
                     upstream: Source | None = None, first: bytes = b"",
                     notification: bytes | None = NOTIFICATION) -> web.StreamResponse:
        """The client's GET stream: the gateway's own list_changed notifications and, when
        ``upstream`` is given, the upstream's own messages outside any call, as they come. The
        upstream's stream is opened first, for at most ``UPSTREAM_OPEN_S`` (so a request the
        upstream sends right after is not missed); a slower upstream joins when it can. A 2026-07-28
        ``subscriptions/listen`` stream starts with ``first`` (its acknowledgement) and gets
        ``notification`` (None: the client did not ask for it) tagged with its id."""
        bundle = self._active()
        assert bundle is not None  # the proxy answers 503 before this without a bundle
        listener = Listener(principal, endpoint, await visible_tools(bundle, principal, endpoint))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        pump, prepared = None, asyncio.Event()
        if upstream is not None:
            opened = asyncio.Event()
            pump = asyncio.get_running_loop().create_task(
                _pump(upstream, response, opened, prepared))
            try:
                await asyncio.wait_for(opened.wait(), UPSTREAM_OPEN_S)
            except TimeoutError:
                pass
        self._listeners.add(listener)
        self._gauge.inc()
        try:
            await response.prepare(request)
            if first:
                await response.write(first)
            prepared.set()
            quiet = 0.0
            while not self._closing and not _gone(request):
                try:
                    await asyncio.wait_for(listener.wake.wait(), WATCH_S)
                    listener.wake.clear()
                    if not self._closing and notification is not None:
                        await response.write(notification)
                    quiet = 0.0
                except TimeoutError:
                    quiet += WATCH_S
                    if quiet >= KEEPALIVE_S:
                        await response.write(b": keepalive\n\n")
                        quiet = 0.0
        except (ConnectionResetError, ConnectionError):
            pass  # the client closed its stream
        finally:
            self._listeners.discard(listener)
            self._gauge.dec()
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
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
