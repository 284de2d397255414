"""The auth store: entries expire, ``take`` is single use, and Redis is shared by the fleet."""
from __future__ import annotations

import asyncio

import pytest

from gwc.runtime.auth.store import MemoryAuthStore, RedisAuthStore, secret_key
from gwc.runtime.governance.backend import StateUnavailable, connect


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_entries_expire_and_are_taken_once() -> None:
    clock = Clock()
    store = MemoryAuthStore(clock)
    await store.put("code", "k", {"a": 1}, 60)
    assert await store.get("code", "k") == {"a": 1}
    assert await store.take("code", "k") == {"a": 1}
    assert await store.take("code", "k") is None
    await store.put("code", "k", {"a": 2}, 60)
    clock.now += 61
    assert await store.get("code", "k") is None


async def test_a_full_memory_store_drops_the_expired_and_refuses_rather_than_evict() -> None:
    clock = Clock()
    store = MemoryAuthStore(clock, max_entries=2)
    await store.put("x", "old", {}, 10)
    await store.put("x", "young", {}, 100)
    clock.now += 20
    await store.put("x", "new", {}, 100)  # the expired one makes room
    assert await store.get("x", "young") == {} and await store.get("x", "new") == {}
    with pytest.raises(StateUnavailable):  # nothing expired: nobody's sign-in is evicted
        await store.put("x", "newest", {}, 100)
    await store.put("x", "young", {"again": 1}, 100)  # an entry already there may be rewritten
    assert await store.get("x", "young") == {"again": 1}


async def test_memory_take_leaves_its_mark_and_put_while_needs_the_other_entry() -> None:
    store = MemoryAuthStore(Clock())
    await store.put("refresh", "k", {"a": 1}, 60)
    assert await store.take("refresh", "k", mark=("used", {"f": "1"}, 60)) == {"a": 1}
    assert await store.get("used", "k") == {"f": "1"}
    assert await store.take("refresh", "k", mark=("used", {"f": "2"}, 60)) is None
    assert await store.get("used", "k") == {"f": "1"}  # nothing taken, nothing marked
    assert not await store.put_while("refresh", "n", {}, 60, exists=("family", "f"))
    await store.put("family", "f", {}, 60)
    assert await store.put_while("refresh", "n", {}, 60, exists=("family", "f"))
    assert await store.get("refresh", "n") == {}


def test_secrets_are_kept_under_their_hash() -> None:
    assert secret_key("abc") != "abc" and len(secret_key("abc")) == 64


@pytest.mark.redis
async def test_redis_take_is_single_use_across_clients(redis_server) -> None:
    one, two = connect(redis_server.url), connect(redis_server.url)
    try:
        await RedisAuthStore(one).put("code", "k", {"who": "erin"}, 60)
        taken = await asyncio.gather(RedisAuthStore(one).take("code", "k"),
                                     RedisAuthStore(two).take("code", "k"))
        assert sorted(taken, key=lambda t: t is None) == [{"who": "erin"}, None]
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.redis
async def test_redis_take_marks_and_put_while_are_atomic_steps(redis_server) -> None:
    client = connect(redis_server.url)
    store = RedisAuthStore(client)
    try:
        await store.put("refresh", "k", {"a": 1}, 60)
        taken = await asyncio.gather(*(store.take("refresh", "k", mark=("used", {"n": n}, 60))
                                       for n in range(5)))
        assert [t for t in taken if t is not None] == [{"a": 1}]
        assert await store.get("used", "k") in [{"n": n} for n in range(5)]
        assert not await store.put_while("refresh", "n", {}, 60, exists=("family", "f"))
        await store.put("family", "f", {}, 60)
        assert await store.put_while("refresh", "n", {"b": 2}, 60, exists=("family", "f"))
        assert await store.get("refresh", "n") == {"b": 2}
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_down_fails_closed(redis_server) -> None:
    client = connect(redis_server.url)
    redis_server.stop()
    try:
        with pytest.raises(StateUnavailable):
            await RedisAuthStore(client).put("code", "k", {}, 60)
        with pytest.raises(StateUnavailable):
            await RedisAuthStore(client).take("code", "k")
    finally:
        await client.aclose()
