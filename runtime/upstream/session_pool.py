"""The gateway's own MCP sessions with upstreams (2025-era protocol), pooled per node.

A client's session is with the gateway (sealed, see ``sessions.py``); what the gateway holds with
an upstream is its business: one upstream session per upstream and client session (its principal,
protocol version, client capabilities and start), opened lazily with ``initialize`` on first use on
this node and shared by that client session's calls here. When an upstream forgets a session (it
answers 404), the caller drops it here and a new one is opened transparently.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
from cachetools import TTLCache

from gwc.runtime.policy.decide import Principal

MAX_SESSIONS = 50_000
IDLE_TTL_S = 1800.0  # an unused upstream session is forgotten (and reopened on demand)
CLIENT_INFO = {"name": "gwc", "version": "1"}


@dataclass(frozen=True, slots=True)
class UpstreamSession:
    session_id: str | None  # None: the upstream runs without sessions
    protocol_version: str
    capabilities: dict[str, Any] = field(default_factory=dict, compare=False)  # the upstream's own


SessionKey = tuple[str, str, str, str, str | None, str, str, int, str]


def session_key(server: str, upstream: str, principal: Principal, version: str,
                capabilities: dict[str, Any], created: int = 0, nonce: str = "") -> SessionKey:
    """One upstream session per client session (``created``: when the client's session began, and
    its ``nonce``; 0 and "" for the gateway's own): what an upstream keeps per session (its GET
    stream, subscriptions, log level, requests it waits on) then belongs to one client."""
    caps = hashlib.sha256(orjson.dumps(capabilities, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return (server, upstream, principal.subject, principal.kind, principal.acting_for, version,
            caps, created, nonce)


def initialize_params(version: str, capabilities: dict[str, Any]) -> dict[str, Any]:
    return {"protocolVersion": version, "capabilities": capabilities, "clientInfo": CLIENT_INFO}


class UpstreamSessions:
    """Open sessions by key, with single-flight opening: concurrent first calls share one
    ``initialize``, which runs as its own task so that a caller going away does not abort it for
    the others."""

    def __init__(self) -> None:
        self._open: TTLCache[SessionKey, UpstreamSession] = TTLCache(MAX_SESSIONS, IDLE_TTL_S)
        self._opening: dict[SessionKey, asyncio.Task[UpstreamSession]] = {}

    async def get(self, key: SessionKey, opener: Callable[[], Coroutine[Any, Any, UpstreamSession]]
                  ) -> tuple[UpstreamSession, bool]:
        """The session for ``key`` and whether this call opened it."""
        session = self._open.get(key)
        if session is not None:
            self._open[key] = session  # touch: idle expiry counts from the last use
            return session, False
        task = self._opening.get(key)
        opened_here = task is None
        if task is None:
            task = asyncio.get_running_loop().create_task(opener())
            self._opening[key] = task
            task.add_done_callback(lambda done: self._opened(key, done))
        return await asyncio.shield(task), opened_here

    def _opened(self, key: SessionKey, task: asyncio.Task[UpstreamSession]) -> None:
        if self._opening.get(key) is task:
            del self._opening[key]
        if not task.cancelled() and task.exception() is None:
            self._open[key] = task.result()

    def forget(self, key: SessionKey, session: UpstreamSession) -> None:
        """Drop a session the upstream no longer knows (unless another call already replaced it)."""
        if self._open.get(key) == session:
            del self._open[key]
