"""Rate limits: budgets (N at once by default, a burst tightens them), GCRA smoothness, bounded memory,
all-or-nothing multi-limit checks, the limits a bundle sets, and a real redis-server shared by two nodes,
killed and brought back mid-test."""
from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
import redis.asyncio as aioredis

from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.governance.backend import connect
from gwc.runtime.governance.limits import (
    REDIS_PREFIX,
    Limit,
    MemoryRateLimiter,
    RedisRateLimiter,
    limit_key,
    limits_for,
)
from gwc.runtime.governance.state import State
from gwc.runtime.policy.decide import Principal, decide
from tests.support.helpers import compile_root, manifest, rule, write_registry

T0 = 1_000_000.0  # an injected clock, in seconds


class OwnRedisRateLimiter(RedisRateLimiter):
    """A limiter with a client of its own, opened and closed with it (a node's State does that)."""

    def __init__(self, url: str, *, socket_timeout: float = 0.2, **options) -> None:
        super().__init__(connect(url, socket_timeout=socket_timeout), **options)

    async def aclose(self) -> None:
        await self._redis.aclose()


@pytest.fixture(params=["memory", "redis"])
async def limits(request):
    """Each backend, fed an injected `now` (so the Lua script is held to the same numbers)."""
    if request.param == "memory":
        backend = MemoryRateLimiter()
    else:
        server = request.getfixturevalue("redis_server")
        backend = OwnRedisRateLimiter(server.url,
                                      on_fallback=lambda reason: pytest.fail(f"fell back: {reason}"))
    yield backend
    if isinstance(backend, OwnRedisRateLimiter):
        await backend.aclose()


@pytest.mark.parametrize("per_minute, burst", [(0, None), (-1, None), (1.5, None), (True, None),
                                               (None, None), (5, 0), (5, 1.5), (5, True)])
async def test_rate_and_burst_must_be_positive_integers(per_minute, burst):
    with pytest.raises(ValueError):
        await MemoryRateLimiter().check("k", per_minute, now=T0, burst=burst)


