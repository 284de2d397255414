"""Per-upstream isolation (runtime/upstream/isolation.py): the circuit breakers (the upstream's, opened only
by several callers, and each caller's own), bounded slots, pool rewiring."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from gwc.runtime.bundle.format import Server
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal
from gwc.runtime.upstream import isolation
from gwc.runtime.upstream.isolation import Breaker, Upstream, Upstreams, UpstreamUnavailable, caller_of

CALLER = "human:alice"


class Clock:
    """Stands in for ``time`` inside gwc.runtime.upstream.isolation (the event loop keeps the real clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(isolation, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def server(upstream: str = "https://svc.internal/mcp", max_concurrency: int = 2,
           timeout_ms: int = 1000) -> Server:
    return Server.model_validate({
        "owner": "team-a", "upstream": upstream, "source": "registry/svc.yaml",
        "timeout_ms": timeout_ms, "max_concurrency": max_concurrency,
        "upstream_auth": {"type": "gateway_jwt"}})


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def pool(metrics: Metrics) -> AsyncIterator[Upstreams]:
    pools = Upstreams(metrics)
    yield pools
    await pools.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def rejected(metrics: Metrics, reason: str, name: str = "svc") -> float | None:
    return sample(metrics, "gwc_upstream_rejected_total", server=name, reason=reason)


def breaker_gauge(metrics: Metrics, name: str = "svc") -> float | None:
    return sample(metrics, "gwc_upstream_breaker_state", server=name)


def trip(breaker: Breaker) -> None:
    for _ in range(breaker.threshold):
        breaker.failed(CALLER)


def fail(upstream: Upstream) -> None:
    """Enough failed calls, from enough callers, to open the upstream's breaker."""
    for i in range(isolation.BREAKER_FAILURES):
        upstream.record(False, f"human:user{i}")


# --- the breaker ----------------------------------------------------------------------------------

def test_the_breaker_opens_after_threshold_consecutive_failures(clock: Clock) -> None:
    breaker = Breaker(threshold=3, cooldown_s=10)
    for _ in range(2):
        breaker.failed(CALLER)
        assert breaker.state == "closed" and breaker.admit()
    breaker.failed(CALLER)
    assert breaker.state == "open"
    assert not breaker.admit()


def test_a_success_resets_the_failure_count(clock: Clock) -> None:
    breaker = Breaker(threshold=3, cooldown_s=10)
    for _ in range(5):
        breaker.failed(CALLER)
        breaker.failed(CALLER)
        breaker.succeeded()
    assert breaker.state == "closed"
    breaker.failed(CALLER)
    breaker.failed(CALLER)
    assert breaker.state == "closed"


def test_an_open_breaker_refuses_until_the_cooldown_ends(clock: Clock) -> None:
    breaker = Breaker(threshold=1, cooldown_s=10)
    breaker.failed(CALLER)
    clock.now += 9.9
    assert not breaker.admit()
    assert breaker.state == "open"
    clock.now += 0.1
    assert breaker.admit()
    assert breaker.state == "half_open"


def test_exactly_one_probe_goes_through_half_open(clock: Clock) -> None:
    breaker = Breaker(threshold=1, cooldown_s=10)
    breaker.failed(CALLER)
    clock.now += 10
    assert [breaker.admit() for _ in range(5)] == [True, False, False, False, False]
    clock.now += 100  # waiting longer does not let a second probe through
    assert not breaker.admit()


def test_a_successful_probe_closes_the_breaker(clock: Clock) -> None:
    breaker = Breaker(threshold=2, cooldown_s=10)
    trip(breaker)
    clock.now += 10
    assert breaker.admit()
    breaker.succeeded()
    assert breaker.state == "closed"
    assert all(breaker.admit() for _ in range(5))
    breaker.failed(CALLER)  # the count started again from zero
    assert breaker.state == "closed"


def test_a_failed_probe_reopens_the_breaker_for_another_cooldown(clock: Clock) -> None:
    breaker = Breaker(threshold=5, cooldown_s=10)
    trip(breaker)
    clock.now += 10
    assert breaker.admit()
    breaker.failed(CALLER)  # one failure is enough in half-open state
    assert breaker.state == "open"
    clock.now += 9.9
    assert not breaker.admit()
    clock.now += 0.1
    assert breaker.admit()
    assert not breaker.admit()


def test_an_abandoned_probe_frees_the_probe(clock: Clock) -> None:
    breaker = Breaker(threshold=1, cooldown_s=10)
    breaker.failed(CALLER)
    clock.now += 10
    assert breaker.admit()
    breaker.abandoned()
    assert breaker.state == "half_open"
    assert breaker.admit()
    assert not breaker.admit()


# --- one caller never opens an upstream for everyone ----------------------------------------------

def test_a_shared_breaker_opens_only_on_failures_from_several_callers(clock: Clock) -> None:
    breaker = Breaker(threshold=3, cooldown_s=10, callers=2)
    for _ in range(20):
        breaker.failed("human:mallory")
    assert breaker.state == "closed" and breaker.admit()
    breaker.failed("human:bob")  # a second caller fails too: the upstream is sick
    assert breaker.state == "open" and not breaker.admit()
    breaker.succeeded()
    breaker.failed("human:bob")
    breaker.failed("human:carol")
    assert breaker.state == "closed"  # the count started again from zero: 2 < threshold


def test_one_caller_failing_every_probe_does_not_keep_it_open(clock: Clock) -> None:
    breaker = Breaker(threshold=2, cooldown_s=10, callers=2)
    breaker.failed("human:bob")
    breaker.failed("human:carol")
    clock.now += 10
    for _ in range(3):  # the same caller's probes keep failing: still half-open, the next may probe
        assert breaker.admit()
        breaker.failed("human:mallory")
        assert breaker.state == "half_open"
    assert breaker.admit()
    breaker.failed("human:bob")  # a second caller's probe fails in a row: open again
    assert breaker.state == "open" and not breaker.admit()


def test_an_agent_counts_as_the_human_it_acts_for() -> None:
    assert caller_of(Principal("alice")) == "human:alice"
    assert caller_of(Principal("bot", kind="agent", acting_for="alice")) == "human:alice"
    assert caller_of(Principal("bot", kind="agent")) == "agent:bot"
    assert caller_of(Principal("gwc", kind="service")) == "service:gwc"


async def test_a_caller_whose_calls_keep_failing_is_refused_alone(
        pool: Upstreams, metrics: Metrics, clock: Clock) -> None:
    upstream = pool.get("svc", server())
    for _ in range(3 * isolation.BREAKER_FAILURES):
        upstream.record(False, "human:mallory")
    assert upstream.breaker.state == "closed" and breaker_gauge(metrics) == 0
    with pytest.raises(UpstreamUnavailable, match="your calls to this upstream keep failing"):
        await call(upstream, "human:mallory")
    assert rejected(metrics, "caller_breaker_open") == 1
    await call(upstream, CALLER)  # everyone else is served
    upstream.record(True, CALLER)
    clock.now += isolation.BREAKER_COOLDOWN_S
    await call(upstream, "human:mallory")  # her probe, after her cooldown
    upstream.record(True, "human:mallory")  # it worked: she is served again
    await call(upstream, "human:mallory")
    assert rejected(metrics, "caller_breaker_open") == 1


# --- slots ----------------------------------------------------------------------------------------

async def hold(stack: AsyncExitStack, upstream: Upstream, n: int) -> None:
    for _ in range(n):
        await stack.enter_async_context(upstream.slot(CALLER))


async def test_a_call_waits_a_bounded_time_when_every_slot_is_held(
        pool: Upstreams, metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "SLOT_WAIT_S", 0.05)
    upstream = pool.get("svc", server(max_concurrency=2))
    async with AsyncExitStack() as stack:
        await hold(stack, upstream, 2)
        assert sample(metrics, "gwc_upstream_inflight", server="svc") == 2
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable, match=r"concurrency cap \(2\)"):
            async with upstream.slot(CALLER):
                pytest.fail("a third call got a slot")
        assert 0.04 <= time.monotonic() - started < 1
        assert rejected(metrics, "busy") == 1
        assert rejected(metrics, "breaker_open") is None
    assert sample(metrics, "gwc_upstream_inflight", server="svc") == 0
    async with upstream.slot(CALLER):  # the slots are free again
        assert sample(metrics, "gwc_upstream_inflight", server="svc") == 1
    assert upstream.breaker.state == "closed"  # being busy is not a failure


async def test_a_slot_freed_during_the_wait_is_taken(
        pool: Upstreams, metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "SLOT_WAIT_S", 5)
    upstream = pool.get("svc", server(max_concurrency=1))
    got = asyncio.Event()

    async def waiter() -> None:
        async with upstream.slot(CALLER):
            got.set()

    async with AsyncExitStack() as stack:
        await hold(stack, upstream, 1)
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.02)
        assert not got.is_set()
    await asyncio.wait_for(task, 1)
    assert got.is_set() and rejected(metrics, "busy") is None


