"""Break-glass bypasses (DESIGN.md Governance): for a server, for a while, with a reason.

Members of the bundle's ``gateway.break_glass.group`` open a bypass (``byp_<random>``) for one
server with a reason and a TTL (at most ``break_glass.max_ttl_s``); while it is open, their calls to
that server skip visibility, policy, approvals and limits, never authentication or audit. Only
humans count as members (:func:`is_break_glass`): an agent's token carries its human's groups, and
breaking glass is a human's call. Any member may close any open bypass.

Opening and closing are audited before they take effect (``audit(event, bypass)`` is awaited
first; if it raises, nothing changes). When the audit record of an opening is written but the
bypass cannot be stored, a "closed" record follows it (best effort), so the trail does not show a
bypass left open that never was.

``active(server)`` is on the hot path of break-glass members' calls, so it must be cheap:

- ``MemoryBypasses``: one node; a dict lookup. Bounded (``max_open``, 1,000); expired ones dropped.
- ``RedisBypasses``: the fleet's bypasses in one Redis hash (``{gwc:bp}:open``, id -> JSON). Each node
  answers ``active`` from a local snapshot, re-read (one ``HGETALL``) when it is older than
  ``refresh_s`` (1 s): a bypass opened or closed on node A holds on node B within about a second. The
  call that finds the snapshot stale waits for the re-read (concurrent ones share it), so a closed
  bypass is never honoured for longer than ``refresh_s`` after the close. Opening or closing on a
  node updates its own snapshot at once.

Redis unreachable: opening, closing and listing raise :class:`StateUnavailable` (503). ``active``
keeps answering from the last snapshot: the bypasses this node last saw are honoured until they
expire (a close made elsewhere during the outage is not seen), expired ones never. While Redis is
down the snapshot is re-read in the background every ``retry_s`` (5 s), so calls do not wait for it;
the outage and the recovery are logged once (``gwc.bypasses``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, cast

from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.governance.backend import Refusal, Script, StateUnavailable, redis_errors, unavailable
from gwc.runtime.policy.decide import Principal

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("gwc.bypasses")

MAX_REASON = 500
DEFAULT_MAX_OPEN = 1000
ID_PREFIX = "byp_"
ID_RE = re.compile(r"byp_[A-Za-z0-9_-]{16,64}")

Event = Literal["opened", "closed"]
AuditHook = Callable[[Event, "Bypass"], Awaitable[None]]


class BypassError(Refusal):
    """A refused bypass operation: 400 invalid_request, 404 not_found, 409 too_many_bypasses."""


@dataclass(frozen=True, slots=True)
class Bypass:
    id: str
    server: str
    opened_by: str
    reason: str
    opened_at: float
    expires: float

    @property
    def ttl_s(self) -> int:
        return round(self.expires - self.opened_at)


def is_break_glass(payload: BundlePayload, principal: Principal) -> bool:
    """Whether the principal is a member of the bundle's break-glass group (humans only)."""
    group = payload.gateway.break_glass.group
    return group is not None and principal.kind == "human" and group in principal.groups


class _Open:
    """Open bypasses by id and by server; expired ones are never returned and dropped when met."""

    def __init__(self) -> None:
        self.by_id: dict[str, Bypass] = {}
        self._by_server: dict[str, dict[str, Bypass]] = {}

    def replace(self, bypasses: Iterable[Bypass]) -> None:
        self.by_id, self._by_server = {}, {}
        for bypass in bypasses:
            self.add(bypass)

    def add(self, bypass: Bypass) -> None:
        self.by_id[bypass.id] = bypass
        self._by_server.setdefault(bypass.server, {})[bypass.id] = bypass

    def remove(self, bypass_id: str) -> Bypass | None:
        bypass = self.by_id.pop(bypass_id, None)
        if bypass is not None:
            of_server = self._by_server[bypass.server]
            del of_server[bypass_id]
            if not of_server:
                del self._by_server[bypass.server]
        return bypass

    def live(self, now: float) -> list[Bypass]:
        for bypass in [b for b in self.by_id.values() if b.expires <= now]:
            self.remove(bypass.id)
        return sorted(self.by_id.values(), key=lambda b: (b.opened_at, b.id))

    def active(self, server: str, now: float) -> Bypass | None:
        of_server = self._by_server.get(server)
        if not of_server:
            return None
        best = max(of_server.values(), key=lambda b: b.expires)
        return best if best.expires > now else None


