"""Where the authorization server keeps what outlives one request: logins in progress, codes,
consents, browser sessions, registered clients and refresh-token families.

One small interface over the node's state backend: memory for one node, the fleet's Redis
otherwise, so a code issued by one node is redeemed on another. ``take`` is atomic (Redis: one
script), and can leave a mark in the same step (a used code or refresh token is remembered, so a
second presentation, even a concurrent one, is recognised as reuse). ``put_while`` writes only
while another entry still exists (a refresh token only while its family is not revoked). Secrets
(codes, tokens, session cookies) are stored under their SHA-256 (:func:`secret_key`), so a dump of
the store holds nothing usable.

Redis unreachable: every operation raises ``StateUnavailable`` (sign-in fails closed, the caller
answers ``temporarily_unavailable``); nothing falls back to one node's memory. The memory store is
bounded: when full of live entries it refuses new ones (``StateUnavailable``) rather than evict
anyone's sign-in.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gwc.runtime.governance.backend import Script, StateUnavailable, redis_errors, unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

PREFIX = "{gwc:auth}:"
MAX_MEMORY_ENTRIES = 100_000
SWEEP_EVERY_S = 1.0  # a full memory store looks for expired entries at most this often
Mark = tuple[str, dict[str, Any], float]  # (kind, value, ttl_s) left where an entry was taken

_TAKE = Script("""
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
  if ARGV[1] ~= '' then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
end
return value
""")
_PUT_WHILE = Script("""
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""")


def secret_key(secret: str) -> str:
    """The store key of a secret the client holds: its SHA-256, never the secret itself."""
    return sha256(secret.encode()).hexdigest()


class AuthStore(Protocol):
    async def put(self, kind: str, key: str, value: dict[str, Any], ttl_s: float) -> None: ...
    async def get(self, kind: str, key: str) -> dict[str, Any] | None: ...
    async def take(self, kind: str, key: str, *, mark: Mark | None = None
                   ) -> dict[str, Any] | None:
        """The value, removed in the same step: a second take (on any node) gets None. With
        ``mark``, an entry of that kind is left under the same key, in the same step."""
    async def put_while(self, kind: str, key: str, value: dict[str, Any], ttl_s: float, *,
                        exists: tuple[str, str]) -> bool:
        """Put only while the entry ``exists`` (kind, key) is there; whether it was put."""
    async def delete(self, kind: str, key: str) -> None: ...


class MemoryAuthStore:
    """One node's store."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_MEMORY_ENTRIES) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._swept_at = float("-inf")

    def _live(self, name: str) -> dict[str, Any] | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[name]
            return None
        return entry[1]

    async def put(self, kind: str, key: str, value: dict[str, Any], ttl_s: float) -> None:
        name, now = f"{kind}:{key}", self._clock()
        if name not in self._entries and len(self._entries) >= self._max:
            if now - self._swept_at >= SWEEP_EVERY_S:
                self._swept_at = now
                for old in [n for n, (expires, _) in self._entries.items() if expires <= now]:
                    del self._entries[old]
            if len(self._entries) >= self._max:
                raise StateUnavailable("the sign-in store of this node is full")
        self._entries[name] = (now + ttl_s, value)

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return self._live(f"{kind}:{key}")

    async def take(self, kind: str, key: str, *, mark: Mark | None = None
                   ) -> dict[str, Any] | None:
        value = self._live(f"{kind}:{key}")
        self._entries.pop(f"{kind}:{key}", None)
        if value is not None and mark is not None:
            await self.put(mark[0], key, mark[1], mark[2])
        return value

    async def put_while(self, kind: str, key: str, value: dict[str, Any], ttl_s: float, *,
                        exists: tuple[str, str]) -> bool:
        if self._live(f"{exists[0]}:{exists[1]}") is None:
            return False
        await self.put(kind, key, value, ttl_s)
        return True

    async def delete(self, kind: str, key: str) -> None:
        self._entries.pop(f"{kind}:{key}", None)


class RedisAuthStore:
    """The fleet's store: one string per entry, expiring with it (``PX``)."""

    def __init__(self, client: Redis) -> None:
        self._redis = client

    async def put(self, kind: str, key: str, value: dict[str, Any], ttl_s: float) -> None:
        try:
            await self._redis.set(f"{PREFIX}{kind}:{key}", orjson.dumps(value), px=_ms(ttl_s))
        except redis_errors() as exc:
            raise unavailable(exc) from None

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        try:
            raw = await self._redis.get(f"{PREFIX}{kind}:{key}")
        except redis_errors() as exc:
            raise unavailable(exc) from None
        return None if raw is None else orjson.loads(raw)

    async def take(self, kind: str, key: str, *, mark: Mark | None = None
                   ) -> dict[str, Any] | None:
        keys = [f"{PREFIX}{kind}:{key}", f"{PREFIX}{mark[0] if mark else kind}:{key}"]
        raw = await _TAKE(self._redis, keys, [orjson.dumps(mark[1]) if mark else "",
                                              _ms(mark[2]) if mark else 0])
        return None if raw is None else orjson.loads(raw)

    async def put_while(self, kind: str, key: str, value: dict[str, Any], ttl_s: float, *,
                        exists: tuple[str, str]) -> bool:
        return bool(await _PUT_WHILE(self._redis, [f"{PREFIX}{kind}:{key}",
                                                   f"{PREFIX}{exists[0]}:{exists[1]}"],
                                     [orjson.dumps(value), _ms(ttl_s)]))

    async def delete(self, kind: str, key: str) -> None:
        try:
            await self._redis.delete(f"{PREFIX}{kind}:{key}")
        except redis_errors() as exc:
            raise unavailable(exc) from None


def _ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))


def store_for(redis: Redis | None) -> AuthStore:
    return MemoryAuthStore() if redis is None else RedisAuthStore(redis)
