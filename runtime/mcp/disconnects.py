"""A stateless (2026-07-28) client cancels a request by closing its response stream; the request
to the upstream must then end too, so the upstream sees its own stream close and stops.

aiohttp does not cancel a handler when its client goes away (nor should it for the whole node: in
the 2025 era a disconnect is not a cancellation, and a request half-way through a token exchange
is better finished). So the node keeps the stateless requests that are waiting on an upstream, and
one watcher checks their connections every ``WATCH_S`` while there are any, cancelling the
handler of each whose client has gone. Watching a request costs a dict entry; nothing runs per call.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

WATCH_S = 0.25


class Disconnects:
    def __init__(self) -> None:
        # id(request) -> (the request, the task handling it)
        self._waiting: dict[int, tuple[web.Request, asyncio.Task]] = {}
        self._gone: set[int] = set()  # requests cancelled because their client went away
        self._watcher: asyncio.Task | None = None

    def watch(self, request: web.Request) -> None:
        """From now on, the client closing ``request``'s connection cancels its handler."""
        task = asyncio.current_task()
        if task is None:
            return
        self._waiting[id(request)] = (request, task)
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def unwatch(self, request: web.Request) -> bool:
        """Stop watching; True if the handler was cancelled because the client went away."""
        key = id(request)
        self._waiting.pop(key, None)
        if key in self._gone:
            self._gone.discard(key)
            return True
        return False

    async def _watch(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(WATCH_S)
                for key, (request, task) in list(self._waiting.items()):
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        del self._waiting[key]
                        self._gone.add(key)
                        task.cancel()
        finally:
            self._watcher = None

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
