"""What the state backends of approvals and bypasses share: their errors (``Refusal``,
``StateUnavailable``), and for Redis the client and the Lua script runner.

One client (one connection pool) serves both, built by :func:`connect` with short socket timeouts
(0.2 s by default) and one immediate retry, so a connection left stale by a Redis restart is replaced
transparently while a real outage is detected fast. Every Redis failure (refused, reset, timed out,
or an error reply) becomes :class:`StateUnavailable`: approvals fail closed on it, bypasses fall back
to their last snapshot (see those modules). Memory backends never raise it.

``redis`` is imported lazily: a node with in-memory state never loads it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis


class StateUnavailable(Exception):
    """The shared state backend cannot be reached; answered as ``state_unavailable`` (HTTP 503)."""


class Refusal(Exception):
    """A refused governance operation: the HTTP status, stable ``reason`` and message the API answers
    with (``headers``: any the answer needs). Raised by the state parts and by the API itself."""

    def __init__(self, status: int, reason: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers


def connect(url: str, *, socket_timeout: float = 0.2) -> Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs (no I/O until first used)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis.from_url(url, socket_timeout=socket_timeout,
                                   socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 1),
                                   decode_responses=True)


def unavailable(exc: BaseException) -> StateUnavailable:
    return StateUnavailable(f"shared state (redis) unavailable: {type(exc).__name__}: {exc}")


def redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


class Script:
    """A Lua script run by EVALSHA, sent again with EVAL when Redis lost it (restart, SCRIPT FLUSH).

    Scripts are atomic; every key they touch is in one hash slot (``{gwc:...}`` prefixes), so they
    also run on Redis Cluster, including keys a script derives from another key's value."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            try:
                return await client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await client.eval(self.source, len(keys), *keys, *args)
        except redis_errors() as exc:
            raise unavailable(exc) from exc


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """A Lua ``HGETALL`` reply (field, value, field, value, ...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
