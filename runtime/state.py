"""A node's shared state in one object: rate-limit counters, approvals and bypasses (``--state``).

``memory`` (or no URL): everything lives in this node (a single-node gateway). ``redis://``,
``rediss://`` or ``unix://``: the fleet shares it, so any node can serve any step. What each part
does when Redis is unreachable differs on purpose, and is documented in its module:

- limits (``runtime.rate_limits``): fall back to per-node limits, calls keep flowing;
- approvals (``runtime.approvals``): fail closed, ``StateUnavailable`` -> ``state_unavailable``;
- bypasses (``runtime.bypasses``): the last snapshot is honoured until each bypass expires;
  opening and closing fail with ``StateUnavailable``.

Approvals and bypasses share one Redis client; the limiter keeps its own (it is built by
``rate_limits.from_state_url``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from runtime.approvals import DEFAULT_TTL_S, Approvals, MemoryApprovals, RedisApprovals
from runtime.bypasses import Bypasses, MemoryBypasses, RedisBypasses
from runtime.rate_limits import Limits, from_state_url
from runtime.state_backend import connect

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass
class State:
    backend: str  # "memory" or "redis"
    limits: Limits
    approvals: Approvals
    bypasses: Bypasses
    _client: Any = None

    @classmethod
    def from_url(cls, url: str | None, *, approval_ttl_s: float = DEFAULT_TTL_S,
                 socket_timeout: float = 0.2, clock: Callable[[], float] = time.time,
                 **limit_options: Any) -> State:
        """Build the state for ``--state URL``; ``limit_options`` go to the rate limiter
        (e.g. ``on_fallback``). Raises ValueError for an unsupported URL."""
        if not url or url == "memory":
            return cls("memory", from_state_url(None), MemoryApprovals(approval_ttl_s, clock),
                       MemoryBypasses(clock))
        if not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"unsupported state backend {url!r} (expected memory or redis://...)")
        client = connect(url, socket_timeout=socket_timeout)
        return cls("redis", from_state_url(url, socket_timeout=socket_timeout, **limit_options),
                   RedisApprovals(client, approval_ttl_s, clock), RedisBypasses(client, clock), client)

    async def aclose(self) -> None:
        await self.limits.aclose()
        await self.approvals.aclose()
        await self.bypasses.aclose()
        if self._client is not None:
            await self._client.aclose()
