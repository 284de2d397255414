"""What upstreams send outside any call, onto a client's GET stream (2025 era).

On a server's endpoint the stream carries that upstream's messages; on the aggregate ``/mcp`` it
carries those of every server the caller sees, merged (:func:`merged`). Each message is screened
against the bundle active when it arrives (:func:`screen`): a server the caller no longer sees says
nothing, a tools ``list_changed`` from a server where the caller sees no tool is dropped, and on
``/mcp`` a resource's URI is namespaced as its listing names it. A list's ``list_changed`` makes
the node's catalog list that upstream again, so the client's next ``/mcp`` listing shows it.
Requests (elicitation, sampling, roots) keep flowing; their ids are sealed by the relay so the
answer finds its upstream session.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp

from gwc.runtime.bundle.read import Bundle
from gwc.runtime.policy.decide import Principal, listed_tools, visible_server
from gwc.runtime.policy.names import resource_uri
from gwc.runtime.protocol.sse import Screen
from gwc.runtime.protocol.wire import ListKind
from gwc.runtime.upstream.catalog import UpstreamCatalog

log = logging.getLogger("gwc.mcp")
# opens one upstream's stream: its events, or None when it keeps none
Source = Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes] | None]]
# at most this many upstream streams behind one client's /mcp stream (servers in bundle order);
# every one is an upstream session and a connection held for as long as the client listens
MAX_FAN_IN = 32
QUEUE_EVENTS = 64  # events waiting for a slow client before the upstreams' streams are held up
CHANGES: dict[str, tuple[ListKind, ...]] = {
    "notifications/tools/list_changed": ("tools",),
    "notifications/prompts/list_changed": ("prompts",),
    "notifications/resources/list_changed": ("resources", "resourceTemplates")}
ENDED = (ConnectionError, aiohttp.ClientError, UnicodeDecodeError, TimeoutError)


def screen(server: str, principal: Principal, active: Callable[[], Bundle | None],
           catalog: UpstreamCatalog, aggregate: bool) -> Screen:
    """What of ``server``'s messages reaches this caller, under the bundle active at the time.
    A list's ``list_changed`` also tells this node's catalog to list it again."""
    def screened(message: dict[str, Any]) -> dict[str, Any] | None:
        method = message.get("method")
        for kind in CHANGES.get(method, ()) if isinstance(method, str) else ():
            catalog.changed(server, kind)
        bundle = active()
        if bundle is None or visible_server(bundle.payload, principal, server) is None:
            return None
        if method == "notifications/tools/list_changed":
            return message if listed_tools(bundle.payload, principal, server) else None
        params = message.get("params")
        if (aggregate and method == "notifications/resources/updated"
                and isinstance(params, dict) and isinstance(params.get("uri"), str)):
            return {**message, "params": {**params, "uri": resource_uri(server, params["uri"])}}
        return message
    return screened


@asynccontextmanager
async def merged(sources: list[Source], open_s: float
                 ) -> AsyncIterator[AsyncIterator[bytes] | None]:
    """Several upstreams' streams as one: whole events, in the order they arrive. Entered once
    every stream is open, or after ``open_s`` (a slower one joins when it can); ends when all
    have ended."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_EVENTS)
    opened = [asyncio.Event() for _ in sources]

    async def pump(source: Source, done: asyncio.Event) -> None:
        try:
            async with source() as events:
                done.set()
                if events is not None:
                    async for chunk in events:
                        await queue.put(chunk)
        except ENDED as exc:
            log.info("upstream stream ended", extra={"reason": type(exc).__name__})
        finally:
            done.set()
            await queue.put(None)

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(pump(source, done)) for source, done in zip(sources, opened,
                                                                          strict=True)]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(done.wait() for done in opened)), open_s)
        except TimeoutError:
            pass

        async def events() -> AsyncIterator[bytes]:
            ended = 0
            while ended < len(tasks):
                chunk = await queue.get()
                if chunk is None:
                    ended += 1
                else:
                    yield chunk
        yield events() if tasks else None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
