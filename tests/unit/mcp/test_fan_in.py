"""The aggregate ``/mcp`` GET stream fans in what every upstream the caller sees sends outside any
call, screened by entitlement: nothing from a server the caller cannot see, no tools
``list_changed`` from a server where it sees no tool, resource URIs namespaced, requests sealed."""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2
import orjson

from gwc.runtime.mcp.fan_in import screen
from gwc.runtime.policy.decide import Principal
from tests.support.e2e import open_session, start_node
from tests.support.fake_upstream import FakeUpstream
from tests.support.helpers import dump
from tests.support.idp import AUDIENCE, ISSUER

SERVERS = {"loud": "eng", "mute": "eng", "hidden": "secret"}


def outside(server: str) -> list[dict]:
    """What each fake upstream sends on its own stream: its tools changed, a resource changed,
    and a question for the user."""
    return [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
            {"jsonrpc": "2.0", "method": "notifications/resources/updated",
             "params": {"uri": f"file:///{server}.txt"}},
            {"jsonrpc": "2.0", "id": 9, "method": "elicitation/create",
             "params": {"message": f"{server} asks", "requestedSchema": {"type": "object"}}}]


def registry(root: Path, jwks: str, urls: dict[str, str]) -> Path:
    """Three servers: alice (eng) sees loud and its tool, sees mute but none of its tools, and
    does not see hidden."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(dump({"identity": {
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": jwks, "algorithms": ["ES256"]}}))
    (root / "registry").mkdir()
    for name, team in SERVERS.items():
        (root / "registry" / f"{name}.yaml").write_text(dump({
            "name": name, "owner": "eng", "upstream": urls[name], "visibility": f"team:{team}",
            "tools": {"echo": {"access": "read"}}}))
    (root / "policies" / "eng").mkdir(parents=True)
    (root / "policies" / "eng" / "mute.yaml").write_text(dump([  # its tools are ops' alone
        {"id": "ops-mute", "subject": {"team": "ops"}, "resource": {"server": "mute"},
         "action": "read"}]))
    return root


async def stream_messages(url: str, headers: dict, quiet_s: float = 0.8) -> list[dict]:
    """The JSON-RPC messages of a GET stream until it has been quiet for ``quiet_s``."""
    found: list[dict] = []

    async def read() -> None:
        async with (httpx2.AsyncClient(timeout=10) as http,
                    http.stream("GET", url, headers=headers) as response):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    found.append(orjson.loads(line[5:]))
    reader = asyncio.get_running_loop().create_task(read())
    seen = -1
    while seen != len(found):
        seen = len(found)
        await asyncio.sleep(quiet_s)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    return found


async def test_the_aggregate_stream_hears_only_what_the_caller_may(tmp_path, aiohttp_server,
                                                                    signing_key) -> None:
    upstreams = {name: FakeUpstream(outside=outside(name)) for name in SERVERS}
    urls = {name: str((await aiohttp_server(fake.app(), host="127.0.0.1")).make_url("/mcp"))
            for name, fake in upstreams.items()}
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: registry(root, jwks, urls))
    token = node.idp.token("alice", ["eng"])
    session = await open_session(node, "/mcp", token)
    messages = await stream_messages(node.url + "/mcp", {
        "Authorization": f"Bearer {token}", "Accept": "text/event-stream",
        "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"})
    by_kind = sorted((m["method"], m.get("params", {}).get("uri", m.get("params", {}).get(
        "message", ""))) for m in messages)
    assert by_kind == [
        ("elicitation/create", "loud asks"), ("elicitation/create", "mute asks"),
        ("notifications/resources/updated", "gwc://loud/file:///loud.txt"),
        ("notifications/resources/updated", "gwc://mute/file:///mute.txt"),
        ("notifications/tools/list_changed", ""),  # loud's: mute shows alice no tool
    ]
    asked = [m for m in messages if m["method"] == "elicitation/create"]
    assert all(isinstance(m["id"], str) and m["id"] != "9" for m in asked)  # sealed
    opened = [u for u in upstreams.values() if u.calls("initialize")]
    assert upstreams["hidden"] not in opened and len(opened) == 2


async def test_a_server_hidden_by_a_new_bundle_goes_quiet(tmp_path, aiohttp_server,
                                                          signing_key) -> None:
    node = await start_node(tmp_path, aiohttp_server, signing_key, lambda root, jwks: registry(
        root, jwks, {name: "http://127.0.0.1:9/mcp" for name in SERVERS}))
    gateway = node.gateway
    alice = Principal(subject="alice", groups=frozenset({"eng"}))
    screened = screen("loud", alice, lambda: gateway.store.active, gateway.mcp._catalog,
                      aggregate=False)
    changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    updated = {"jsonrpc": "2.0", "method": "notifications/resources/updated",
               "params": {"uri": "file:///a"}}
    assert screened(changed) == changed and screened(updated) == updated  # as it was
    manifest = node.registry_root / "registry" / "loud.yaml"
    manifest.write_text(manifest.read_text().replace("team:eng", "team:ops"))
    node.publish(2)
    assert await gateway.poller.poll_once() == "activated"
    assert screened(changed) is None and screened(updated) is None  # alice no longer sees loud
