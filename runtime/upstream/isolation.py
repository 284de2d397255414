"""Isolation per upstream: one bad MCP server never takes the others down with it.

Each upstream (one per server in the bundle) has its own connection pool, a concurrency cap with a
bounded wait for a free slot, and circuit breakers. A call to an upstream whose breaker is open, or
whose slots stay full past the wait, fails at once instead of queueing behind a sick server; the
timeouts come from the manifest. Everything is visible in ``/metrics``.

Breakers are kept per caller and per upstream, so that one caller cannot open an upstream for
everyone (five calls whose input makes the upstream answer 5xx would otherwise refuse every user for
10 s). A caller's own breaker opens on its own consecutive failures and refuses only that caller. The
upstream's breaker opens only when the consecutive failures come from at least ``BREAKER_CALLERS``
distinct callers, which is what a dead or sick upstream looks like; in half-open state, its probes
reopen it only once ``BREAKER_CALLERS`` distinct callers' probes failed in a row, so one caller
cannot keep it open by failing every probe. A caller is the human an agent acts for, else the
token's subject (:func:`caller_of`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal

import aiohttp
from cachetools import LRUCache

from gwc.runtime.bundle.format import Server
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal

log = logging.getLogger("gwc.upstreams")

SLOT_WAIT_S = 0.25  # the longest a call waits for a free slot before failing fast
BREAKER_FAILURES = 5  # consecutive failures that open the breaker
BREAKER_CALLERS = 3  # distinct callers among them that open an upstream's breaker for everyone
BREAKER_COOLDOWN_S = 10.0  # how long it stays open before one probe call is let through
CALLER_BREAKERS = 10_000  # callers whose recent failures an upstream remembers (least recent go)
RETIRE_AFTER_S = 60.0  # a replaced pool is closed after in-flight calls had time to finish
BreakerState = Literal["closed", "open", "half_open"]
BREAKER_GAUGE = {"closed": 0, "half_open": 1, "open": 2}


class UpstreamUnavailable(Exception):
    """The call was not sent: the breaker is open or every slot stayed busy."""


def caller_of(principal: Principal) -> str:
    """Whose failures these are: an agent's count as its human's, so agents cannot outvote one."""
    if principal.acting_for is not None:
        return f"human:{principal.acting_for}"
    return f"{principal.kind}:{principal.subject}"


class Breaker:
    """Closed until ``threshold`` consecutive failures from at least ``callers`` distinct callers;
    open for ``cooldown_s``; then half-open, letting exactly one probe through at a time: a success
    closes the breaker, failed probes from ``callers`` distinct callers in a row reopen it."""

    def __init__(self, threshold: int = BREAKER_FAILURES, cooldown_s: float = BREAKER_COOLDOWN_S,
                 callers: int = 1) -> None:
        self.threshold, self.cooldown_s, self.callers = threshold, cooldown_s, callers
        self.state: BreakerState = "closed"
        self._failures = 0
        self._failed_by: set[str] = set()  # distinct callers of the current failures (<= callers)
        self._opened_at = 0.0
        self._probing = False

    def admit(self) -> bool:
        """May a call go through now? In half-open state only the single probe may."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if time.monotonic() - self._opened_at < self.cooldown_s:
                return False
            self.state = "half_open"
            self._failures, self._failed_by = 0, set()  # reopening takes failed probes
        if self._probing:
            return False
        self._probing = True
        return True

    def abandoned(self) -> None:
        """The probe ended without a verdict (never sent, or cancelled): another may go.
        After ``succeeded`` or ``failed`` it changes nothing."""
        self._probing = False

    def succeeded(self) -> None:
        self._failures, self._failed_by = 0, set()
        self._probing = False
        self.state = "closed"

    def failed(self, caller: str) -> None:
        self._probing = False
        self._failures += 1
        if len(self._failed_by) < self.callers:
            self._failed_by.add(caller)
        enough = 1 if self.state == "half_open" else self.threshold
        if self._failures >= enough and len(self._failed_by) >= self.callers:
            self.state = "open"
            self._opened_at = time.monotonic()


def http_pool(server: Server) -> aiohttp.ClientSession:
    """The HTTP connection pool of one upstream: at most its ``max_concurrency`` connections. Every
    caller's calls share it, so it keeps no cookies: one an answer set for one caller would go out
    with the next caller's calls (the cookie jar's work on every request is saved too)."""
    connector = aiohttp.TCPConnector(limit=server.max_concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",),
                                 cookie_jar=aiohttp.DummyCookieJar())


# The transport seam: how an upstream's HTTP pool is made (tests pass one bound to a fake upstream).
Connect = Callable[[Server], aiohttp.ClientSession]


