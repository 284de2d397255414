"""End to end: real mcp.Client (both protocol eras) -> gwc runtime -> real MCPServer upstream, on a
per-server endpoint.

The IdP serves its JWKS over HTTP on 127.0.0.1; the upstream runs in a subprocess; the gateway runs
on a real socket. Nothing is mocked.
"""
from __future__ import annotations

import asyncio
import json

import httpx2
import jwt
import pytest
from mcp import MCPError

from gwc.compiler.client.dev_idp import DevIdP
from tests.support.e2e import (
    LIST,
    MODES,
    connect,
    open_session,
    raw,
    refusal,
    start_node,
    text_of,
    write_test_registry,
)
from tests.support.idp import AUDIENCE, ISSUER, claims, hs256_with_public_key, unsigned_token


@pytest.mark.parametrize("mode", MODES)
async def test_users_see_exactly_their_tools_with_manifest_annotations(node, mode) -> None:
    async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        # write_thing is listed: eng may call it for staging. secret_tool is undeclared.
        assert set(tools) == {"echo", "whoami", "slow_count", "write_thing"}
        assert tools["echo"].annotations.read_only_hint is True
        assert tools["echo"].annotations.destructive_hint is False  # the upstream claimed True
        assert tools["write_thing"].annotations.destructive_hint is True
        assert text_of(await client.call_tool("echo", {"text": "hi"})) == "echo: hi"


@pytest.mark.parametrize("mode", MODES)
async def test_the_upstream_sees_a_gateway_token_never_the_clients(node, mode, upstream_url) -> None:
    client_token = node.idp.token("alice", ["eng"])
    async with connect(node.endpoint(), client_token, mode) as client:
        seen = json.loads(text_of(await client.call_tool("whoami", {})))
    token = seen["authorization"].removeprefix("Bearer ")
    assert token != client_token
    key = jwt.PyJWK(node.gateway.credentials.jwks()["keys"][0])
    claims = jwt.decode(token, key.key, algorithms=["EdDSA"], audience=upstream_url,
                        issuer=node.url)
    assert (claims["sub"], claims["scope"]) == ("alice", "whoami")
    assert claims["exp"] - claims["iat"] <= 300
    assert seen["host"] == upstream_url.split("/")[2]  # the upstream's own Host
    assert seen["request_id"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_cookie_an_upstream_sets_never_reaches_it_again(tmp_path, aiohttp_server,
                                                                  signing_key, upstream_url,
                                                                  mode) -> None:
    """The upstream's pool is shared by every caller: a cookie one caller's answer set (a session
    of the upstream's own) would go out with the next caller's calls. Named by host, as upstreams
    are (cookies for a bare IP address are not kept anyway)."""
    by_name = upstream_url.replace("127.0.0.1", "localhost")
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, by_name))
    for user in ("alice", "bob"):
        async with connect(node.endpoint(), node.idp.token(user, ["eng"]), mode) as client:
            for _ in range(2):
                seen = json.loads(text_of(await client.call_tool("whoami", {})))
                assert seen["cookie"] is None, user


@pytest.mark.parametrize("mode", MODES)
async def test_policy_is_enforced_before_the_upstream(node, mode) -> None:
    async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), mode) as client:
        assert text_of(await client.call_tool("write_thing", {"target": "x", "env": "staging"})) \
            == "wrote x in staging"
        # a refusal is a tool result the model reads (isError), no longer a JSON-RPC error
        denied = await client.call_tool("write_thing", {"target": "x", "env": "production"})
        assert refusal(denied) == {"reason": "denied", "rules": []}
        assert denied.content[0].text.startswith("alice may not call write_thing on tools. ")
        # a missing argument fails the condition
        missing = await client.call_tool("write_thing", {"target": "x"})
        assert refusal(missing)["reason"] == "denied"
    async with connect(node.endpoint(), node.idp.token("bob", ["ops"]), mode) as client:
        assert "production" in text_of(await client.call_tool(
            "write_thing", {"target": "x", "env": "production"}))
    async with connect(node.endpoint(), node.idp.token("mallory", ["ops"]), mode) as client:
        deny_rule = await client.call_tool("echo", {"text": "x"})
        assert refusal(deny_rule) == {"reason": "denied", "rules": ["no-mallory"]}


