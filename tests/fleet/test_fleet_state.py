"""Two gateway nodes sharing one real redis-server (``--state redis://``): one rate-limit budget
(N a minute admits N at once), approvals and bypasses served by any node, and what the fleet does
when Redis goes away."""
from __future__ import annotations

import asyncio
import time

import pytest
from mcp import MCPError

from tests.e2e.test_governance import api, call_tool
from tests.support.e2e import LIST, Node, connect, raw, start_fleet, write_governed_registry


@pytest.fixture
async def fleet(tmp_path, aiohttp_server, upstream_url, signing_key, redis_server) -> list[Node]:
    return await start_fleet(tmp_path, aiohttp_server, signing_key,
                             lambda root, jwks: write_governed_registry(root, jwks, upstream_url),
                             2, state=redis_server.url)


async def test_a_per_user_limit_holds_across_the_fleet(fleet) -> None:
    a, b = fleet
    alice, bob = a.idp.token("alice", ["eng"]), a.idp.token("bob", ["eng"])
    assert await call_tool(a, "ops", alice, "echo", {"text": "1"}) == "echo: 1"
    limited = await call_tool(b, "ops", alice, "echo", {"text": "2"})  # one at a time: 10 s apart
    assert limited.data["reason"] == "rate_limited" and limited.data["retry_after_s"] > 5
    assert await call_tool(b, "ops", bob, "echo", {"text": "3"}) == "echo: 3"


async def test_a_budget_of_n_admits_n_calls_at_once_across_the_fleet(fleet) -> None:
    a, b = fleet
    carol, bob, sam = (a.idp.token(u, g) for u, g in (("carol", ["eng"]), ("bob", ["eng"]),
                                                      ("sam", ["sre"])))
    # write_thing allows 5 a minute: 5 calls at once, on either node, all pass the limit (and
    # wait for their approvals); the 6th waits for the budget to refill, 60/5 s.
    waiting = await asyncio.gather(*(call_tool(node, "ops", carol, "write_thing", {"target": f"t{i}"})
                                     for i, node in enumerate((a, b, a, b, a))))
    assert [w.data["reason"] for w in waiting] == ["approval_required"] * 5
    limited = await call_tool(b, "ops", carol, "write_thing", {"target": "t5"})
    assert limited.data["reason"] == "rate_limited" and 11 < limited.data["retry_after_s"] <= 12
    # A call that waited for its approval is not refused when it comes back approved.
    asked = await call_tool(a, "ops", bob, "write_thing", {"target": "x"})
    approval = asked.data["approval_id"]
    assert (await api(b, "POST", f"/v1/approvals/{approval}/approve", sam)).status_code == 200
    assert await call_tool(b, "ops", bob, "write_thing", {"target": "x"}) == "wrote x in staging"


async def test_an_approval_made_on_one_node_is_decided_and_used_on_the_other(fleet) -> None:
    a, b = fleet
    alice, sam = a.idp.token("alice", ["eng"]), a.idp.token("sam", ["sre"])
    waiting = await call_tool(a, "ops", alice, "write_thing", {"target": "t"})
    approval = waiting.data["approval_id"]
    assert (await api(b, "POST", f"/v1/approvals/{approval}/approve", sam)).status_code == 200
    assert await call_tool(b, "ops", alice, "write_thing", {"target": "t"}) == \
        "wrote t in staging"
    again = await call_tool(a, "ops", alice, "write_thing", {"target": "t"})  # used up
    assert again.data["reason"] == "approval_required" and again.data["approval_id"] != approval


async def test_a_bypass_opened_on_one_node_is_honoured_by_the_other(fleet) -> None:
    a, b = fleet
    sam = a.idp.token("sam", ["sre-oncall"])
    assert (await raw(b, "/servers/vault/mcp", LIST, sam)).status_code == 404
    opened = await api(a, "POST", "/v1/bypass", sam, {"server": "vault", "reason": "INC-7",
                                                       "ttl_s": 120})
    assert opened.status_code == 201
    deadline = time.monotonic() + 5  # each node re-reads open bypasses about every second
    while (await raw(b, "/servers/vault/mcp", LIST, sam)).status_code == 404:
        assert time.monotonic() < deadline, "node b never saw the bypass"
        await asyncio.sleep(0.2)
    assert await call_tool(b, "vault", sam, "echo", {"text": "x"}) == "echo: x"
    listed = await api(b, "GET", "/v1/bypass", sam)
    assert [x["id"] for x in listed.json()["bypasses"]] == [opened.json()["id"]]


async def test_without_redis_nodes_keep_serving_with_local_limits(fleet, redis_server) -> None:
    a, b = fleet
    alice, carol = a.idp.token("alice", ["eng"]), a.idp.token("carol", ["eng"])
    assert await call_tool(a, "ops", alice, "echo", {"text": "1"}) == "echo: 1"
    redis_server.stop()
    # Alice's fleet-wide budget is spent, but node b has not seen her: per node, she passes once.
    assert await call_tool(b, "ops", alice, "echo", {"text": "2"}) == "echo: 2"
    limited = await call_tool(b, "ops", alice, "echo", {"text": "3"})
    assert limited.data["reason"] == "rate_limited"
    assert await call_tool(a, "ops", carol, "whoami", {})  # unlimited tools are untouched
    fallbacks = b.gateway.metrics.registry.get_sample_value(
        "gwc_state_fallbacks_total", {"what": "rate_limits"})
    assert fallbacks == 1  # one outage, counted once
    # Approvals fail closed: nothing is approved or redeemed from one node's memory. The gateway's
    # own trouble is a protocol error, not a refusal the model reads: a JSON-RPC error still.
    async with connect(a.endpoint("ops"), alice, "auto") as client:
        with pytest.raises(MCPError) as closed:
            await client.call_tool("write_thing", {"target": "t"})
    assert closed.value.code == -32032 and closed.value.data == {"reason": "state_unavailable"}