class Bypasses:
    """The interface of every backend; validation and audit-first order live here."""

    def __init__(self, clock: Callable[[], float] = time.time, max_open: int = DEFAULT_MAX_OPEN) -> None:
        self._clock, self.max_open = clock, max_open
        self._open = _Open()  # the store (memory) or this node's snapshot (Redis)

    async def open(self, server: str, opened_by: str, reason: str, ttl_s: int, *,
                   max_ttl_s: int | None = None, audit: AuditHook | None = None) -> Bypass:
        """Open a bypass of ``server`` for ``ttl_s`` seconds (at most ``max_ttl_s``)."""
        reason = reason.strip() if isinstance(reason, str) else ""
        if not reason or len(reason) > MAX_REASON:
            raise BypassError(400, "invalid_request", f"a reason is required (1 to {MAX_REASON} characters)")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
            raise BypassError(400, "invalid_request", "ttl_s must be a positive integer (seconds)")
        if max_ttl_s is not None and ttl_s > max_ttl_s:
            raise BypassError(400, "ttl_too_long", f"ttl_s {ttl_s} is above the break-glass maximum of "
                              f"{max_ttl_s} s (gateway.yaml break_glass.max_ttl_s)")
        now = self._clock()
        bypass = Bypass(ID_PREFIX + secrets.token_urlsafe(18), server, opened_by, reason, now, now + ttl_s)
        if audit is not None:
            await audit("opened", bypass)
        try:
            stored = await self._add(bypass, now)
        except StateUnavailable:
            await _compensate(audit, bypass)
            raise
        if not stored:
            await _compensate(audit, bypass)
            raise BypassError(409, "too_many_bypasses", f"{self.max_open} bypasses are open already")
        self._open.add(bypass)
        return bypass

    async def close(self, bypass_id: str, *, audit: AuditHook | None = None) -> Bypass:
        """Close an open bypass (closing one that another node just closed is not an error)."""
        bypass = await self._get(bypass_id) if ID_RE.fullmatch(bypass_id) else None
        if bypass is None or bypass.expires <= self._clock():
            raise BypassError(404, "not_found", f"no open bypass {bypass_id}")
        if audit is not None:
            await audit("closed", bypass)
        await self._remove(bypass_id)
        self._open.remove(bypass_id)
        return bypass

    async def list_open(self) -> list[Bypass]:
        """Every open bypass, oldest first (read from the backend itself, never a snapshot)."""
        return self._open.live(self._clock())

    async def active(self, server: str) -> Bypass | None:
        """The open bypass of ``server`` (the one lasting longest), or None. Hot path: see above."""
        return self._open.active(server, self._clock())

    async def _add(self, bypass: Bypass, now: float) -> bool:
        """Store it unless ``max_open`` are open (False)."""
        live = self._open.live(now)
        return len(live) < self.max_open

    async def _get(self, bypass_id: str) -> Bypass | None:
        return self._open.by_id.get(bypass_id)

    async def _remove(self, bypass_id: str) -> None:
        return None


async def _compensate(audit: AuditHook | None, bypass: Bypass) -> None:
    if audit is None:
        return
    try:
        await audit("closed", bypass)
    except Exception:
        log.exception("bypass %s: its opening is audited but it was not opened, and the closing "
                      "record could not be written", bypass.id)


class MemoryBypasses(Bypasses):
    """One node's bypasses: the base class's dict is the store."""


def _to_json(bypass: Bypass) -> str:
    return json.dumps(asdict(bypass), separators=(",", ":"))


def _from_json(text: str) -> Bypass | None:
    try:
        return Bypass(**json.loads(text))
    except (ValueError, TypeError):
        return None  # not ours, or from an incompatible version: never honoured


# KEYS: the hash of open bypasses. ARGV: max open, now, new id, its JSON. Drops expired ones first.
ADD = Script("""
local now = tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local open = 0
for i = 1, #all, 2 do
  local ok, bypass = pcall(cjson.decode, all[i + 1])
  if ok and type(bypass) == 'table' and tonumber(bypass.expires) and bypass.expires > now then
    open = open + 1
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if open >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
""")


class RedisBypasses(Bypasses):
    """A fleet's bypasses in Redis, answered from a per-node snapshot (see the module docstring)."""

    KEY = "{gwc:bp}:open"

    def __init__(self, client: Redis, clock: Callable[[], float] = time.time,
                 max_open: int = DEFAULT_MAX_OPEN, refresh_s: float = 1.0, retry_s: float = 5.0) -> None:
        super().__init__(clock, max_open)
        self._redis, self.refresh_s, self.retry_s = client, refresh_s, retry_s
        self._due = float("-inf")  # monotonic time the snapshot is to be re-read
        self._reading: asyncio.Task | None = None
        self.reachable = True  # whether the last read of the snapshot worked
        self.refreshes = 0

    async def _add(self, bypass: Bypass, now: float) -> bool:
        args = [self.max_open, repr(now), bypass.id, _to_json(bypass)]
        return bool(await ADD(self._redis, [self.KEY], args))

    async def _get(self, bypass_id: str) -> Bypass | None:
        try:
            found = await self._redis.hget(self.KEY, bypass_id)
        except redis_errors() as exc:
            raise unavailable(exc) from exc
        # The client decodes replies (decode_responses=True): str, where redis-py's types say bytes | str.
        return None if found is None else _from_json(cast(str, found))

    async def _remove(self, bypass_id: str) -> None:
        try:
            await self._redis.hdel(self.KEY, bypass_id)
        except redis_errors() as exc:
            raise unavailable(exc) from exc

    async def list_open(self) -> list[Bypass]:
        started = time.monotonic()
        try:
            found = await self._redis.hgetall(self.KEY)
        except redis_errors() as exc:
            raise unavailable(exc) from exc
        values = cast("dict[str, str]", found).values()  # decoded replies, as in _get
        self._open.replace(b for b in map(_from_json, values) if b is not None)
        self._due = started + self.refresh_s
        return await super().list_open()

    async def active(self, server: str) -> Bypass | None:
        if time.monotonic() >= self._due:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.get_running_loop().create_task(self._reread())
            if self.reachable:  # during an outage the last snapshot answers at once
                await asyncio.shield(self._reading)
        return self._open.active(server, self._clock())

    async def _reread(self) -> None:
        try:
            await self.list_open()
        except Exception as exc:  # StateUnavailable, or anything else: the hot path must not fail
            self._due = time.monotonic() + self.retry_s
            if self.reachable:
                self.reachable = False
                log.warning("bypasses: redis unreachable; honouring the %d bypasses last seen until "
                            "they expire (retry every %.1fs): %s", len(self._open.by_id), self.retry_s, exc)
            return
        self.refreshes += 1
        if not self.reachable:
            self.reachable = True
            log.warning("bypasses: redis reachable again")
