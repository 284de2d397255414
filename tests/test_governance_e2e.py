"""Governance end to end through a real gateway node: the audit trail of real MCP traffic, rate
limits, shadow mode per access class, and what happens when the trail cannot be written."""
from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from mcp import MCPError

from runtime.audit import verify
from runtime.audit_sink import trail
from runtime.auditor import AuditTarget
from tests.e2e import (LIST, Node, connect, open_session, raw, start_node, text_of,
                       write_governed_registry, write_test_registry)


def records(node: Node, **match) -> list[dict]:
    found = []
    for path in trail(node.audit_path):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            if all(record.get(k) == v for k, v in match.items()):
                found.append(record)
    return found


@pytest.fixture
async def governed(tmp_path, aiohttp_server, upstream_url, signing_key) -> Node:
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_governed_registry(root, jwks, upstream_url))


async def test_every_call_leaves_one_record_and_the_chain_holds(node) -> None:
    secret = "the-target-value-policy-never-reads"
    async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), "auto") as client:
        calls = ([client.call_tool("echo", {"text": secret}) for _ in range(10)]
                 + [client.call_tool("write_thing", {"target": secret, "env": "staging"})
                    for _ in range(10)]
                 + [client.call_tool("write_thing", {"target": secret, "env": "production"})
                    for _ in range(10)])
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(o, MCPError) for o in outcomes) == 10

    calls = records(node, type="call", method="tools/call")
    assert len(calls) == 30
    assert sorted(r["decision"] for r in calls) == ["allow"] * 20 + ["deny"] * 10
    verdict = verify(trail(node.audit_path))
    assert verdict.ok and verdict.from_genesis
    text = b"".join(p.read_bytes() for p in trail(node.audit_path))
    assert secret.encode() not in text  # values policy does not read never reach the trail

    bundle = node.gateway.store.active
    allowed = next(r for r in calls if r["tool"] == "write_thing" and r["decision"] == "allow")
    assert allowed["arguments"] == {"shape": {"target": "string", "env": "string"},
                                    "values": {"env": "staging"}}
    assert allowed["principal"] == {"subject": "alice", "kind": "human", "groups": ["eng"],
                                    "acting_for": None}
    assert allowed["bundle"] == {"digest": bundle.digest, "serial": 1}
    assert allowed["policy"]["rules"] == ["eng-write-staging"]
    assert (allowed["server"], allowed["access"], allowed["outcome"],
            allowed["upstream_status"]) == ("tools", "write", "forwarded", 200)
    assert allowed["latency_ms"]["upstream"] > 0 and allowed["latency_ms"]["gateway"] > 0
    denied = next(r for r in calls if r["decision"] == "deny")
    assert (denied["outcome"], denied["error"], denied["upstream_status"],
            denied["arguments"]["values"]) == ("refused", "denied", None, {"env": "production"})
    assert records(node, type="list", method="tools/list")


async def test_a_streamed_answer_is_recorded(node) -> None:
    async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), "legacy") as client:
        seen = []

        async def progress(done, total, message):
            seen.append(done)
        result = await client.call_tool("slow_count", {"n": 3}, progress_callback=progress)
    assert seen and "3" in text_of(result)
    [record] = records(node, type="call", tool="slow_count")
    assert (record["outcome"], record["upstream_status"]) == ("forwarded", 200)


async def test_an_invisible_server_is_recorded_as_not_found(node) -> None:
    response = await raw(node, "/servers/hidden/mcp", LIST, node.idp.token("alice", ["eng"]))
    assert response.status_code == 404
    [record] = records(node, server="hidden")
    assert (record["decision"], record["method"], record["principal"]["subject"]) == (
        "not_found", None, "alice")


