"""A node's shared state in one object: rate-limit counters, approvals and bypasses (``--state``).

``memory`` (or no URL): everything lives in this node (a single-node gateway). ``redis://``,
``rediss://`` or ``unix://``: the fleet shares it, so any node can serve any step. What each part
does when Redis is unreachable differs on purpose, and is documented in its module:

- limits (``gwc.runtime.governance.limits``): fall back to per-node limits, calls keep flowing;
- approvals (``gwc.runtime.governance.approvals``): fail closed, ``StateUnavailable`` ->
  ``state_unavailable``;
- bypasses (``gwc.runtime.governance.bypasses``): the last snapshot is honoured until each bypass expires;
  opening and closing fail with ``StateUnavailable``.

Rate limits, approvals and bypasses share one Redis client, which this object opens, hands to each and closes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gwc.runtime.governance.approvals import DEFAULT_TTL_S, Approvals, MemoryApprovals
from gwc.runtime.governance.approvals_redis import RedisApprovals
from gwc.runtime.governance.backend import connect
from gwc.runtime.governance.bypasses import Bypasses, MemoryBypasses, RedisBypasses
from gwc.runtime.governance.limits import MemoryRateLimiter, RateLimiter, RedisRateLimiter

if TYPE_CHECKING:
    from redis.asyncio import Redis

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass
class State:
    backend: str  # "memory" or "redis"
    limits: RateLimiter
    approvals: Approvals
    bypasses: Bypasses
    redis: Redis | None = None  # the one client the parts share (None in memory)

    @classmethod
    def from_url(cls, url: str | None, *, approval_ttl_s: float = DEFAULT_TTL_S,
                 socket_timeout: float = 0.2, clock: Callable[[], float] = time.time,
                 **limit_options: Any) -> State:
        """Build the state for ``--state URL`` (none or ``memory``; ``redis[s]://``, ``unix://``);
        ``limit_options`` go to the rate limiter (e.g. ``on_fallback``). Raises ValueError for an
        unsupported URL."""
        if not url or url == "memory":
            return cls("memory", MemoryRateLimiter(), MemoryApprovals(approval_ttl_s, clock),
                       MemoryBypasses(clock))
        if not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"unsupported state backend {url!r} (expected memory or redis://...)")
        client = connect(url, socket_timeout=socket_timeout)
        return cls("redis", RedisRateLimiter(client, **limit_options),
                   RedisApprovals(client, approval_ttl_s, clock), RedisBypasses(client, clock), client)

    async def aclose(self) -> None:
        """Close the one Redis client; the limiter, approvals and bypasses only borrow it."""
        if self.redis is not None:
            await self.redis.aclose()
