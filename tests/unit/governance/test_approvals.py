"""Approvals, the same bodies against memory and a real redis-server: reuse while pending, who may
decide (never the requester), single use (two nodes racing: one wins), denial, expiry, audit before
commit, a cap on each requester's waiting approvals (a flood never evicts anyone's), and Redis down ->
fail closed."""
from __future__ import annotations

import asyncio

import pytest

from gwc.runtime.bundle.format import Audience
from gwc.runtime.governance.approvals import (
    ID_RE,
    MAX_PENDING,
    ApprovalError,
    Approvals,
    MemoryApprovals,
    StateUnavailable,
    TooManyApprovals,
    approval_path,
    arguments_digest,
)
from gwc.runtime.governance.approvals_redis import RedisApprovals
from gwc.runtime.policy.decide import Principal
from tests.support.state_fixtures import ALICE, BOB, BOT, CAROL, T0, clock_fixture, redis_clients_fixture  # noqa: F401

TTL = 60.0
OPS = Audience(groups=("ops",))
DIGEST = arguments_digest({"env": "prod", "version": 3})
OLGA = Principal("olga", frozenset({"ops"}))  # another approver


@pytest.fixture(params=["memory", "redis"])
def make(request, clock):
    """``make()`` -> an Approvals backend; with Redis every call is another node on one server."""
    if request.param == "memory":
        shared = MemoryApprovals(TTL, clock)
        return lambda: shared
    clients = request.getfixturevalue("redis_clients")
    return lambda: RedisApprovals(clients(), TTL, clock)


@pytest.fixture
def approvals(make) -> Approvals:
    return make()


async def ask(approvals: Approvals, who: Principal = ALICE, digest: str = DIGEST, tool: str = "rollback"):
    return await approvals.redeem_or_request(who, "deploy", tool, digest, OPS)


def test_digest_is_canonical_json():
    assert arguments_digest({"a": 1, "b": [1, 2]}) == arguments_digest({"b": [1, 2], "a": 1})
    assert arguments_digest(None) == arguments_digest({})
    assert arguments_digest({"a": 1}) != arguments_digest({"a": 1.5})
    assert DIGEST.startswith("sha256:") and len(DIGEST) == 7 + 64


def test_approvers_are_stored_as_audience_entries():
    audience = Audience(everyone=True, groups=("ops", "sre"), users=("dana",), agents=("deployer",))
    assert audience.entries() == ("everyone", "group:ops", "group:sre", "user:dana", "agent:deployer")


async def test_a_retry_while_pending_reuses_the_approval(approvals, clock):
    first = await ask(approvals)
    assert first.status == "pending" and first.created
    approval = first.approval
    assert ID_RE.fullmatch(approval.id) and approval.id.startswith("apv_")
    assert approval_path(approval.id) == f"/v1/approvals/{approval.id}"
    assert (approval.requester.subject, approval.server, approval.tool) == ("alice", "deploy", "rollback")
    assert approval.approvers == ("group:ops",) and approval.arguments_digest == DIGEST
    assert (approval.created, approval.expires) == (T0, T0 + TTL)
    clock.advance(5)
    again = await ask(approvals)
    assert again.status == "pending" and not again.created and again.approval.id == approval.id
    # another call (arguments, tool) or another requester (alice's agent) is another approval
    others = {(await ask(approvals, digest=arguments_digest({}))).approval.id,
              (await ask(approvals, tool="restart")).approval.id,
              (await ask(approvals, who=BOT)).approval.id}
    assert len(others | {approval.id}) == 4
    assert (await approvals.request(ALICE, "deploy", "rollback", DIGEST, OPS)).approval.id == approval.id
    assert (await approvals.get(approval.id)) == approval


