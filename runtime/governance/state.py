"""A node's shared state in one object: rate-limit counters, approvals and bypasses (``--state``).

``memory`` (or no URL): everything lives in this node (a single-node gateway). ``redis://``,
``rediss://`` or ``unix://``: the fleet shares it, so any node can serve any step. What each part
does when Redis is unreachable differs on purpose, and is documented in its module:

- limits (``gwc.runtime.governance.limits``): fall back to per-node limits, calls keep flowing;
- approvals (``gwc.runtime.governance.approvals``): fail closed, ``StateUnavailable`` -> ``state_unavailable``;
- bypasses (``gwc.runtime.governance.bypasses``): the last snapshot is honoured until each bypass expires;
  opening and closing fail with ``StateUnavailable``.

Limits, approvals and bypasses share one Redis client: the limiter's (``RedisLimits.client``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gwc.runtime.governance.approvals import DEFAULT_TTL_S, Approvals, MemoryApprovals, RedisApprovals
from gwc.runtime.governance.bypasses import Bypasses, MemoryBypasses, RedisBypasses
from gwc.runtime.governance.limits import Limits, RedisLimits, from_state_url


@dataclass
class State:
    backend: str  # "memory" or "redis"
    limits: Limits
    approvals: Approvals
    bypasses: Bypasses

    @classmethod
    def from_url(cls, url: str | None, *, approval_ttl_s: float = DEFAULT_TTL_S,
                 socket_timeout: float = 0.2, clock: Callable[[], float] = time.time,
                 **limit_options: Any) -> State:
        """Build the state for ``--state URL``; ``limit_options`` go to the rate limiter
        (e.g. ``on_fallback``). Raises ValueError for an unsupported URL."""
        limits = from_state_url(url, socket_timeout=socket_timeout, **limit_options)
        if not isinstance(limits, RedisLimits):
            return cls("memory", limits, MemoryApprovals(approval_ttl_s, clock),
                       MemoryBypasses(clock))
        return cls("redis", limits, RedisApprovals(limits.client, approval_ttl_s, clock),
                   RedisBypasses(limits.client, clock))

    async def aclose(self) -> None:
        await self.approvals.aclose()
        await self.bypasses.aclose()
        await self.limits.aclose()  # last: it closes the Redis client the others share
