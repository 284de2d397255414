"""tools/call through the endpoint's phases (route, admit, record, relay), in this process: the
gateway and a fake upstream are both aiohttp apps on loopback test servers; no subprocess."""
from __future__ import annotations

import json

import pytest

from gwc.runtime.audit.record import Outcome
from tests.support.e2e import Node, raw, start_node, write_governed_registry
from tests.support.fake_upstream import FakeUpstream

STATELESS = "2026-07-28"
CHAIN_FIELDS = {"seq", "prev", "hash"}
# What a tools/call record holds (the trail writes keys sorted, as canonical JSON, and adds its chain
# fields).
CALL_FIELDS = ["type", "time", "request_id", "client_request_id", "node", "bundle", "principal",
               "endpoint", "method", "server", "tool", "access", "arguments", "policy", "decision",
               "approval", "bypass", "outcome", "error", "upstream_status", "latency_ms"]


@pytest.fixture
async def upstream(aiohttp_server) -> tuple[FakeUpstream, str]:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    return fake, str(server.make_url("/mcp"))


@pytest.fixture
async def governed(tmp_path, aiohttp_server, signing_key, upstream) -> Node:
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_governed_registry(root, jwks, upstream[1]))


async def call_tool(node: Node, server: str, tool: str, arguments: dict, token: str,
                    path: str | None = None) -> dict:
    """A stateless (2026-07-28) tools/call; the JSON-RPC answer with the HTTP status and headers
    beside it."""
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments,
        "_meta": {"io.modelcontextprotocol/protocolVersion": STATELESS,
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "io.modelcontextprotocol/clientInfo": {"name": "unit", "version": "1"}}}}
    response = await raw(node, path or f"/servers/{server}/mcp", body, token, {
        "MCP-Protocol-Version": STATELESS, "Mcp-Method": "tools/call", "Mcp-Name": tool})
    return {"status": response.status_code, "headers": response.headers, **response.json()}


def refused(answer: dict) -> dict:
    """The refusal a tools/call came to, read as the tool result the model sees: a 200, no JSON-RPC
    error, isError, one text that starts with the refusal's message, and the refusal's data
    (reason, ids, numbers, message) as structuredContent; the stateless era's result is complete."""
    assert answer["status"] == 200 and "error" not in answer, answer
    result = answer["result"]
    assert set(result) == {"content", "structuredContent", "isError", "resultType"}
    assert result["isError"] is True and result["resultType"] == "complete"
    data = result["structuredContent"]
    [content] = result["content"]
    assert content["type"] == "text" and content["text"].startswith(data["message"] + ". ")
    return data


def last_record(node: Node) -> dict:
    return json.loads(node.audit_path.read_text().splitlines()[-1])


def count(node: Node, server: str, tool: str, decision: str) -> float:
    sample = node.gateway.metrics.requests.labels(server, "tools/call", tool, decision)
    return sample._value.get()


async def test_an_allowed_call_is_forwarded_and_its_typed_record_has_the_trail_fields(
        governed, upstream) -> None:
    fake, _ = upstream
    answer = await call_tool(governed, "ops", "whoami", {"x": 1}, governed.idp.token("alice", ["eng"]))
    assert answer["status"] == 200 and json.loads(answer["result"]["content"][0]["text"]) == {
        "tool": "whoami", "arguments": {"x": 1}}
    assert [m["params"]["name"] for m in fake.calls()] == ["whoami"]
    record = last_record(governed)
    assert set(record) - CHAIN_FIELDS == set(CALL_FIELDS)
    bundle = governed.gateway.store.active
    assert {k: record[k] for k in CALL_FIELDS if k not in ("time", "request_id", "latency_ms")} == {
        "type": "call", "client_request_id": None, "node": governed.gateway.auditor.node,
        "bundle": {"digest": bundle.digest, "serial": 1},
        "principal": {"subject": "alice", "kind": "human", "groups": ["eng"], "acting_for": None},
        "endpoint": "ops", "method": "tools/call", "server": "ops", "tool": "whoami",
        "access": "read", "arguments": {"shape": {"x": "number"}, "values": {}},
        "policy": {"effect": "allow", "reason": "visibility", "rules": [], "mode": "enforce",
                   "approval_required": False},
        "decision": "allow", "approval": None, "bypass": None, "outcome": Outcome.FORWARDED.value,
        "error": None, "upstream_status": 200}
    assert set(record["latency_ms"]) == {"gateway", "upstream"} and record["latency_ms"]["upstream"] > 0
    assert count(governed, "ops", "whoami", "allow") == 1


async def test_a_denied_call_is_refused_with_its_stable_reason_and_never_forwarded(
        governed, upstream) -> None:
    fake, _ = upstream
    answer = await call_tool(governed, "legacy", "echo", {}, governed.idp.token("mallory", ["eng"]))
    assert refused(answer) == {"reason": "denied", "rules": ["legacy-no-mallory"],
                               "message": "mallory may not call echo on legacy"}
    assert fake.calls() == []
    record = last_record(governed)
    assert (record["decision"], record["outcome"], record["error"], record["upstream_status"]) == (
        "deny", "refused", "denied", None)
    assert count(governed, "legacy", "echo", "deny") == 1