async def test_an_approved_call_goes_through_once_on_any_node(make, clock):
    node_a, node_b = make(), make()
    pending = (await ask(node_a)).approval
    assert (await node_a.redeem(ALICE, "deploy", "rollback", DIGEST)).status == "pending"
    clock.advance(1)
    decided = await node_b.decide(pending.id, BOB, True)
    assert (decided.status, decided.decided_by, decided.decided_at) == ("approved", "bob", T0 + 1)
    # request() shows it without using it
    assert (await node_a.request(ALICE, "deploy", "rollback", DIGEST, OPS)).status == "approved"
    redeemed = await ask(node_a)
    assert redeemed.status == "redeemed" and redeemed.approval.id == pending.id
    assert redeemed.approval.status == "used" and redeemed.approval.used_at == T0 + 1
    # single use: the next identical call asks anew
    after = await ask(node_b)
    assert after.status == "pending" and after.created and after.approval.id != pending.id
    assert (await node_b.get(pending.id)).status == "used"


async def test_concurrent_redeems_on_two_nodes_exactly_one_wins(make):
    node_a, node_b = make(), make()
    approval = (await ask(node_a)).approval
    await node_a.decide(approval.id, BOB, True)
    results = await asyncio.gather(*(node.redeem(ALICE, "deploy", "rollback", DIGEST)
                                     for _ in range(10) for node in (node_a, node_b)))
    assert sorted(r.status for r in results) == ["none"] * 19 + ["redeemed"]


async def test_the_requester_never_decides(approvals):
    own = (await ask(approvals)).approval
    # alice herself, and agents acting for her, though all of them are in ops
    alice_in_ops = Principal("alice", frozenset({"ops"}))
    other_agent = Principal("helper", frozenset({"ops"}), "agent", "alice")
    for who in (alice_in_ops, other_agent):
        with pytest.raises(ApprovalError) as refused:
            await approvals.decide(own.id, who, True)
        assert (refused.value.status, refused.value.reason) == (403, "own_request")
    # an agent's request: neither the agent nor the human it acts for decides it
    by_agent = (await ask(approvals, who=BOT)).approval
    bot_named = await approvals.redeem_or_request(BOT, "deploy", "rollback", DIGEST,
                                                  ["group:ops", "agent:bot"])
    for who, approval in ((alice_in_ops, by_agent), (BOT, bot_named.approval)):
        with pytest.raises(ApprovalError) as refused:
            await approvals.decide(approval.id, who, False)
        assert refused.value.reason == "own_request"
    assert (await approvals.get(own.id)).status == "pending"


async def test_only_approvers_decide(approvals):
    named = ["group:ops", "user:dana", "agent:deployer"]
    approval = (await approvals.redeem_or_request(ALICE, "deploy", "rollback", DIGEST, named)).approval
    # not in the audience; an agent carrying ops in its groups is not named; a service never decides
    for who in (CAROL, Principal("x", frozenset({"ops"}), "agent", "bob"),
                Principal("gateway", frozenset({"ops"}), "service")):
        with pytest.raises(ApprovalError) as refused:
            await approvals.decide(approval.id, who, True)
        assert (refused.value.status, refused.value.reason) == (403, "not_an_approver")
    assert (await approvals.decide(approval.id, Principal("deployer", kind="agent", acting_for="bob"),
                                   True)).status == "approved"
    other = (await approvals.redeem_or_request(ALICE, "deploy", "rollback", arguments_digest({}),
                                               named)).approval
    assert (await approvals.decide(other.id, Principal("dana"), True)).decided_by == "dana"


async def test_denied_retries_are_refused_naming_who_denied(approvals):
    approval = (await ask(approvals)).approval
    await approvals.decide(approval.id, BOB, False)
    for _ in range(2):
        refused = await ask(approvals)
        assert refused.status == "denied" and refused.approval.id == approval.id
        assert refused.approval.decided_by == "bob"
    with pytest.raises(ApprovalError) as conflict:
        await approvals.decide(approval.id, Principal("olga", frozenset({"ops"})), True)
    assert (conflict.value.status, conflict.value.reason) == (409, "already_decided")
    assert "denied by bob" in conflict.value.message


