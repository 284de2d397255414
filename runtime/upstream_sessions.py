"""The gateway's own MCP sessions with upstreams (2025-era protocol), pooled per node.

A client's session is with the gateway (sealed, see ``sessions.py``); what the gateway holds with
an upstream is its business: one upstream session per upstream, principal, protocol version and set
of client capabilities, opened lazily with ``initialize`` on first use and shared by that
principal's calls on this node. When an upstream forgets a session (it answers 404), the caller
drops it here and a new one is opened transparently.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson
from cachetools import TTLCache

from runtime.policy import Principal

MAX_SESSIONS = 50_000
IDLE_TTL_S = 1800.0  # an unused upstream session is forgotten (and reopened on demand)
CLIENT_INFO = {"name": "gwc", "version": "1"}


@dataclass(frozen=True, slots=True)
class UpstreamSession:
    session_id: str | None  # None: the upstream runs without sessions
    protocol_version: str


SessionKey = tuple[str, str, str, str, str | None, str, str]


def session_key(server: str, upstream: str, principal: Principal, version: str,
                capabilities: dict[str, Any]) -> SessionKey:
    caps = hashlib.sha256(orjson.dumps(capabilities, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return (server, upstream, principal.subject, principal.kind, principal.acting_for, version, caps)


def initialize_params(version: str, capabilities: dict[str, Any]) -> dict[str, Any]:
    return {"protocolVersion": version, "capabilities": capabilities, "clientInfo": CLIENT_INFO}


class UpstreamSessions:
    """Open sessions by key, with single-flight opening (concurrent first calls share one
    ``initialize``)."""

    def __init__(self) -> None:
        self._open: TTLCache[SessionKey, UpstreamSession] = TTLCache(MAX_SESSIONS, IDLE_TTL_S)
        self._opening: dict[SessionKey, asyncio.Future[UpstreamSession]] = {}

    async def get(self, key: SessionKey, opener: Callable[[], Awaitable[UpstreamSession]]
                  ) -> tuple[UpstreamSession, bool]:
        """The session for ``key`` and whether it was opened just now."""
        session = self._open.get(key)
        if session is not None:
            self._open[key] = session  # touch: idle expiry counts from the last use
            return session, False
        pending = self._opening.get(key)
        if pending is not None:
            return await asyncio.shield(pending), False
        future: asyncio.Future[UpstreamSession] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            session = await opener()
            self._open[key] = session
            future.set_result(session)
            return session, True
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody logs "never retrieved"
            raise
        finally:
            del self._opening[key]

    def forget(self, key: SessionKey, session: UpstreamSession) -> None:
        """Drop a session the upstream no longer knows (unless another call already replaced it)."""
        if self._open.get(key) == session:
            del self._open[key]
