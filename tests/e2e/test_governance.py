"""Governance end to end through a real gateway node: the audit trail of real MCP traffic, rate
limits, shadow mode per access class, and what happens when the trail cannot be written."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx2
import orjson
import pytest
import yaml
from click.testing import CliRunner
from mcp import MCPError

from gwc.compiler.cli import main
from gwc.runtime.audit.chain import verify
from gwc.runtime.audit.writer import trail
from gwc.runtime.governance.approvals import MAX_PENDING
from gwc.runtime.mcp.trail import AuditTarget
from tests.support.e2e import (
    LIST,
    Node,
    connect,
    echo_in_session,
    raw,
    refusal,
    start_node,
    text_of,
    unwritable_trail,
    write_governed_registry,
    write_test_registry,
)


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
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    refused = [refusal(o) for o in outcomes if o.is_error]  # refusals are tool results
    assert refused == [{"reason": "denied", "rules": []}] * 10

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
        limited = await client.call_tool("echo", {"text": "2"})  # 6/min, one at a time: 10 s apart
        assert text_of(await client.call_tool("whoami", {}))  # other tools have no limit
    assert refusal(limited)["reason"] == "rate_limited"
    assert 5 < limited.structured_content["retry_after_s"] <= 10
    async with connect(governed.endpoint("ops"), governed.idp.token("bob", ["eng"]),
                       "legacy") as client:
        assert text_of(await client.call_tool("echo", {"text": "b"})) == "echo: b"
    limited_records = records(governed, decision="rate_limited")
    assert [r["principal"]["subject"] for r in limited_records] == ["alice"]


async def test_shadow_per_access_class_records_would_deny_and_lets_writes_through(governed) -> None:
    async with connect(governed.endpoint("legacy"), governed.idp.token("mallory", ["eng"]),
                       "auto") as client:
        denied = await client.call_tool("echo", {"text": "x"})  # reads are enforced
        assert "wrote" in text_of(await client.call_tool("write_thing", {"target": "t"}))
    assert refusal(denied) == {"reason": "denied", "rules": ["legacy-no-mallory"]}
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
    token = node.idp.token("alice", ["eng"])
    call, headers = await echo_in_session(node, token)
    with unwritable_trail(node) as path:
        failed = await raw(node, "/servers/tools/mcp", call, token, headers)
        assert "audit_unavailable" in failed.text  # an SSE answer: its result withheld
        refused = await raw(node, "/servers/tools/mcp", call, token, headers)
        assert refused.json()["error"]["data"]["reason"] == "audit_unavailable"
    # The next refusal's record is the probe that finds the trail writable again.
    await raw(node, "/servers/tools/mcp", call, token, headers)
    served = await raw(node, "/servers/tools/mcp", call, token, headers)
    assert served.status_code == 200 and "echo: x" in served.text
    assert verify(trail(node.audit_path)).ok  # nothing torn, nothing lost from the chain
    assert path.read_bytes().count(b'"decision":"allow"') >= 2


async def api(node: Node, method: str, path: str, token: str, body: dict | None = None
              ) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.request(method, node.url + path, json=body,
                                  headers={"Authorization": f"Bearer {token}"})


@dataclass(frozen=True)
class Refused:
    """A tools/call the gateway refused, as the tool result (isError) it answered."""
    data: dict  # reason, ids and numbers: what a JSON-RPC error's data had
    message: str


async def call_tool(node: Node, server: str, token: str, tool: str, arguments: dict):
    """One stateless tools/call; the result text, or the refusal it came to."""
    async with connect(node.endpoint(server), token, "auto") as client:
        result = await client.call_tool(tool, arguments)
    if result.is_error:
        return Refused(refusal(result), result.structured_content["message"])
    return text_of(result)


async def test_an_approval_round_trip_goes_through_once(governed) -> None:
    alice, sam = governed.idp.token("alice", ["eng"]), governed.idp.token("sam", ["sre"])
    bob = governed.idp.token("bob", ["eng"])
    args = {"target": "prod-db", "env": "production"}
    waiting = await call_tool(governed, "ops", alice, "write_thing", args)
    assert waiting.data["reason"] == "approval_required"
    assert set(waiting.data) == {"reason", "approval_id", "approve_url", "approvers", "expires_at"}
    approval = waiting.data["approval_id"]
    assert waiting.data["approve_url"] == f"{governed.url}/v1/approvals/{approval}/approve"  # no sign_in
    assert waiting.data["approvers"] == ["group:sre"]  # teams are IdP groups
    again = await call_tool(governed, "ops", alice, "write_thing", args)
    assert again.data["approval_id"] == approval  # retries do not pile up approvals

    own = await api(governed, "POST", f"/v1/approvals/{approval}/approve", alice)
    assert own.status_code == 403  # never the requester
    other = await api(governed, "POST", f"/v1/approvals/{approval}/approve", bob)
    assert other.status_code == 403  # not an approver
    listed = await api(governed, "GET", "/v1/approvals", sam)
    assert [a["id"] for a in listed.json()["approvals"]] == [approval]
    assert (await api(governed, "POST", f"/v1/approvals/{approval}/approve", sam)).status_code \
        == 200

    changed = await call_tool(governed, "ops", alice, "write_thing", {**args, "env": "staging"})
    assert changed.data["reason"] == "approval_required"  # other arguments: another approval
    assert changed.data["approval_id"] != approval
    assert await call_tool(governed, "ops", alice, "write_thing", args) == \
        "wrote prod-db in production"
    used = await call_tool(governed, "ops", alice, "write_thing", args)
    assert used.data["reason"] == "approval_required" and used.data["approval_id"] != approval

    steps = [(r["decision"], r["approval"]) for r in records(governed, type="call", tool="write_thing")
             if r["approval"] == approval]
    assert steps == [("approval_required", approval)] * 2 + [("approved", approval)]
    [decided] = records(governed, type="approval")
    assert (decided["event"], decided["principal"]["subject"], decided["approval"]) == (
        "approved", "sam", approval)


async def test_a_flood_of_approvals_is_capped_per_requester(node) -> None:
    alice, carol = node.idp.token("alice", ["eng"]), node.idp.token("carol", ["eng"])
    async with connect(node.endpoint("guarded"), alice, "auto") as client:
        for i in range(MAX_PENDING + 1):
            refused = refusal(await client.call_tool("write_thing", {"target": f"t{i}"}))
            if i < MAX_PENDING:
                assert refused["reason"] == "approval_required"
    assert refused["reason"] == "too_many_approvals"
    assert 800 < refused["retry_after_s"] <= 900  # when her oldest approval expires
    # another caller is unaffected
    waiting = await call_tool(node, "guarded", carol, "write_thing", {"target": "c"})
    assert waiting.data["reason"] == "approval_required"
    [record] = records(node, error="too_many_approvals")
    assert (record["principal"]["subject"], record["outcome"]) == ("alice", "refused")
    assert node.gateway.metrics.registry.get_sample_value("gwc_requests_total", {
        "server": "guarded", "method": "tools/call", "tool": "write_thing",
        "decision": "too_many_approvals"}) == 1


async def test_a_denied_approval_refuses_the_retry(governed) -> None:
    carol, sam = governed.idp.token("carol", ["eng"]), governed.idp.token("sam", ["sre"])
    waiting = await call_tool(governed, "ops", carol, "write_thing", {"target": "x"})
    approval = waiting.data["approval_id"]
    assert (await api(governed, "POST", f"/v1/approvals/{approval}/deny", sam)).status_code == 200
    refused = await call_tool(governed, "ops", carol, "write_thing", {"target": "x"})
    assert refused.data == {"reason": "denied", "approval_id": approval}
    assert "sam" in refused.message


async def test_break_glass_opens_a_server_for_its_members_only(governed) -> None:
    sam = governed.idp.token("sam", ["sre", "sre-oncall"])
    alice = governed.idp.token("alice", ["eng"])
    unseen = await raw(governed, "/servers/vault/mcp", LIST, sam)
    assert unseen.status_code == 404
    assert (await api(governed, "POST", "/v1/bypass", alice, {
        "server": "vault", "reason": "x", "ttl_s": 60})).status_code == 403
    too_long = await api(governed, "POST", "/v1/bypass", sam, {
        "server": "vault", "reason": "INC-42: vault down", "ttl_s": 601})
    assert too_long.status_code == 400 and "600" in too_long.text
    opened = await api(governed, "POST", "/v1/bypass", sam, {
        "server": "vault", "reason": "INC-42: vault down", "ttl_s": 300})
    assert opened.status_code == 201
    bypass = opened.json()["id"]

    assert await call_tool(governed, "vault", sam, "echo", {"text": "in"}) == "echo: in"
    async with connect(governed.endpoint("vault"), sam, "legacy") as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
    assert (await raw(governed, "/servers/vault/mcp", LIST, alice)).status_code == 404
    [call] = records(governed, type="call", server="vault", decision="bypass")
    assert records(governed, type="list", server="vault", decision="bypass")
    assert (call["bypass"], call["policy"]["effect"], call["outcome"]) == (
        bypass, "not_found", "forwarded")  # what policy would have said, and that it went on

    closed = await api(governed, "DELETE", f"/v1/bypass/{bypass}", sam)
    assert closed.status_code == 200
    assert (await raw(governed, "/servers/vault/mcp", LIST, sam)).status_code == 404
    events = [(r["event"], r["reason"]) for r in records(governed, type="bypass")]
    assert events == [("opened", "INC-42: vault down"), ("closed", "INC-42: vault down")]


async def test_replaying_a_real_trail_finds_no_difference_and_previews_a_policy_change(
        node, signing_key) -> None:
    token = node.idp.token("alice", ["eng"])
    async with connect(node.endpoint(), token, "auto") as client:
        for env in ("staging", "production", "staging"):  # production: refused, a tool result
            await client.call_tool("write_thing", {"target": "t", "env": env})
    trail_files = [str(p) for p in trail(node.audit_path)]
    trust = ["--trust", str(signing_key[1])]
    replay = CliRunner().invoke(main, ["audit", "replay", *trail_files, "--bundles",
                                       str(node.store_dir), *trust])
    assert replay.exit_code == 0, replay.output

    # The proposed policy lets eng write to production too: exactly that call would change.
    policy = node.registry_root / "policies" / "eng" / "tools.yaml"
    rules = yaml.safe_load(policy.read_text())
    next(r for r in rules if r["id"] == "eng-write-staging")["conditions"]["env"].append(
        "production")
    policy.write_text(yaml.safe_dump(rules))
    preview = CliRunner().invoke(main, ["audit", "replay", *trail_files, "--bundles",
                                        str(node.store_dir), *trust, "--against",
                                        str(node.registry_root), "--format", "json"])
    assert preview.exit_code == 0, preview.output
    findings = [json.loads(line) for line in preview.output.splitlines() if line.startswith("{")]
    [change] = [f for f in findings if f["kind"] == "change"]
    assert (change["label"], change["replayed"]["rules"]) == ("deny→allow", ["eng-write-staging"])