class Upstream:
    """One upstream's pool, slots and breakers (its own, and one per caller that failed lately)."""

    def __init__(self, name: str, server: Server, metrics: Metrics, connect: Connect) -> None:
        self.name, self.server, self._metrics = name, server, metrics
        self.http = connect(server)
        self.breaker = Breaker(callers=BREAKER_CALLERS)
        self._callers: LRUCache[str, Breaker] = LRUCache(CALLER_BREAKERS)  # only callers that failed
        self._slots = asyncio.Semaphore(server.max_concurrency)
        self._inflight = metrics.upstream_inflight.labels(name)
        self._breaker_gauge = metrics.upstream_breaker.labels(name)
        self._breaker_gauge.set(0)

    def same_wiring(self, server: Server) -> bool:
        """Can this pool serve the server as a new bundle describes it?"""
        return (server.upstream == self.server.upstream
                and server.max_concurrency == self.server.max_concurrency)

    def slot(self, caller: str) -> Slot:
        """Hold one of the upstream's slots for ``caller``'s call (``async with``)."""
        return Slot(self, caller)

    async def _admit(self, caller: str, probes: list[Breaker]) -> None:
        """Take a slot for ``caller``; raise UpstreamUnavailable instead of queueing behind a
        sick upstream, or letting a failing caller hammer it. ``probes`` gets the breakers this
        call is the one probe of."""
        own = self._callers.get(caller)
        if own is not None and not own.admit():
            self._metrics.count_upstream_rejected(self.name, "caller_breaker_open")
            raise UpstreamUnavailable("your calls to this upstream keep failing; they are "
                                      "refused for a few seconds (other callers are served)")
        if own is not None and own.state == "half_open":
            probes.append(own)
        if not self.breaker.admit():
            self._metrics.count_upstream_rejected(self.name, "breaker_open")
            raise UpstreamUnavailable("the upstream is failing; its circuit breaker is open")
        if self.breaker.state == "half_open":
            probes.append(self.breaker)
            self._breaker_gauge.set(BREAKER_GAUGE["half_open"])
            log.warning("circuit breaker half-open: one probe call goes through",
                        extra={"server": self.name})
        try:
            if self._slots.locked():  # only a full upstream pays for the timed wait
                await asyncio.wait_for(self._slots.acquire(), SLOT_WAIT_S)
            else:
                await self._slots.acquire()
        except TimeoutError:
            self._metrics.count_upstream_rejected(self.name, "busy")
            raise UpstreamUnavailable(f"the upstream is at its concurrency cap "
                                      f"({self.server.max_concurrency})") from None
        self._inflight.inc()

    def _leave(self) -> None:
        self._inflight.dec()
        self._slots.release()

    def record(self, healthy: bool, caller: str) -> None:
        """The outcome of ``caller``'s call that reached (or tried to reach) the upstream."""
        before = self.breaker.state
        if healthy:
            if caller in self._callers:  # a failed caller recovers (cachetools' pop of a
                del self._callers[caller]  # missing key costs an exception on every call)
            self.breaker.succeeded()
        else:
            own = self._callers.get(caller)
            if own is None:
                own = self._callers[caller] = Breaker()
            was = own.state
            own.failed(caller)
            if own.state == "open" and was == "closed":
                log.warning("circuit breaker open for one caller", extra={
                    "server": self.name, "caller": caller})
            self.breaker.failed(caller)
        if self.breaker.state != before:
            self._breaker_gauge.set(BREAKER_GAUGE[self.breaker.state])
            log.warning("circuit breaker %s", self.breaker.state.replace("_", "-"),
                        extra={"server": self.name, "from": before})

    async def close(self) -> None:
        await self.http.close()


class Slot:
    """One call's hold on an upstream slot. A class, not a generator-based context manager:
    every call to an upstream enters one, and a generator costs several microseconds more."""

    __slots__ = ("_caller", "_probes", "_upstream")

    def __init__(self, upstream: Upstream, caller: str) -> None:
        self._upstream, self._caller = upstream, caller
        self._probes: list[Breaker] = []

    async def __aenter__(self) -> None:
        try:
            await self._upstream._admit(self._caller, self._probes)
        except BaseException:
            self._give_back_probes()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            self._upstream._leave()
        finally:
            self._give_back_probes()

    def _give_back_probes(self) -> None:
        for breaker in self._probes:  # a probe that ended without a verdict (busy, cancelled) is
            breaker.abandoned()  # given back


class Upstreams:
    """The node's upstreams by server name; rewired when a bundle changes a server's URL or cap."""

    def __init__(self, metrics: Metrics, connect: Connect = http_pool) -> None:
        self._metrics, self._connect = metrics, connect
        self._by_name: dict[str, Upstream] = {}
        self._retiring: set[asyncio.Task] = set()

    def get(self, name: str, server: Server) -> Upstream:
        upstream = self._by_name.get(name)
        if upstream is not None and (upstream.server is server or upstream.same_wiring(server)):
            upstream.server = server
            return upstream
        if upstream is not None:
            self._retire(upstream)
        upstream = self._by_name[name] = Upstream(name, server, self._metrics, self._connect)
        return upstream

    def _retire(self, upstream: Upstream) -> None:
        async def later() -> None:
            await asyncio.sleep(RETIRE_AFTER_S)
            await upstream.close()
        task = asyncio.get_running_loop().create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*(u.close() for u in self._by_name.values()))
