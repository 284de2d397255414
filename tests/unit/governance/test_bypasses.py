"""Break-glass bypasses, the same bodies against memory and a real redis-server: open, list, close,
expiry, audit before effect, seen by another node within its refresh, and Redis down -> the last
snapshot still answers while opening and closing fail."""
from __future__ import annotations

import asyncio
import time

import pytest

from gwc.runtime.bundle.format import BreakGlass
from gwc.runtime.governance.backend import StateUnavailable
from gwc.runtime.governance.bypasses import (
    ID_RE,
    MAX_REASON,
    BypassError,
    Bypasses,
    MemoryBypasses,
    RedisBypasses,
    is_break_glass,
)
from gwc.runtime.policy.decide import Principal
from tests.support.state_fixtures import BOT, SRE, T0, clock_fixture, redis_clients_fixture  # noqa: F401

REFRESH_S = 0.3  # the Redis snapshot's refresh in these tests (1 s by default)


@pytest.fixture(params=["memory", "redis"])
def make(request, clock):
    """``make()`` -> a Bypasses backend; with Redis every call is another node on one server."""
    if request.param == "memory":
        shared = MemoryBypasses(clock)
        return lambda **kw: MemoryBypasses(clock, **kw) if kw else shared
    clients = request.getfixturevalue("redis_clients")
    return lambda **kw: RedisBypasses(clients(), clock, refresh_s=REFRESH_S, **kw)


@pytest.fixture
def bypasses(make) -> Bypasses:
    return make()


class Trail:
    """An audit hook that records (event, bypass id) and what ``active`` said while writing."""

    def __init__(self, bypasses: Bypasses, fail: bool = False) -> None:
        self.bypasses, self.fail, self.events = bypasses, fail, []

    async def __call__(self, event, bypass) -> None:
        self.events.append((event, bypass.id, await self.bypasses.active(bypass.server)))
        if self.fail:
            raise OSError("audit sink down")


async def test_open_list_close(bypasses, clock):
    trail = Trail(bypasses)
    bypass = await bypasses.open("deploy", "sam", "  INC-42: rollback stuck  ", 600, max_ttl_s=3600,
                                 audit=trail)
    assert ID_RE.fullmatch(bypass.id) and bypass.id.startswith("byp_")
    assert (bypass.server, bypass.opened_by, bypass.reason) == ("deploy", "sam", "INC-42: rollback stuck")
    assert (bypass.opened_at, bypass.expires, bypass.ttl_s) == (T0, T0 + 600, 600)
    assert await bypasses.active("deploy") == bypass
    assert await bypasses.active("postgres") is None
    assert await bypasses.list_open() == [bypass]
    assert await bypasses.close(bypass.id, audit=trail) == bypass
    assert await bypasses.active("deploy") is None and await bypasses.list_open() == []
    # audited before it took effect: not active while "opened" was written, still active at "closed"
    assert trail.events == [("opened", bypass.id, None), ("closed", bypass.id, bypass)]
    with pytest.raises(BypassError) as gone:
        await bypasses.close(bypass.id)
    assert (gone.value.status, gone.value.reason) == (404, "not_found")


@pytest.mark.parametrize("reason, ttl_s, why", [
    ("", 60, "invalid_request"), ("   ", 60, "invalid_request"),
    ("x" * (MAX_REASON + 1), 60, "invalid_request"),
    (None, 60, "invalid_request"), ("ok", 0, "invalid_request"), ("ok", -5, "invalid_request"),
    ("ok", True, "invalid_request"), ("ok", 1.5, "invalid_request"), ("ok", 3601, "ttl_too_long"),
])
async def test_a_reason_and_a_bounded_ttl_are_required(reason, ttl_s, why):
    bypasses = MemoryBypasses()
    with pytest.raises(BypassError) as refused:
        await bypasses.open("deploy", "sam", reason, ttl_s, max_ttl_s=3600)
    assert (refused.value.status, refused.value.reason) == (400, why)
    if why == "ttl_too_long":
        assert "3600" in refused.value.message
    assert await bypasses.list_open() == []