async def test_expiry_from_creation_covers_wait_and_retry(approvals, clock):
    waited_out = (await ask(approvals)).approval
    clock.advance(TTL + 1)
    assert await approvals.get(waited_out.id) is None
    with pytest.raises(ApprovalError) as gone:
        await approvals.decide(waited_out.id, BOB, True)
    assert (gone.value.status, gone.value.reason) == (404, "not_found")
    assert (await approvals.redeem(ALICE, "deploy", "rollback", DIGEST)).status == "none"
    # approved in time, retried too late: asked anew, not redeemed
    late = (await ask(approvals)).approval
    assert late.id != waited_out.id
    await approvals.decide(late.id, BOB, True)
    clock.advance(TTL)
    retry = await ask(approvals)
    assert retry.status == "pending" and retry.created and retry.approval.id != late.id


async def test_other_arguments_do_not_redeem(approvals):
    approval = (await ask(approvals)).approval
    await approvals.decide(approval.id, BOB, True)
    other = arguments_digest({"env": "prod", "version": 4})
    for principal, tool, digest in ((ALICE, "rollback", other), (ALICE, "restart", DIGEST),
                                    (BOT, "rollback", DIGEST)):
        assert (await approvals.redeem(principal, "deploy", tool, digest)).status == "none"
    assert (await approvals.redeem(ALICE, "deploy", "rollback", DIGEST)).status == "redeemed"


async def test_listing_shows_approvers_what_waits_and_requesters_their_own(approvals):
    mine = (await ask(approvals)).approval
    decided = (await ask(approvals, digest=arguments_digest({"n": 1}))).approval
    await approvals.decide(decided.id, BOB, False)
    assert [a.id for a in await approvals.list_for(BOB)] == [mine.id]
    assert {a.id for a in await approvals.list_for(ALICE)} == {mine.id, decided.id}
    assert {a.id for a in await approvals.list_for(BOT)} == {mine.id, decided.id}  # acting for alice
    assert await approvals.list_for(CAROL) == []


async def test_a_decision_is_audited_before_it_takes_effect(approvals):
    approval = (await ask(approvals)).approval
    seen = []

    async def audit(decided):
        seen.append((decided.status, (await approvals.get(approval.id)).status))
        raise OSError("disk full")

    with pytest.raises(OSError):
        await approvals.decide(approval.id, BOB, True, audit=audit)
    assert seen == [("approved", "pending")]
    assert (await ask(approvals)).status == "pending"  # not approved: the record was not written

    async def written(decided):
        seen.append(decided.status)

    assert (await approvals.decide(approval.id, BOB, True, audit=written)).status == "approved"
    assert seen[-1] == "approved"


async def test_one_decision_at_a_time(make):
    node_a, node_b = make(), make()
    approval = (await ask(node_a)).approval
    writing, release = asyncio.Event(), asyncio.Event()

    async def slow_audit(_decided):
        writing.set()
        await release.wait()

    first = asyncio.create_task(node_a.decide(approval.id, BOB, True, audit=slow_audit))
    await writing.wait()
    with pytest.raises(ApprovalError) as busy:
        await node_b.decide(approval.id, Principal("olga", frozenset({"ops"})), False)
    assert (busy.value.status, busy.value.reason) == (409, "being_decided")
    release.set()
    assert (await first).status == "approved"


async def test_ids_that_cannot_be_approvals_are_not_looked_up(approvals):
    assert await approvals.get("../../etc") is None
    assert await approvals.get("apv_short") is None


async def flood(approvals: Approvals, who: Principal, count: int, start: int = 0) -> list[str]:
    """``count`` approvals asked for by ``who``, each for other arguments; their ids."""
    return [(await ask(approvals, who, arguments_digest({"flood": i}))).approval.id
            for i in range(start, start + count)]