async def test_shadow_mode_lets_denied_calls_through_but_never_skips_approvals(node) -> None:
    async with connect(node.endpoint("guarded"), node.idp.token("mallory", ["eng"]), "auto") as client:
        assert text_of(await client.call_tool("echo", {"text": "x"})) == "echo: x"  # would_deny
        shadowed = await client.call_tool("write_thing", {"target": "x"})
    async with connect(node.endpoint("guarded"), node.idp.token("alice", ["eng"]), "auto") as client:
        granted = await client.call_tool("write_thing", {"target": "x"})
    assert refusal(shadowed)["reason"] == refusal(granted)["reason"] == "approval_required"
    metrics = node.gateway.metrics.registry
    assert metrics.get_sample_value("gwc_requests_total", {
        "server": "guarded", "method": "tools/call", "tool": "echo", "decision": "would_deny"}) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_undeclared_tools_do_not_exist(node, mode) -> None:
    async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), mode) as client:
        with pytest.raises(MCPError) as undeclared:
            await client.call_tool("secret_tool", {})
        with pytest.raises(MCPError) as nonexistent:
            await client.call_tool("no_such_tool", {})
    # an unknown tool is a protocol error: -32602 (INVALID_PARAMS), as the MCP specification says
    assert (undeclared.value.code, undeclared.value.data) == \
        (nonexistent.value.code, nonexistent.value.data) == (-32602, {"reason": "not_found"})
    assert undeclared.value.message == "Unknown tool: secret_tool"



async def test_invisible_server_answers_like_a_missing_one(node) -> None:
    token = node.idp.token("alice", ["eng"])
    hidden = await raw(node, "/servers/hidden/mcp", LIST, token)
    missing = await raw(node, "/servers/nope/mcp", LIST, token)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text.replace("hidden", "X") == missing.text.replace("nope", "X")
    async with connect(node.endpoint("hidden"), node.idp.token("sam", ["secret"]), "auto") as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["echo"]


@pytest.mark.parametrize("mode", MODES)
async def test_progress_notifications_are_relayed(node, mode) -> None:
    seen = []

    async def progress(done, total, message):
        seen.append(done)

    async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), mode) as client:
        result = await client.call_tool("slow_count", {"n": 3}, progress_callback=progress)
    assert text_of(result) == "counted 3" and seen == [1, 2, 3]


@pytest.mark.parametrize("mode", MODES)
async def test_resources_and_prompts_pass_for_callers_who_see_the_server(node, mode) -> None:
    async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), mode) as client:
        resource = await client.read_resource("test://greeting")
        assert resource.contents[0].text == "hello from the upstream"
        prompt = await client.get_prompt("review", {"code": "x = 1"})
        assert "x = 1" in prompt.messages[0].content.text


BAD_TOKENS = {
    "missing": lambda idp: None,
    "garbage": lambda idp: "garbage",
    "expired": lambda idp: idp.token("alice", ["eng"], ttl_s=-100),
    "wrong-issuer": lambda idp: idp.token("alice", ["eng"], issuer="https://evil.example"),
    "wrong-audience": lambda idp: idp.token("alice", ["eng"], audience="someone-else"),
    "unknown-kid": lambda idp: DevIdP.generate("k-unknown").token(
        issuer=ISSUER, audience=AUDIENCE, subject="alice", groups=["eng"]),
    "alg-none": lambda idp: unsigned_token(claims(groups=["eng"])),
    "kid-not-a-string": lambda idp: unsigned_token(claims(groups=["eng"]),
                                                   {"alg": "ES256", "kid": 7}),
    "header-not-an-object": lambda idp: unsigned_token(claims(groups=["eng"]), ["ES256"]),
    "hs256-with-public-key": hs256_with_public_key,
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_unauthenticated_requests_get_401_with_resource_metadata(node, kind) -> None:
    token = BAD_TOKENS[kind](node.idp)
    response = await raw(node, "/servers/tools/mcp", LIST, token)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    metadata_url = f"{node.url}/.well-known/oauth-protected-resource/servers/tools/mcp"
    assert challenge.startswith(f'Bearer resource_metadata="{metadata_url}"')
    assert response.json()["error"]["data"]["reason"] == "unauthenticated"
    async with httpx2.AsyncClient() as http:
        metadata = (await http.get(metadata_url)).json()
    assert metadata["authorization_servers"] == [ISSUER]
    assert metadata["resource"] == f"{node.url}/servers/tools/mcp"


@pytest.mark.parametrize("body, headers, status, code", [
    (b"\x00\xff garbage", {}, 400, -32700),
    (b"[1, 2, 3]", {}, 400, -32600),
    ({"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"}, {}, 400, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": 42}, {}, 400, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": "x"}, {}, 400, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": "no/such"}, {}, 404, -32601),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 7}}, {}, 400, -32602),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"MCP-Protocol-Version": "1999-01-01"},
     400, -32022),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2026-07-28", "capabilities": {}, "clientInfo": {"name": "x",
        "version": "1"}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}},
     {"Mcp-Method": "initialize", "MCP-Protocol-Version": "2026-07-28"}, 404, -32601),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"Mcp-Method": "tools/call"}, 400, -32020),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}},
     {"Mcp-Method": "tools/call", "Mcp-Name": "whoami"}, 400, -32020),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}},
     {"MCP-Protocol-Version": "2026-07-28"}, 400, -32020),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}},
     {"MCP-Protocol-Version": "2025-11-25", "Mcp-Method": "tools/list"}, 400, -32020),
])
async def test_malformed_requests_get_clean_errors(node, body, headers, status, code) -> None:
    token = node.idp.token("alice", ["eng"])
    session = await open_session(node, "/servers/tools/mcp", token)
    response = await raw(node, "/servers/tools/mcp", body, token,
                         {"Mcp-Session-Id": session, **headers})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


