"""Each client session has upstream sessions of its own, even two a caller opens in the same
second: what an upstream keeps per session (its GET stream, subscriptions, a log level, the
requests it waits on) belongs to one client."""
from __future__ import annotations

from tests.support.e2e import open_session, raw, start_node
from tests.support.fake_upstream import FakeUpstream
from tests.unit.mcp.test_aggregate_logging import two_servers

CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {}}}


async def test_two_sessions_opened_at_once_get_two_upstream_sessions(tmp_path, aiohttp_server,
                                                                      signing_key) -> None:
    fake = FakeUpstream()
    url = str((await aiohttp_server(fake.app(), host="127.0.0.1")).make_url("/mcp"))
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: two_servers(root, jwks, url, url, url))
    token = node.idp.token("alice", ["eng"])
    sessions = [await open_session(node, "/servers/loud/mcp", token) for _ in range(2)]
    for session in sessions:  # the same caller, version and capabilities, within a second
        for _ in range(2):
            answer = await raw(node, "/servers/loud/mcp", CALL, token, {
                "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"})
            assert answer.status_code == 200, answer.text
    opened = [m for m in fake.requests if m.get("method") == "initialize"
              and m["params"]["capabilities"] == {}]
    probes = 1  # the gateway's own session, which learnt the upstream's capabilities
    assert len(opened) == probes + 2
