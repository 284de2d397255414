"""Rate limits (DESIGN.md access rule 6): GCRA, in memory or shared by a fleet through Redis.

Algorithm: GCRA (generic cell rate algorithm), the smooth form of a token bucket. A limit of N calls per
minute has an emission interval ``T = 60/N`` s; each key stores one number, its theoretical arrival time
(TAT). A call at ``now`` passes when ``TAT - now <= tau`` and then moves ``TAT = max(TAT, now) + T``; a
refused call changes nothing and is told ``retry_after_s = TAT - now - tau``. There are no windows, so
there is no burst at window edges: in any interval of length W at most ``burst + W/T`` calls pass.

Burst: a limit is a budget. ``per_user_rpm: 60`` reads as "60 calls a minute", so by default the burst is
N: up to N calls at once (``tau = (burst - 1) * T``), the budget refilling smoothly at one call every T.
A limit may set a smaller burst (``per_user_burst``, ``upstream_burst``, a rule's ``rate_limit_burst``;
the compiler keeps it within 1..N) to space calls out: burst 1 admits one call every T, never two back to
back. In any minute at most ``burst + N`` calls pass, and over longer periods N a minute: a spent budget
comes back one call every T, not whole at a window's edge.

Keys are strings, one per limit (see ``limit_key``); ``limits_for`` builds every limit that applies to a
request from the bundle: ``user:<subject>:server:<server>`` (per_user_rpm),
``user:<subject>:server:<server>:tool:<tool>`` (tool limits), ``rule:<rule id>:user:<subject>`` (a rule's
rate_limit_per_minute) and ``server:<server>`` (upstream-wide cap). ``check_all`` checks every limit that
applies: the call passes only if all pass, and a refused call consumes no budget of any of them.

Backends share one async interface (``RateLimiter``):

- ``MemoryRateLimiter`` (default): per node. Bounded: at most ``max_entries`` keys (a cachetools TLRUCache);
  a key's entry expires when its TAT has passed, the moment its state equals a fresh key's, so expiry never
  changes a verdict. When the bound is hit the least recently used key is evicted (it regains its burst).
- ``RedisRateLimiter(client)``: the whole fleet shares one budget. A ``check_all`` is decided by a Lua
  script (EVALSHA, falling back to EVAL when the script is not cached), atomically: all TATs are read,
  all limits decided, and only if all pass are the TATs written (``SET ... PX`` so idle keys expire when
  their TAT passes). A check goes to Redis at once when nothing else is there; checks that come while
  a script call is in flight wait for it and then go together in the next one (up to ``MAX_BATCH``),
  decided in the order they came, each as if alone. Under load that is one round trip for many calls
  instead of one each; a lone call waits for nothing. Time comes from the Redis server (``TIME``), so
  node clocks do not matter. Keys are ``{gwc:rl}:<key>``: one hash slot, so the multi-key script also
  works on Redis Cluster.

Redis unreachable (connection refused, reset, or no answer within ``socket_timeout``, 0.2 s by default):
the check is answered by a per-node ``MemoryRateLimiter`` instead (limits then hold per node, not fleet-wide:
a fleet of K nodes admits up to K times the budget) and the gateway keeps serving. The outage is logged
once as a warning (``gwc.rate_limits``, not once per call), ``on_fallback(reason)`` is called once per
outage (wire it to a metrics counter) and ``outages``/``fallback_checks`` count it. For ``retry_s``
(5 s by default) every check goes straight to the local limits; after that the next check tries Redis
again, and on success the recovery is logged and Redis is used again. Other Redis errors (e.g. OOM,
WRONGTYPE) are treated the same way: a limiter problem never turns into a refused or failed call.

Not thread-safe: one instance belongs to one event loop (which is how the runtime runs).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from cachetools import TLRUCache

from gwc.runtime.governance.backend import Script, StateUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gwc.runtime.bundle.format import BundlePayload
    from gwc.runtime.policy.decide import Decision

log = logging.getLogger("gwc.rate_limits")

US = 1_000_000  # the limiters count in integer microseconds: exact, no float drift
DEFAULT_MAX_ENTRIES = 100_000
REDIS_PREFIX = "{gwc:rl}:"
MAX_BATCH = 128  # checks sent to Redis in one script call at most


@dataclass(frozen=True, slots=True)
class LimitCheck:
    allowed: bool
    retry_after_s: float = 0.0  # 0 when allowed; else seconds until this call would pass
    limited_by: str | None = None  # the key of the limit that refused (the one with the longest wait)


ALLOWED = LimitCheck(True, 0.0, None)


class Limit(NamedTuple):
    key: str
    per_minute: int
    burst: int | None = None  # calls that may pass at once; None: per_minute (the whole budget)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _params(per_minute: int, burst: int | None) -> tuple[int, int]:
    """(emission interval, tolerance) in microseconds for N per minute with its burst."""
    interval = 60 * US // _positive("per_minute", per_minute)
    at_once = per_minute if burst is None else _positive("burst", burst)
    return interval, (at_once - 1) * interval


def limit_key(*parts: str) -> str:
    """Join key parts with ':' (':' and '%' inside a part are escaped, so parts cannot collide)."""
    return ":".join(_escaped(str(p)) for p in parts)


def _escaped(part: str) -> str:
    """A key part with ':' and '%' escaped (``limits_for`` spells its keys' fixed parts out)."""
    return part.replace("%", "%25").replace(":", "%3A")


def limits_for(payload: BundlePayload, server_name: str, subject: str, tool: str | None,
               decision: Decision | None) -> list[Limit]:
    """Every limit that applies to one request (DESIGN rule 6), each with its own burst: the
    server's per-user and upstream-wide limits, and for a tools/call the tool's and the granting
    rule's (the rule whose budget the decision spends)."""
    server = payload.servers[server_name]
    caps = server.limits
    limits = []
    # The keys are limit_key's, spelled out: limit_key("user", subject, "server", server_name)...
    user, name = _escaped(subject), _escaped(server_name)
    per_user = f"user:{user}:server:{name}"
    if caps.per_user_rpm:
        limits.append(Limit(per_user, caps.per_user_rpm, caps.per_user_burst))
    if caps.upstream_rpm:
        limits.append(Limit(f"server:{name}", caps.upstream_rpm, caps.upstream_burst))
    if tool is None:
        return limits
    spec = server.tools[tool]
    if spec.limits.per_user_rpm:
        limits.append(Limit(f"{per_user}:tool:{_escaped(tool)}",
                            spec.limits.per_user_rpm, spec.limits.per_user_burst))
    if decision is not None and decision.rate_limit_per_minute and decision.rate_limit_rule:
        rule = next(payload.rules[i] for i in spec.allow
                    if payload.rules[i].id == decision.rate_limit_rule)
        limits.append(Limit(f"rule:{_escaped(rule.id)}:user:{user}",
                            decision.rate_limit_per_minute, rule.rate_limit_burst))
    return limits


def _us(now: float) -> int:
    return round(now * US)


class RateLimiter:
    """The async interface of every backend."""

    async def check(self, key: str, per_minute: int, now: float | None = None, *,
                    burst: int | None = None) -> LimitCheck:
        return await self.check_all([Limit(key, per_minute, burst)], now)

    async def check_all(self, limits: Iterable[Limit | tuple[str, int]],
                        now: float | None = None) -> LimitCheck:
        raise NotImplementedError


class MemoryRateLimiter(RateLimiter):
    """Per-node GCRA limits in a bounded cache. ``clock`` gives seconds (monotonic by default)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._now_us = _us(clock())
        # An entry lives until its TAT (value) passes; the cache's timer is the last `now` we were given.
        self._tats: TLRUCache[str, int] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, tat, _now: tat, timer=lambda: self._now_us
        )

    def __len__(self) -> int:
        self._tats.expire()
        return len(self._tats)

    async def check_all(self, limits: Iterable[Limit | tuple[str, int]],
                        now: float | None = None) -> LimitCheck:
        return self.check_all_sync(limits, now)

    def check_all_sync(self, limits: Iterable[Limit | tuple[str, int]],
                       now: float | None = None) -> LimitCheck:
        now_us = _us(self._clock() if now is None else now)
        self._now_us = now_us
        decided: list[tuple[str, int]] = []
        worst, worst_key = 0, None
        for limit in limits:
            key, per_minute = limit[0], limit[1]
            interval, tau = _params(per_minute, limit[2] if len(limit) > 2 else None)
            tat = max(self._tats.get(key, now_us), now_us)
            wait = tat - now_us - tau
            if wait > worst:
                worst, worst_key = wait, key
            decided.append((key, tat + interval))
        if worst_key is not None:  # refused: nothing is consumed
            return LimitCheck(False, worst / US, worst_key)
        for key, new_tat in decided:  # all passed: commit every limit
            self._tats[key] = new_tat
        return ALLOWED


# KEYS: the TAT keys of a batch of checks, one check's after another's. ARGV[1]: the number of checks;
# then per check its now in µs ("" for the server's clock), its number of limits, and per limit its
# emission interval and tolerance in µs. Checks are decided in order, each as if alone: all its limits
# pass and are committed, or none is (a later check of the batch sees what an earlier one committed).
# Returns per check {1} when allowed, else {0, wait µs, index of its key among the check's}.
# Numbers go through string.format('%.0f') because Lua's own number-to-string keeps only 14 digits.
GCRA_LUA = """
local server_now
local replies = {}
local arg, base = 2, 0
for c = 1, tonumber(ARGV[1]) do
  local now
  if ARGV[arg] == '' then
    if not server_now then
      local t = redis.call('TIME')
      server_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    now = server_now
  else
    now = tonumber(ARGV[arg])
  end
  local count = tonumber(ARGV[arg + 1])
  arg = arg + 2
  local new = {}
  local worst, worst_i = 0, 0
  for i = 1, count do
    local interval = tonumber(ARGV[arg])
    local tau = tonumber(ARGV[arg + 1])
    arg = arg + 2
    local tat = tonumber(redis.call('GET', KEYS[base + i])) or now
    if tat < now then tat = now end
    local wait = tat - now - tau
    if wait > worst then worst, worst_i = wait, i end
    new[i] = tat + interval
  end
  if worst_i > 0 then
    replies[c] = {0, string.format('%.0f', worst), worst_i}
  else
    for i = 1, count do
      local ttl_ms = math.ceil((new[i] - now) / 1000)
      redis.call('SET', KEYS[base + i], string.format('%.0f', new[i]), 'PX', string.format('%.0f', ttl_ms))
    end
    replies[c] = {1}
  end
  base = base + count
end
return replies
"""
GCRA = Script(GCRA_LUA)


class RedisRateLimiter(RateLimiter):
    """Fleet-wide GCRA limits in Redis, with a per-node fallback while Redis is unreachable."""

    def __init__(
        self,
        client: Redis,
        *,
        retry_s: float = 5.0,
        on_fallback: Callable[[str], None] | None = None,
        fallback: MemoryRateLimiter | None = None,
    ):
        # Borrowed: the node's State opens the one Redis client and closes it (gwc.runtime.governance.state).
        self._redis = client
        self.fallback = fallback or MemoryRateLimiter()
        self.retry_s = retry_s
        self.on_fallback = on_fallback
        self.using_fallback = False  # True from an outage's first failure until Redis answers again
        self._retry_at = 0.0  # monotonic time before which checks go straight to the fallback
        self.outages = 0
        self.fallback_checks = 0
        # Checks that came while a batch was at Redis; they go together when it is answered.
        self._waiting: list[tuple[list[Limit], float | None, asyncio.Future[LimitCheck]]] = []
        self._in_flight = False
        self._batch: asyncio.Task[None] | None = None  # the batch at Redis, if sent by a task

    async def check_all(self, limits: Iterable[Limit | tuple[str, int]],
                        now: float | None = None) -> LimitCheck:
        checked = [Limit(*limit) for limit in limits]
        if not checked:
            return ALLOWED
        if self.using_fallback and time.monotonic() < self._retry_at:
            return self._local(checked, now)
        if self._in_flight:  # a batch is at Redis: this check goes with the next one
            future: asyncio.Future[LimitCheck] = asyncio.get_running_loop().create_future()
            self._waiting.append((checked, now, future))
            return await future
        self._in_flight = True  # nothing at Redis: this check goes at once, alone
        try:
            return (await self._decide([(checked, now)]))[0]
        finally:
            self._send_waiting()

    def _send_waiting(self) -> None:
        """Send the checks that waited for the last batch as one batch, in a task of its own (no
        caller waits for others' answers); when none wait, the next check goes at once."""
        if not self._waiting:
            self._in_flight = False
            return
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._batch = asyncio.get_running_loop().create_task(self._settle(batch))
        self._batch.add_done_callback(lambda _: self._send_waiting())

    async def _settle(self, batch: list[tuple[list[Limit], float | None,
                                              asyncio.Future[LimitCheck]]]) -> None:
        try:
            checks = await self._decide([(checked, now) for checked, now, _ in batch])
        except BaseException as exc:  # cancelled at shutdown: nobody is left to answer
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            raise
        for (_, _, future), check in zip(batch, checks, strict=True):
            if not future.done():  # its caller may have gone (cancelled)
                future.set_result(check)

    async def _decide(self, batch: list[tuple[list[Limit], float | None]]) -> list[LimitCheck]:
        """One script call for the whole batch; per-node limits for all of it when Redis fails
        (or failed a moment ago: the batch waited while the check before it found out)."""
        if self.using_fallback and time.monotonic() < self._retry_at:
            return [self._local(checked, now) for checked, now in batch]
        keys: list[str] = []
        args: list[str | int] = [len(batch)]
        for checked, now in batch:
            args.extend(("" if now is None else _us(now), len(checked)))
            for limit in checked:
                keys.append(REDIS_PREFIX + limit.key)
                args.extend(_params(limit.per_minute, limit.burst))
        try:
            replies = await GCRA(self._redis, keys, args)
        except StateUnavailable as exc:
            self._outage(exc.__cause__ or exc)
            return [self._local(checked, now) for checked, now in batch]
        if self.using_fallback:
            self.using_fallback = False
            log.warning("rate limits: redis reachable again, limits are fleet-wide again")
        return [ALLOWED if int(reply[0]) == 1
                else LimitCheck(False, int(reply[1]) / US, checked[int(reply[2]) - 1].key)
                for (checked, _), reply in zip(batch, replies, strict=True)]

    def _outage(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.retry_s
        if self.using_fallback:
            return  # same outage: logged and counted already
        self.using_fallback = True
        self.outages += 1
        reason = f"{type(exc).__name__}: {exc}"
        log.warning(
            "rate limits: redis unreachable, falling back to per-node limits (retry in %.1fs): %s",
            self.retry_s, reason, extra={"reason": reason},
        )
        if self.on_fallback is not None:
            try:
                self.on_fallback(reason)
            except Exception:  # a metrics hook must never break a call
                log.exception("rate limits: on_fallback hook failed")

    def _local(self, limits: Sequence[Limit], now: float | None) -> LimitCheck:
        self.fallback_checks += 1
        return self.fallback.check_all_sync(limits, now)
