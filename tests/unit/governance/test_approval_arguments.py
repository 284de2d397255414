"""What an approval keeps of its call's arguments for its approvers, against memory and a real
redis-server: the arguments themselves, sensitive ones masked before anything is stored (the Redis
hash never holds them), nothing beyond 16 KiB, and the digest always of the real arguments."""
from __future__ import annotations

import json

import pytest

from gwc.runtime.bundle.format import Audience
from gwc.runtime.governance.approvals import (
    MASK,
    MAX_SHOWN_ARGUMENTS,
    Approvals,
    MemoryApprovals,
    arguments_digest,
    shown_arguments,
)
from gwc.runtime.governance.approvals_redis import RedisApprovals
from tests.support.state_fixtures import ALICE, BOB, clock_fixture, redis_clients_fixture  # noqa: F401

OPS = Audience(groups=("ops",))
SECRET = "hunter2-do-not-store"
ARGS = {"env": "prod", "version": 3, "password": SECRET, "options": {"password": "nested-is-kept"}}


@pytest.fixture(params=["memory", "redis"])
def backend(request, clock):
    """(approvals, raw): ``raw()`` -> every value the backend holds, as text."""
    if request.param == "memory":
        memory = MemoryApprovals(60.0, clock)
        return memory, lambda: repr(memory._approvals)
    clients = request.getfixturevalue("redis_clients")
    client = clients()

    async def dump() -> str:
        keys = await client.keys("*")
        return repr({k: await client.hgetall(k) if await client.type(k) == "hash" else None
                     for k in keys})
    return RedisApprovals(client, 60.0, clock), dump


async def ask(approvals: Approvals, arguments, sensitive=("password",)):
    return (await approvals.redeem_or_request(ALICE, "deploy", "rollback", arguments_digest(arguments),
                                              OPS, arguments=arguments, sensitive=sensitive)).approval


async def raw_text(raw) -> str:
    found = raw()
    return found if isinstance(found, str) else await found


def test_sensitive_top_level_arguments_are_masked_and_the_rest_kept_as_canonical_json():
    shown = shown_arguments(ARGS, ["password", "absent"])
    assert json.loads(shown) == {"env": "prod", "version": 3, "password": MASK,
                                 "options": {"password": "nested-is-kept"}}
    assert shown == '{"env":"prod","options":{"password":"nested-is-kept"},"password":"***","version":3}'
    assert shown_arguments(None) == "{}"
    assert shown_arguments([1, "password"], ["password"]) == '[1,"password"]'  # names only in objects


def test_arguments_over_the_cap_are_not_kept():
    at_cap = {"blob": "x" * (MAX_SHOWN_ARGUMENTS - len('{"blob":""}'))}
    assert shown_arguments(at_cap) is not None
    assert shown_arguments({"blob": at_cap["blob"] + "x"}) is None


async def test_an_approval_keeps_its_arguments_with_the_sensitive_ones_masked(backend):
    approvals, raw = backend
    created = await ask(approvals, ARGS)
    assert json.loads(created.arguments)["password"] == MASK
    stored = await approvals.get(created.id)
    assert json.loads(stored.arguments) == {**ARGS, "password": MASK}
    assert stored.arguments_digest == arguments_digest(ARGS)  # of the real arguments: the retry matches
    assert SECRET not in await raw_text(raw) and "nested-is-kept" in await raw_text(raw)
    # deciding and redeeming keep them
    decided = await approvals.decide(created.id, BOB, True)
    assert decided.arguments == stored.arguments
    used = await approvals.redeem_or_request(ALICE, "deploy", "rollback", arguments_digest(ARGS), OPS,
                                             arguments=ARGS, sensitive=("password",))
    assert used.status == "redeemed" and used.approval.arguments == stored.arguments
    assert [a.arguments for a in await approvals.list_for(ALICE)] == [stored.arguments]


async def test_without_sensitive_names_every_argument_is_kept(backend):
    approvals, raw = backend
    created = await ask(approvals, ARGS, sensitive=())
    assert json.loads((await approvals.get(created.id)).arguments) == ARGS
    assert SECRET in await raw_text(raw)


async def test_arguments_too_large_to_show_are_not_stored(backend):
    approvals, raw = backend
    big = {"blob": "y" * MAX_SHOWN_ARGUMENTS}
    created = await ask(approvals, big)
    assert created.arguments is None and (await approvals.get(created.id)).arguments is None
    assert "yyyy" not in await raw_text(raw)
    assert created.arguments_digest == arguments_digest(big)