async def test_an_open_breaker_fails_at_once(pool: Upstreams, metrics: Metrics,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "SLOT_WAIT_S", 30)
    upstream = pool.get("svc", server())
    fail(upstream)
    assert upstream.breaker.state == "open"
    assert breaker_gauge(metrics) == 2

    with pytest.raises(UpstreamUnavailable, match="circuit breaker is open"):
        await asyncio.wait_for(call(upstream), 1)  # a wait for a slot would take 30 s
    assert rejected(metrics, "breaker_open") == 1
    assert rejected(metrics, "busy") is None
    assert sample(metrics, "gwc_upstream_inflight", server="svc") == 0


async def test_the_breaker_gauge_follows_the_state(pool: Upstreams, metrics: Metrics,
                                                   clock: Clock) -> None:
    upstream = pool.get("svc", server())
    assert breaker_gauge(metrics) == 0
    fail(upstream)
    assert breaker_gauge(metrics) == 2
    clock.now += isolation.BREAKER_COOLDOWN_S
    async with upstream.slot(CALLER):  # the probe
        assert upstream.breaker.state == "half_open"
        assert breaker_gauge(metrics) == 1
        upstream.record(True, CALLER)
    assert breaker_gauge(metrics) == 0


@asynccontextmanager
async def probing_a_full_upstream(pool: Upstreams, clock: Clock) -> AsyncIterator[Upstream]:
    """A one-slot upstream whose only slot is held by a slow call admitted while the breaker was
    closed; the breaker has opened since and its cooldown is over: the next call is the probe."""
    upstream = pool.get("svc", server(max_concurrency=1))
    async with AsyncExitStack() as stack:
        await hold(stack, upstream, 1)
        fail(upstream)
        clock.now += isolation.BREAKER_COOLDOWN_S
        yield upstream


