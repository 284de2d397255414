"""An upstream session's GET stream, opened with the session and held for the client's own.

An upstream may send a request (elicitation, sampling) on its session's GET stream the moment a
call starts, and one without an event store drops it when no stream is attached. A client opens
its GET stream at about the time it makes its first call, and the gateway can open the upstream's
only after that: the call can win the race. So a session opened for a client that can be asked
things gets its GET stream before anything else is sent on it, and what arrives is kept (at most
``HELD_CHUNKS`` reads; the upstream waits beyond that) for ``HOLD_S``, until the client's GET
stream adopts it. Unadopted, it is closed.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any

import aiohttp

log = logging.getLogger("gwc.upstream")
HOLD_S = 10.0
HELD_CHUNKS = 64
ENDED = (aiohttp.ClientError, ConnectionError, TimeoutError)
# what a client announces that lets an upstream ask it things
ASKABLE = ("elicitation", "sampling", "roots")


def may_be_asked(capabilities: dict[str, Any]) -> bool:
    return any(isinstance(capabilities.get(name), dict) for name in ASKABLE)


class HeldStream:
    def __init__(self, response: aiohttp.ClientResponse, session: Hashable,
                 expired: Callable[[HeldStream], None]) -> None:
        self.session = session  # the upstream session it belongs to
        self._response = response
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue(HELD_CHUNKS)
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._expiry: asyncio.TimerHandle | None = loop.call_later(HOLD_S, self._expire, expired)

    async def _read(self) -> None:
        try:
            async for chunk in self._response.content.iter_any():
                await self._chunks.put(chunk)
        except ENDED as exc:
            log.info("held upstream stream ended", extra={"reason": type(exc).__name__})
        finally:
            await self._chunks.put(None)

    def _expire(self, expired: Callable[[HeldStream], None]) -> None:
        self._expiry = None
        expired(self)
        self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """What arrived while it was held, then what arrives; its reader now owns it."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        while (chunk := await self._chunks.get()) is not None:
            yield chunk

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._reader.cancel()
        self._response.close()


class HeldStreams:
    """Held streams by pool key, one per upstream session."""

    def __init__(self) -> None:
        self._held: dict[Hashable, HeldStream] = {}

    def hold(self, key: Hashable, response: aiohttp.ClientResponse, session: Hashable) -> None:
        old = self._held.pop(key, None)
        if old is not None:
            old.close()

        def expired(held: HeldStream) -> None:
            if self._held.get(key) is held:
                del self._held[key]
                log.info("held upstream stream closed unadopted")
        self._held[key] = HeldStream(response, session, expired)

    def adopt(self, key: Hashable, session: Hashable) -> HeldStream | None:
        """The stream held for ``session``, now the caller's to read and close."""
        held = self._held.pop(key, None)
        if held is not None and held.session != session:  # a session the upstream forgot
            held.close()
            return None
        return held

    def close(self) -> None:
        for held in self._held.values():
            held.close()
        self._held.clear()