@pytest.mark.parametrize("per_minute", [1, 5, 60])
async def test_a_limit_is_a_budget_n_at_once_then_refilled_at_the_rate(limits, per_minute):
    # "5 a minute" means 5 calls, even all at once; the 6th waits for the budget to refill (12 s).
    interval = 60 / per_minute
    for _ in range(per_minute):
        assert (await limits.check("user:alice:server:deploy", per_minute, now=T0)).allowed
    refused = await limits.check("user:alice:server:deploy", per_minute, now=T0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(interval)
    assert refused.limited_by == "user:alice:server:deploy"
    # refusals consume nothing: the wait keeps shrinking with time, not growing with attempts
    for _ in range(5):
        await limits.check("user:alice:server:deploy", per_minute, now=T0 + interval / 4)
    again = await limits.check("user:alice:server:deploy", per_minute, now=T0 + interval / 4)
    assert not again.allowed and again.retry_after_s == pytest.approx(interval * 3 / 4)
    # it refills smoothly: one call per interval, not the whole budget at a window's edge
    assert (await limits.check("user:alice:server:deploy", per_minute, now=T0 + interval)).allowed
    assert not (await limits.check("user:alice:server:deploy", per_minute, now=T0 + interval)).allowed
    # a minute after the last call the whole budget is back; other keys are independent
    for _ in range(per_minute):
        assert (await limits.check("user:alice:server:deploy", per_minute,
                                   now=T0 + interval + 60)).allowed
    assert (await limits.check("user:bob:server:deploy", per_minute, now=T0)).allowed


async def test_a_burst_tightens_the_budget(limits):
    # 60/min with a burst of 6: 6 at once, then one call per second; retry_after says exactly when.
    for _ in range(6):
        assert (await limits.check("k", 60, now=T0, burst=6)).allowed
    refused = await limits.check("k", 60, now=T0, burst=6)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(1.0)
    assert (await limits.check("k", 60, now=T0 + 1.0, burst=6)).allowed
    assert not (await limits.check("k", 60, now=T0 + 1.5, burst=6)).allowed
    assert (await limits.check("k", 60, now=T0 + 2.0, burst=6)).allowed


async def test_a_burst_of_one_spaces_calls_exactly(limits):
    # 7/min, one at a time: 60/7 s apart, not a representable float; µs arithmetic keeps it exact.
    interval = 60 / 7
    assert (await limits.check("k", 7, now=T0, burst=1)).allowed
    early = await limits.check("k", 7, now=T0 + interval - 0.01, burst=1)
    assert not early.allowed and early.retry_after_s == pytest.approx(0.01, abs=1e-5)
    for i in range(1, 20):
        assert (await limits.check("k", 7, now=T0 + i * interval, burst=1)).allowed, i
        assert not (await limits.check("k", 7, now=T0 + i * interval, burst=1)).allowed, i


@pytest.mark.parametrize("burst", [None, 3])
async def test_no_doubling_at_window_edges(burst):
    # Hammer 30/min every 50 ms for 3 minutes: in every sliding minute at most N + burst calls pass,
    # and after the first burst calls are exactly 60/N s apart: over the long run N per minute.
    limits, per_minute = MemoryRateLimiter(), 30
    at_once = burst or per_minute
    passed = [t / 20 for t in range(20 * 180)
              if (await limits.check("k", per_minute, now=T0 + t / 20, burst=burst)).allowed]
    for i, start in enumerate(passed):
        in_window = sum(1 for t in passed[i:] if t < start + 60)
        assert in_window <= per_minute + at_once
    assert len(passed) == 3 * per_minute + at_once - 1
    gaps = [b - a for a, b in itertools.pairwise(passed[at_once:])]
    assert min(gaps) == pytest.approx(60 / per_minute)


async def test_memory_is_bounded_and_idle_keys_expire():
    limits = MemoryRateLimiter(max_entries=100)
    for i in range(1000):
        assert (await limits.check(f"user:{i}", 6, now=T0, burst=1)).allowed
    assert len(limits) == 100
    # The most recent keys are kept and still limited; the evicted ones regained their burst (the
    # documented price of the bound).
    assert not (await limits.check("user:999", 6, now=T0, burst=1)).allowed
    assert (await limits.check("user:0", 6, now=T0, burst=1)).allowed
    assert len(limits) == 100
    # ...and an idle key's entry is gone once its TAT has passed (1 s after a single 60/min call).
    fresh = MemoryRateLimiter(max_entries=100)
    await fresh.check("a", 60, now=T0)
    await fresh.check("b", 6, now=T0)  # 10 s interval
    assert len(fresh) == 2
    await fresh.check("c", 60, now=T0 + 1.5)
    assert len(fresh) == 2  # "a" expired, "b" still counts, "c" added
    await fresh.check("d", 60, now=T0 + 11)
    assert len(fresh) == 1
    # expiry never changes a verdict: "b" is fresh again exactly when its entry is gone
    assert (await fresh.check("b", 6, now=T0 + 11)).allowed


async def test_all_limits_must_pass_and_a_refusal_consumes_nothing(limits):
    user = Limit("user:alice:server:deploy", 60, 6)
    rule = Limit("rule:deploy-ops:user:alice", 6, 1)  # 10 s apart
    upstream = Limit("server:deploy", 600)
    assert (await limits.check_all([user, rule, upstream], now=T0)).allowed
    refused = await limits.check_all([user, rule, upstream], now=T0 + 1)
    assert not refused.allowed
    assert refused.limited_by == rule.key and refused.retry_after_s == pytest.approx(9.0)
    # The refused call used none of the user's budget: 5 of its burst of 6 are left, not 4.
    for _ in range(5):
        assert (await limits.check(user.key, 60, now=T0, burst=6)).allowed
    assert not (await limits.check(user.key, 60, now=T0, burst=6)).allowed
    # With several refusing, retry_after is the longest wait (all must pass for the retry to go through).
    both = await limits.check_all([user, rule], now=T0 + 1)
    assert not both.allowed and both.limited_by == rule.key and both.retry_after_s == pytest.approx(9.0)
    assert (await limits.check_all([], now=T0)).allowed


def test_a_bundle_gives_every_limit_its_burst(tmp_path):
    write_registry(tmp_path, manifests={"svc.yaml": manifest(
        limits={"per_user_rpm": 60, "per_user_burst": 10, "upstream_rpm": 600},
        tools={"read_it": {"access": "read", "limits": {"per_user_rpm": 5, "per_user_burst": 1}}})},
        policies={"team-a/svc.yaml": [rule(id="slow", conditions={"rate_limit_per_minute": 30,
                                                                  "rate_limit_burst": 3})]})
    payload: BundlePayload = compile_root(tmp_path)
    decision = decide(payload, Principal("alice", frozenset({"team-a", "g"})), "svc", "read_it", {})
    server_wide = [Limit("user:alice:server:svc", 60, 10), Limit("server:svc", 600, None)]
    assert limits_for(payload, "svc", "alice", "read_it", decision) == [
        *server_wide, Limit("user:alice:server:svc:tool:read_it", 5, 1),
        Limit("rule:slow:user:alice", 30, 3)]
    assert limits_for(payload, "svc", "alice", None, None) == server_wide  # reads and prompts
    # The keys are limit_key's: a subject with separators cannot land on another's key.
    odd = Principal("a:b%3Ac", frozenset({"team-a", "g"}))
    assert [limit.key for limit in limits_for(payload, "svc", odd.subject, "read_it", decide(
        payload, odd, "svc", "read_it", {}))] == [
        limit_key("user", odd.subject, "server", "svc"), limit_key("server", "svc"),
        limit_key("user", odd.subject, "server", "svc", "tool", "read_it"),
        limit_key("rule", "slow", "user", odd.subject)]
    assert limit_key("user", odd.subject, "server", "svc") == "user:a%3Ab%253Ac:server:svc"


def test_limit_key_escapes_separators():
    assert limit_key("user", "alice", "server", "deploy") == "user:alice:server:deploy"
    assert limit_key("user", "a:b") != limit_key("user:a", "b")


async def test_state_from_url_opens_one_redis_client_and_closes_it():
    assert isinstance(State.from_url(None).limits, MemoryRateLimiter)
    state = State.from_url("redis://127.0.0.1:1/0")
    assert isinstance(state.limits, RedisRateLimiter)
    # limits, approvals and bypasses borrow the one client the state opened...
    assert state.redis is not None
    assert state.limits._redis is state.approvals._redis is state.bypasses._redis is state.redis
    closed: list[bool] = []
    close = state.redis.aclose

    async def recording_close() -> None:
        closed.append(True)
        await close()

    state.redis.aclose = recording_close  # type: ignore[method-assign]
    await state.aclose()
    assert closed == [True]  # ...and the state closes it, once
    with pytest.raises(ValueError):
        State.from_url("etcd://x")


# --- Redis: a fleet, and Redis going away ------------------------------------------------------------


async def test_two_nodes_share_one_budget(redis_server):
    a, b = OwnRedisRateLimiter(redis_server.url), OwnRedisRateLimiter(redis_server.url)
    try:
        # Server clock (no injected now): 6/min, one at a time.
        assert (await a.check("user:alice:server:deploy", 6, burst=1)).allowed
        refused = await b.check("user:alice:server:deploy", 6, burst=1)
        assert not refused.allowed and 9.5 < refused.retry_after_s <= 10.0
        # a budget of 5 a minute, spent at once across the nodes, still totals 5; the 6th waits 12 s
        results = await asyncio.gather(*(node.check("user:bob:server:deploy", 5) for node in (a, b) * 4))
        assert sorted(v.allowed for v in results) == [False] * 3 + [True] * 5
        assert all(11.5 < v.retry_after_s <= 12.0 for v in results if not v.allowed)
        assert a.fallback_checks == b.fallback_checks == 0
        # idle keys carry a TTL: they vanish from Redis once their TAT passes
        raw = aioredis.Redis.from_url(redis_server.url)
        ttl_ms = await raw.pttl(REDIS_PREFIX + "user:alice:server:deploy")
        await raw.aclose()
        assert 9000 < ttl_ms <= 10000
    finally:
        await a.aclose()
        await b.aclose()
    # (per-node memory limits would each have allowed the call: that is what the shared budget fixes)
    m1, m2 = MemoryRateLimiter(), MemoryRateLimiter()
    assert (await m1.check("k", 6)).allowed and (await m2.check("k", 6)).allowed


async def test_script_flushed_is_sent_again_with_eval(redis_server):
    fallbacks: list[str] = []
    limits = OwnRedisRateLimiter(redis_server.url, on_fallback=fallbacks.append)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        assert (await limits.check("k", 1)).allowed
        await raw.script_flush()
        assert not (await limits.check("k", 1)).allowed  # answered by Redis, which remembers "k"
        assert fallbacks == [] and limits.fallback_checks == 0
    finally:
        await raw.aclose()
        await limits.aclose()


async def test_redis_killed_falls_back_to_local_limits_and_comes_back(redis_server, caplog):
    caplog.set_level(logging.INFO, logger="gwc.rate_limits")
    fallbacks: list[str] = []
    limits = OwnRedisRateLimiter(redis_server.url, retry_s=0.3, on_fallback=fallbacks.append)
    other = OwnRedisRateLimiter(redis_server.url)
    try:
        assert (await limits.check("k", 1)).allowed
        assert not (await other.check("k", 1)).allowed  # shared while Redis is up

        redis_server.stop()
        verdicts = []
        for _ in range(4):  # spans more than one back-off: Redis is retried, still down, still one warning
            verdicts.append(await limits.check("local", 1))
            await asyncio.sleep(0.2)
        # Answered by the per-node limits: they still limit (1 a minute), and nothing raised.
        assert [v.allowed for v in verdicts] == [True, False, False, False]
        assert limits.using_fallback and limits.outages == 1 and limits.fallback_checks == 4
        assert len(fallbacks) == 1 and "Connection" in fallbacks[0]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "falling back to per-node limits" in warnings[0].getMessage()

        redis_server.start()  # same port, empty (no persistence)
        await asyncio.sleep(0.35)  # past the back-off
        assert (await limits.check("k", 1)).allowed  # via Redis again...
        assert not limits.using_fallback and limits.fallback_checks == 4
        assert not (await other.check("k", 1)).allowed  # ...so the other node sees the spend
        assert "reachable again" in caplog.records[-1].getMessage()

        redis_server.stop()  # a second outage is logged and counted again
        assert (await limits.check("k2", 1)).allowed
        assert limits.outages == 2 and len(fallbacks) == 2
    finally:
        await limits.aclose()
        await other.aclose()


async def test_redis_not_answering_times_out_fast(redis_server):
    # A hung Redis (SIGSTOP): each check waits at most ~socket_timeout (plus one retry), then falls back.
    import os
    import signal
    import time

    limits = OwnRedisRateLimiter(redis_server.url, socket_timeout=0.2, retry_s=60)
    try:
        assert (await limits.check("k", 1)).allowed
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            verdict = await limits.check("k", 1)
            assert time.monotonic() - started < 1.0
            assert verdict.allowed and limits.using_fallback  # the local limits had not seen "k"
            started = time.monotonic()
            assert not (await limits.check("k", 1)).allowed  # within the back-off: straight to local
            assert time.monotonic() - started < 0.05
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
    finally:
        await limits.aclose()


# --- Redis: checks that come together go together -------------------------------------------------


async def script_calls(url: str) -> int:
    """How many times Redis ran a script (EVALSHA and EVAL), from its own command statistics."""
    raw = aioredis.Redis.from_url(url)
    try:
        stats = await raw.info("commandstats")
    finally:
        await raw.aclose()
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


async def test_concurrent_checks_share_script_calls_and_decide_as_one_after_another(redis_server):
    limits = OwnRedisRateLimiter(redis_server.url,
                                 on_fallback=lambda reason: pytest.fail(f"fell back: {reason}"))
    try:
        before = await script_calls(redis_server.url)
        # 60 checks at once: 40 spend one budget of 10, 20 spend a budget of 5 and a shared one of
        # 100 (both must pass, and a refusal spends neither)
        checks = [limits.check_all([Limit("user:carol:server:s", 10)], now=T0) for _ in range(40)]
        checks += [limits.check_all([Limit("user:dan:server:s", 5), Limit("server:s", 100)], now=T0)
                   for _ in range(20)]
        verdicts = await asyncio.gather(*checks)
        calls = await script_calls(redis_server.url) - before
        assert calls < 10  # one for the first check, then the rest in a batch or a few
        assert [v.allowed for v in verdicts[:40]] == [True] * 10 + [False] * 30
        assert [v.allowed for v in verdicts[40:]] == [True] * 5 + [False] * 15
        assert {v.limited_by for v in verdicts if not v.allowed} == {"user:carol:server:s",
                                                                    "user:dan:server:s"}
        # the shared budget was spent only by the 5 that passed: 95 of 100 remain, at once
        rest = await asyncio.gather(*(limits.check_all([Limit("server:s", 100)], now=T0)
                                      for _ in range(96)))
        assert [v.allowed for v in rest] == [True] * 95 + [False]
        # a lone check after the batches goes by itself, at once
        before = await script_calls(redis_server.url)
        assert (await limits.check_all([Limit("user:erin:server:s", 1)], now=T0)).allowed
        assert await script_calls(redis_server.url) - before == 1
    finally:
        await limits.aclose()


async def test_a_caller_gone_from_a_batch_leaves_the_others_their_answers(redis_server):
    limits = OwnRedisRateLimiter(redis_server.url)
    try:
        first = asyncio.ensure_future(limits.check_all([Limit("k", 100)], now=T0))
        await asyncio.sleep(0)  # the first is at Redis; these wait for the next batch
        waiting = [asyncio.ensure_future(limits.check_all([Limit("k", 100)], now=T0))
                   for _ in range(5)]
        await asyncio.sleep(0)
        waiting[2].cancel()
        assert (await first).allowed
        answered = await asyncio.gather(*waiting, return_exceptions=True)
        assert isinstance(answered[2], asyncio.CancelledError)
        assert all(v.allowed for i, v in enumerate(answered) if i != 2)
        assert (await limits.check_all([Limit("k", 100)], now=T0)).allowed  # nothing stuck
    finally:
        await limits.aclose()


async def test_a_batch_that_cannot_reach_redis_falls_back_as_a_whole(redis_server):
    import os
    import signal

    fallbacks: list[str] = []
    limits = OwnRedisRateLimiter(redis_server.url, socket_timeout=0.2, retry_s=60,
                                 on_fallback=fallbacks.append)
    try:
        assert (await limits.check("warm", 1)).allowed
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            verdicts = await asyncio.gather(*(limits.check_all([Limit("j", 6, 2)], now=T0)
                                              for _ in range(6)))
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert [v.allowed for v in verdicts] == [True, True, False, False, False, False]
        assert len(fallbacks) == 1 and limits.fallback_checks == 6
    finally:
        await limits.aclose()