async def call(upstream: Upstream, caller: str = CALLER) -> None:
    async with upstream.slot(caller):
        pass


async def test_a_probe_that_finds_every_slot_busy_is_abandoned(
        pool: Upstreams, metrics: Metrics, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "SLOT_WAIT_S", 0.02)
    async with probing_a_full_upstream(pool, clock) as upstream:
        with pytest.raises(UpstreamUnavailable, match="concurrency cap"):
            await call(upstream)
    assert rejected(metrics, "busy") == 1
    assert upstream.breaker.admit()  # the probe was given back: the next call may probe


async def test_a_probe_cancelled_while_waiting_for_a_slot_is_given_back(
        pool: Upstreams, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "SLOT_WAIT_S", 30)
    async with probing_a_full_upstream(pool, clock) as upstream:
        task = asyncio.create_task(call(upstream))  # the client goes away while its call waits
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert upstream.breaker.admit(), "the breaker is stuck half-open with a probe nobody holds"


async def test_a_probe_cancelled_without_a_verdict_is_given_back(pool: Upstreams,
                                                                 clock: Clock) -> None:
    # client.exchange (runtime/upstream/client.py) records no verdict when the client goes away mid-call
    upstream = pool.get("svc", server())
    fail(upstream)
    clock.now += isolation.BREAKER_COOLDOWN_S
    with pytest.raises(asyncio.CancelledError):
        async with upstream.slot(CALLER):
            raise asyncio.CancelledError
    assert upstream.breaker.admit(), "the breaker is stuck half-open with a probe nobody holds"


# --- isolation and rewiring -----------------------------------------------------------------------

async def test_one_upstream_failing_or_busy_leaves_the_others_alone(
        pool: Upstreams, metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "SLOT_WAIT_S", 0.02)
    sick = pool.get("sick", server("https://sick.internal/mcp", max_concurrency=1))
    well = pool.get("well", server("https://well.internal/mcp", max_concurrency=1))
    async with AsyncExitStack() as stack:
        await hold(stack, sick, 1)
        fail(sick)
        async with well.slot(CALLER):
            pass
    assert well.breaker.state == "closed" and breaker_gauge(metrics, "well") == 0
    assert breaker_gauge(metrics, "sick") == 2
    assert rejected(metrics, "busy", "well") is None


async def test_an_unchanged_server_keeps_its_pool(pool: Upstreams) -> None:
    first = server()
    upstream = pool.get("svc", first)
    assert pool.get("svc", first) is upstream
    equal = server(timeout_ms=5000)  # a new bundle; only the timeout changed
    assert pool.get("svc", equal) is upstream
    assert upstream.server is equal


@pytest.mark.parametrize("changed", [
    {"upstream": "https://svc-v2.internal/mcp"}, {"max_concurrency": 3},
])
async def test_a_new_url_or_cap_gets_a_new_pool_and_the_old_one_is_closed(
        pool: Upstreams, metrics: Metrics, monkeypatch: pytest.MonkeyPatch,
        changed: dict[str, Any]) -> None:
    monkeypatch.setattr(isolation, "RETIRE_AFTER_S", 0.01)
    old = pool.get("svc", server())
    fail(old)
    new = pool.get("svc", server(**changed))
    assert new is not old
    assert new.server.model_dump(include=set(changed)) == changed
    assert pool.get("svc", server(**changed)) is new
    assert new.breaker.state == "closed" and breaker_gauge(metrics) == 0
    assert not old.http.closed  # calls in flight on the old pool may still finish
    await asyncio.sleep(0.1)
    assert old.http.closed and not new.http.closed


async def test_close_closes_every_pool(metrics: Metrics) -> None:
    pools = Upstreams(metrics)
    a, b = pools.get("a", server()), pools.get("b", server())
    await pools.close()
    assert a.http.closed and b.http.closed