async def test_bypasses_expire(bypasses, clock):
    short = await bypasses.open("deploy", "sam", "INC-1", 60)
    longer = await bypasses.open("deploy", "sam", "INC-1 again", 120)
    assert await bypasses.active("deploy") == longer  # the one lasting longest
    clock.advance(61)
    assert await bypasses.list_open() == [longer]
    with pytest.raises(BypassError):
        await bypasses.close(short.id)
    clock.advance(60)
    assert await bypasses.active("deploy") is None and await bypasses.list_open() == []


async def test_a_failed_audit_changes_nothing(bypasses):
    with pytest.raises(OSError):
        await bypasses.open("deploy", "sam", "INC-2", 60, audit=Trail(bypasses, fail=True))
    assert await bypasses.list_open() == [] and await bypasses.active("deploy") is None
    bypass = await bypasses.open("deploy", "sam", "INC-2", 60)
    with pytest.raises(OSError):
        await bypasses.close(bypass.id, audit=Trail(bypasses, fail=True))
    assert await bypasses.active("deploy") == bypass


async def test_open_bypasses_are_bounded(make):
    bypasses = make(max_open=2)
    for i in range(2):
        await bypasses.open(f"s{i}", "sam", "INC-3", 60)
    trail = Trail(bypasses)
    with pytest.raises(BypassError) as full:
        await bypasses.open("s2", "sam", "INC-3", 60, audit=trail)
    assert (full.value.status, full.value.reason) == (409, "too_many_bypasses")
    # the opening was audited, so its closing is too
    assert [event for event, *_ in trail.events] == ["opened", "closed"]
    assert len(await bypasses.list_open()) == 2


def test_break_glass_members_are_humans_in_the_group():
    class Payload:  # only gateway.break_glass is read
        def __init__(self, group):
            self.gateway = type("G", (), {"break_glass": BreakGlass(group=group, max_ttl_s=3600)})

    assert is_break_glass(Payload("sre-oncall"), SRE)
    assert not is_break_glass(Payload(None), SRE)
    assert not is_break_glass(Payload("sre-oncall"), Principal("x", frozenset({"eng"})))
    assert not is_break_glass(Payload("sre-oncall"), Principal("bot", SRE.groups, "agent", "sam"))
    assert not is_break_glass(Payload("eng"), BOT)


async def test_another_node_honours_a_bypass_within_its_refresh(redis_clients, clock):
    node_a = RedisBypasses(redis_clients(), clock)
    node_b = RedisBypasses(redis_clients(), clock, refresh_s=REFRESH_S)
    assert node_a.refresh_s == 1.0  # the default: "within about a second"
    assert await node_b.active("deploy") is None  # node B has read an empty snapshot
    bypass = await node_a.open("deploy", "sam", "INC-4", 600)
    opened = time.monotonic()
    while await node_b.active("deploy") is None:
        await asyncio.sleep(0.02)
    assert time.monotonic() - opened <= REFRESH_S + 0.2
    await node_a.close(bypass.id)
    closed = time.monotonic()
    while await node_b.active("deploy") is not None:
        await asyncio.sleep(0.02)
    assert time.monotonic() - closed <= REFRESH_S + 0.2
    # between refreshes node B asks Redis nothing
    before = node_b.refreshes
    for _ in range(100):
        await node_b.active("deploy")
    assert node_b.refreshes - before <= 1


async def test_redis_down_keeps_the_last_snapshot_until_expiry(redis_server, redis_clients, clock):
    node = RedisBypasses(redis_clients(), clock, refresh_s=0.05)
    bypass = await node.open("deploy", "sam", "INC-5", 600)
    redis_server.stop()
    await asyncio.sleep(0.06)
    assert await node.active("deploy") == bypass  # the refresh failed: the snapshot answers
    assert not node.reachable
    started = time.perf_counter()
    for _ in range(20):
        assert await node.active("deploy") == bypass
    assert time.perf_counter() - started < 0.1  # during the outage nobody waits for Redis
    trail = Trail(node)
    for attempt in (node.open("postgres", "sam", "INC-6", 60, audit=trail), node.close(bypass.id),
                    node.list_open()):
        with pytest.raises(StateUnavailable):
            await attempt
    assert [event for event, *_ in trail.events] == ["opened", "closed"]  # the failed opening, undone
    clock.advance(601)
    assert await node.active("deploy") is None  # expired bypasses are never honoured