async def test_rate_limits_refuse_with_retry_after_per_user(governed) -> None:
    async with connect(governed.endpoint("ops"), governed.idp.token("alice", ["eng"]),
                       "auto") as client:
        assert text_of(await client.call_tool("echo", {"text": "1"})) == "echo: 1"
        with pytest.raises(MCPError) as limited:  # 6/min: no burst, 10 s apart
            await client.call_tool("echo", {"text": "2"})
        assert text_of(await client.call_tool("whoami", {}))  # other tools have no limit
    assert limited.value.code == -32029
    assert limited.value.data["reason"] == "rate_limited"
    assert 5 < limited.value.data["retry_after_s"] <= 10
    async with connect(governed.endpoint("ops"), governed.idp.token("bob", ["eng"]),
                       "legacy") as client:
        assert text_of(await client.call_tool("echo", {"text": "b"})) == "echo: b"
    limited_records = records(governed, decision="rate_limited")
    assert [r["principal"]["subject"] for r in limited_records] == ["alice"]


async def test_shadow_per_access_class_records_would_deny_and_lets_writes_through(governed) -> None:
    async with connect(governed.endpoint("legacy"), governed.idp.token("mallory", ["eng"]),
                       "auto") as client:
        with pytest.raises(MCPError) as denied:  # reads are enforced
            await client.call_tool("echo", {"text": "x"})
        assert "wrote" in text_of(await client.call_tool("write_thing", {"target": "t"}))
    assert denied.value.data["reason"] == "denied"
    async with connect(governed.endpoint("legacy"), governed.idp.token("alice", ["eng"]),
                       "auto") as client:  # alice is granted reads only: her write is shadowed
        assert "wrote" in text_of(await client.call_tool("write_thing", {"target": "t"}))
    shadowed = records(governed, tool="write_thing", decision="would_deny")
    assert [(r["principal"]["subject"], r["policy"]["reason"], r["outcome"]) for r in shadowed] \
        == [("mallory", "deny_rule", "forwarded"), ("alice", "no_grant", "forwarded")]
    assert [r["policy"]["rules"] for r in shadowed] == [["legacy-no-mallory"], []]


@pytest.mark.parametrize("failure", ["closed", "open"])
async def test_a_trail_that_cannot_be_opened(tmp_path, aiohttp_server, upstream_url,
                                             signing_key, failure) -> None:
    unwritable = tmp_path / "a-directory"
    unwritable.mkdir()
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, upstream_url),
                            audit=AuditTarget("file", unwritable), audit_failure=failure)
    token = node.idp.token("alice", ["eng"])
    if failure == "closed":
        async with connect(node.endpoint(), token, "auto") as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("echo", {"text": "x"})
        assert refused.value.data["reason"] == "audit_unavailable"
    else:
        async with connect(node.endpoint(), token, "auto") as client:
            assert text_of(await client.call_tool("echo", {"text": "x"})) == "echo: x"
    assert node.gateway.metrics.registry.get_sample_value("gwc_audit_failures_total") >= 1


async def test_a_failing_trail_refuses_calls_until_it_writes_again(node) -> None:
    writer = node.gateway.auditor._writer
    good = writer._file
    token = node.idp.token("alice", ["eng"])
    session = await open_session(node, "/servers/tools/mcp", token)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"}}}
    headers = {"Mcp-Session-Id": session}
    writer._file = open(good.name, "rb", buffering=0)  # every write now fails, as on a full disk
    try:
        failed = await raw(node, "/servers/tools/mcp", call, token, headers)
        assert "audit_unavailable" in failed.text  # an SSE answer: its result withheld
        refused = await raw(node, "/servers/tools/mcp", call, token, headers)
        assert refused.json()["error"]["data"]["reason"] == "audit_unavailable"
    finally:
        writer._file.close()
        writer._file = good
    # The next refusal's record is the probe that finds the trail writable again.
    await raw(node, "/servers/tools/mcp", call, token, headers)
    served = await raw(node, "/servers/tools/mcp", call, token, headers)
    assert served.status_code == 200 and "echo: x" in served.text
    assert verify(trail(node.audit_path)).ok  # nothing torn, nothing lost from the chain
    assert Path(good.name).read_bytes().count(b'"decision":"allow"') >= 2