async def test_huge_bodies_are_refused_and_the_node_keeps_serving(node) -> None:
    response = await raw(node, "/servers/tools/mcp", b"x" * (128 * 1024), node.idp.token("a", ["eng"]))
    assert response.status_code == 413
    async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), "auto") as client:
        assert text_of(await client.call_tool("echo", {"text": "still here"})) == "echo: still here"


async def test_hot_swap_under_continuous_calls_fails_nothing(node) -> None:
    failures, calls = [], 0
    stop = asyncio.Event()

    async def caller() -> None:
        nonlocal calls
        async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), "auto") as client:
            while not stop.is_set() and calls < 2000:
                try:
                    await client.call_tool("echo", {"text": "x"})
                    calls += 1
                except Exception as exc:
                    failures.append(repr(exc))

    tasks = [asyncio.create_task(caller()) for _ in range(4)]
    for serial in range(2, 6):
        await asyncio.sleep(0.2)
        node.publish(serial)
        assert await node.gateway.poller.poll_once() == "activated"
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert node.gateway.store.active.serial == 5
    assert failures == [] and calls > 20


async def test_operational_endpoints(node) -> None:
    async with httpx2.AsyncClient() as http:
        ready = await http.get(node.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["serial"] == 1
        assert (await http.get(node.url + "/healthz")).status_code == 200
        token = node.idp.token("alice", ["eng"])
        session = await open_session(node, "/servers/tools/mcp", token)
        echoed = await raw(node, "/servers/tools/mcp", LIST, token,
                           {"X-Request-Id": "req-123", "Mcp-Session-Id": session})
        assert echoed.status_code == 200, echoed.text
        # The gateway's own id files the request; the client's is echoed beside it.
        assert echoed.headers["X-Client-Request-Id"] == "req-123"
        assert len(echoed.headers["X-Request-Id"]) == 32 and echoed.headers["X-Request-Id"] != \
            "req-123"
        metrics = (await http.get(node.url + "/metrics")).text
        assert 'gwc_bundle_serial 1.0' in metrics
        assert 'gwc_requests_total{decision="allow",method="tools/list",server="tools",tool=""}' in metrics
        jwks = (await http.get(node.url + "/.well-known/jwks.json")).json()
        assert jwks["keys"][0]["alg"] == "EdDSA"


async def test_a_session_takes_another_2025_version_header_but_not_another_era(node) -> None:
    token = node.idp.token("alice", ["eng"])
    session = await open_session(node, "/servers/tools/mcp", token)
    older = await raw(node, "/servers/tools/mcp", LIST, token, {
        "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-03-26"})
    stateless = await raw(node, "/servers/tools/mcp", LIST, token, {
        "Mcp-Session-Id": session, "MCP-Protocol-Version": "2026-07-28"})
    unknown = await raw(node, "/servers/tools/mcp", LIST, token, {
        "Mcp-Session-Id": session, "MCP-Protocol-Version": "1999-01-01"})
    assert older.status_code == 200  # the session's own version still governs
    assert stateless.status_code == 400 and unknown.status_code == 400
