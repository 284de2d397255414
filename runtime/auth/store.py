"""Where the authorization server keeps what outlives one request: logins in progress, codes,
consents, browser sessions, registered clients and refresh-token families.

One small interface (``put``/``get``/``take``/``delete`` of JSON objects with a time to live) over
the node's state backend: memory for one node, the fleet's Redis otherwise, so a code issued by
one node is redeemed on another. ``take`` is atomic (``GETDEL``): single use holds fleet-wide, two
nodes racing for a code get it once. Secrets (codes, tokens, session cookies) are stored under
their SHA-256 (:func:`secret_key`), so a dump of the store holds nothing usable.

Redis unreachable: every operation raises ``StateUnavailable`` (sign-in fails closed, the caller
answers ``temporarily_unavailable``); nothing falls back to one node's memory.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gwc.runtime.governance.backend import redis_errors, unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

PREFIX = "{gwc:auth}:"
MAX_MEMORY_ENTRIES = 100_000


def secret_key(secret: str) -> str:
    """The store key of a secret the client holds: its SHA-256, never the secret itself."""
    return sha256(secret.encode()).hexdigest()


class AuthStore(Protocol):
    async def put(self, kind: str, key: str, value: dict[str, Any], ttl_s: float) -> None: ...
    async def get(self, kind: str, key: str) -> dict[str, Any] | None: ...
    async def take(self, kind: str, key: str) -> dict[str, Any] | None:
        """The value, removed in the same step: a second take (on any node) gets None."""
    async def delete(self, kind: str, key: str) -> None: ...


class MemoryAuthStore:
    """One node's store; bounded, expired entries dropped as new ones come."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_MEMORY_ENTRIES) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def _live(self, name: str) -> dict[str, Any] | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[name]
            return None
        return entry[1]

    async def put(self, kind: str, key: str, value: dict[str, Any], ttl_s: float) -> None:
        now = self._clock()
        if len(self._entries) >= self._max:
            for name in [n for n, (expires, _) in self._entries.items() if expires <= now]:
                del self._entries[name]
            if len(self._entries) >= self._max:  # the oldest goes: a login restarts, no more
                del self._entries[next(iter(self._entries))]
        self._entries[f"{kind}:{key}"] = (now + ttl_s, value)

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return self._live(f"{kind}:{key}")

    async def take(self, kind: str, key: str) -> dict[str, Any] | None:
        value = self._live(f"{kind}:{key}")
        self._entries.pop(f"{kind}:{key}", None)
        return value

    async def delete(self, kind: str, key: str) -> None:
        self._entries.pop(f"{kind}:{key}", None)


class RedisAuthStore:
    """The fleet's store: one string per entry, expiring with it (``PX``)."""

    def __init__(self, client: Redis) -> None:
        self._redis = client

    async def put(self, kind: str, key: str, value: dict[str, Any], ttl_s: float) -> None:
        try:
            await self._redis.set(f"{PREFIX}{kind}:{key}", orjson.dumps(value),
                                  px=max(1, int(ttl_s * 1000)))
        except redis_errors() as exc:
            raise unavailable(exc) from None

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        try:
            raw = await self._redis.get(f"{PREFIX}{kind}:{key}")
        except redis_errors() as exc:
            raise unavailable(exc) from None
        return None if raw is None else orjson.loads(raw)

    async def take(self, kind: str, key: str) -> dict[str, Any] | None:
        try:
            raw = await self._redis.getdel(f"{PREFIX}{kind}:{key}")
        except redis_errors() as exc:
            raise unavailable(exc) from None
        return None if raw is None else orjson.loads(raw)

    async def delete(self, kind: str, key: str) -> None:
        try:
            await self._redis.delete(f"{PREFIX}{kind}:{key}")
        except redis_errors() as exc:
            raise unavailable(exc) from None


def store_for(redis: Redis | None) -> AuthStore:
    return MemoryAuthStore() if redis is None else RedisAuthStore(redis)