async def test_an_invisible_server_answers_as_one_that_does_not_exist(governed, upstream) -> None:
    fake, _ = upstream
    alice = governed.idp.token("alice", ["eng"])
    hidden = await call_tool(governed, "vault", "echo", {}, alice)
    missing = await call_tool(governed, "nowhere", "echo", {}, alice)
    assert hidden["status"] == missing["status"] == 404
    assert hidden["error"]["data"]["reason"] == missing["error"]["data"]["reason"] == "not_found"
    assert hidden["error"]["message"] == "unknown server 'vault'"
    # on the aggregate, a tool of a server the caller cannot see is an unknown tool
    # (a protocol error, -32602 as the MCP specification names it for an unknown tool)
    aggregated = await call_tool(governed, "", "vault__echo", {}, alice, path="/mcp")
    assert "result" not in aggregated
    assert aggregated["error"]["code"] == -32602
    assert aggregated["error"]["data"]["reason"] == "not_found"
    assert aggregated["error"]["message"] == "Unknown tool: vault__echo"
    assert fake.calls() == []
    record = last_record(governed)
    assert (record["endpoint"], record["server"], record["tool"], record["decision"]) == (
        "", None, "vault__echo", "not_found")


async def test_a_call_that_needs_an_approval_waits_for_one(governed, upstream) -> None:
    fake, _ = upstream
    answer = await call_tool(governed, "ops", "write_thing", {"target": "a"},
                             governed.idp.token("alice", ["eng"]))
    data = refused(answer)
    assert data["reason"] == "approval_required" and data["approvers"] == ["group:sre"]
    assert set(data) == {"reason", "approval_id", "approve_url", "approvers", "expires_at",
                         "message"}
    # no sign_in in gateway.yaml: no browser session to use a page with, so the API's URL
    assert data["approve_url"] == f"{governed.url}/v1/approvals/{data['approval_id']}/approve"
    assert fake.calls() == []
    record = last_record(governed)
    assert (record["decision"], record["approval"], record["outcome"]) == (
        "approval_required", data["approval_id"], "refused")
    assert count(governed, "ops", "write_thing", "approval_required") == 1


async def test_a_call_over_its_rate_limit_is_refused_and_uses_nothing(governed, upstream) -> None:
    fake, _ = upstream
    alice = governed.idp.token("alice", ["eng"])
    first = await call_tool(governed, "ops", "echo", {}, alice)
    second = await call_tool(governed, "ops", "echo", {}, alice)
    assert "result" in first and "isError" not in first["result"]
    data = refused(second)  # a 200 now, still telling when to retry in its Retry-After header
    assert data["reason"] == "rate_limited" and set(data) == {"reason", "retry_after_s", "message"}
    assert 0 < data["retry_after_s"] <= 10
    assert second["headers"]["Retry-After"] == str(max(1, round(data["retry_after_s"] + 0.5)))
    assert len(fake.calls()) == 1
    record = last_record(governed)
    assert (record["decision"], record["outcome"], record["error"]) == (
        "rate_limited", "refused", "rate_limited")
    assert count(governed, "ops", "echo", "rate_limited") == 1


async def test_an_approval_result_tells_the_model_the_approval_and_to_call_again(
        governed, upstream) -> None:
    fake, _ = upstream
    answer = await call_tool(governed, "ops", "write_thing", {"target": "b"},
                             governed.idp.token("alice", ["eng"]))
    data = refused(answer)
    [content] = answer["result"]["content"]
    text = content["text"]
    assert data["approval_id"] in text and data["approve_url"] in text
    assert "call again with the same arguments" in text and text.count("same arguments") == 1
    assert fake.calls() == []


async def test_a_refused_prompt_or_resource_is_still_a_json_rpc_error(governed, upstream) -> None:
    """Only tools/call refusals become tool results: an unknown (or invisible) prompt or resource
    is the JSON-RPC error -32002 with reason not_found, as before."""
    fake, _ = upstream
    alice = governed.idp.token("alice", ["eng"])
    meta = {"io.modelcontextprotocol/protocolVersion": STATELESS,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "unit", "version": "1"}}
    asked = {"prompts/get": ("name", "vault__greet", "Unknown prompt: vault__greet"),
             "resources/read": ("uri", "vault://secret", "Resource not found: vault://secret")}
    for method, (param, name, message) in asked.items():
        body = {"jsonrpc": "2.0", "id": 3, "method": method, "params": {param: name, "_meta": meta}}
        response = await raw(governed, "/mcp", body, alice, {
            "MCP-Protocol-Version": STATELESS, "Mcp-Method": method, "Mcp-Name": name})
        answer = response.json()
        assert "result" not in answer, (method, answer)
        assert answer["error"] == {"code": -32002, "message": message,
                                   "data": {"reason": "not_found"}}, method
        record = last_record(governed)
        assert (record["method"], record["decision"], record["outcome"], record["error"]) == (
            method, "not_found", "refused", "not_found")
    assert fake.calls() == []