async def test_a_requester_has_at_most_max_pending_approvals_waiting(make, clock):
    node_a, node_b = make(), make()
    bobs = (await ask(node_a, BOB)).approval
    await node_a.decide(bobs.id, OLGA, True)
    carols = (await ask(node_b, CAROL)).approval
    flooded = await flood(node_a, ALICE, 1)
    clock.advance(1)
    flooded += await flood(node_b, ALICE, MAX_PENDING - 1, start=1)
    clock.advance(9)
    for node in (node_a, node_b):  # the cap holds across the fleet
        with pytest.raises(TooManyApprovals) as refused:
            await flood(node, ALICE, 1, start=MAX_PENDING)
        error = refused.value
        assert (error.code, error.http_status, error.data["reason"]) == (-32033, 429, "too_many_approvals")
        assert error.data["approval_id"] == flooded[0] and f"{MAX_PENDING} of your" in error.message
        assert error.data["retry_after_s"] == pytest.approx(TTL - 10)  # when the oldest expires
        assert error.headers == {"Retry-After": str(int(TTL - 10))}
    # Nobody else pays: others' approvals, waiting or granted, stay, and others may still ask.
    assert (await ask(node_b, BOB)).status == "redeemed"
    assert (await node_a.get(carols.id)).status == "pending"
    assert (await ask(node_b, CAROL, arguments_digest({}))).created
    # Her waiting calls are still hers: a retry reuses its approval, an approved one goes through.
    assert (await ask(node_b, ALICE, arguments_digest({"flood": 3}))).approval.id == flooded[3]
    await node_b.decide(flooded[3], BOB, True)
    assert (await ask(node_a, ALICE, arguments_digest({"flood": 3}))).status == "redeemed"
    # A decided approval no longer waits: one place is free again, then none.
    assert await flood(node_b, ALICE, 1, start=MAX_PENDING)
    with pytest.raises(TooManyApprovals):
        await flood(node_a, ALICE, 1, start=MAX_PENDING + 1)
    clock.advance(TTL)  # all of them expired: she may ask again
    assert len(await flood(node_a, ALICE, MAX_PENDING, start=100)) == MAX_PENDING


async def test_a_full_memory_refuses_newcomers_and_evicts_nobody(clock):
    approvals = MemoryApprovals(TTL, clock, max_entries=5)
    bobs = (await ask(approvals, BOB)).approval
    await approvals.decide(bobs.id, OLGA, True)
    carols = (await ask(approvals, CAROL)).approval
    flooded = await flood(approvals, ALICE, 3)
    with pytest.raises(TooManyApprovals) as full:
        await flood(approvals, ALICE, 1, start=3)
    assert "holds as many waiting approvals as it can" in full.value.message
    assert "approval_id" not in full.value.data  # someone else's approval is not named
    with pytest.raises(TooManyApprovals):
        await ask(approvals, CAROL, arguments_digest({}))
    assert len(approvals) == 5
    assert (await approvals.get(carols.id)).status == "pending"
    assert (await ask(approvals, BOB)).status == "redeemed"  # using one needs no room
    assert (await ask(approvals, ALICE, arguments_digest({"flood": 0}))).approval.id == flooded[0]
    clock.advance(TTL)
    await ask(approvals)
    assert len(approvals) == 1


async def test_redis_down_fails_closed(redis_server, redis_clients, clock):
    approvals = RedisApprovals(redis_clients(), TTL, clock)
    approval = (await ask(approvals)).approval
    redis_server.stop()
    for attempt in (ask(approvals), approvals.redeem(ALICE, "deploy", "rollback", DIGEST),
                    approvals.get(approval.id), approvals.decide(approval.id, BOB, True),
                    approvals.list_for(BOB)):
        with pytest.raises(StateUnavailable, match="redis"):
            await attempt
    redis_server.start()  # an empty Redis: the pending approval is gone, a retry asks anew
    assert (await ask(approvals)).created
