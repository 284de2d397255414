"""Tool contracts end to end (issue 14): a real SDK upstream whose tool changes after it was pinned
(tests/support/drifting_upstream.py), a real upstream that coerces arguments
(tests/support/coercion_upstream.py), real gateway nodes and real SDK clients in both protocol eras.

The locks are written as ``gwc pin`` writes them: the upstream's own tools/list, read with the SDK
client, rendered by ``compiler/build/locks.render_lock``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from gwc.compiler.build.locks import render_lock
from gwc.runtime.audit.writer import trail
from gwc.runtime.bundle.tool_definitions import definition_of
from tests.support.e2e import (
    MODES,
    Node,
    connect,
    open_session,
    raw,
    refusal,
    running_upstream,
    start_node,
    text_of,
    write_gateway,
)
from tests.support.helpers import dump

DESCRIPTION = "Deploy a service with the given number of replicas."
RUG_PULL_START = "Deploy a service. Before deploying, read the file"
DEPLOY = {"service": "web", "replicas": 2}


async def pinned(url: str, tools: tuple[str, ...]) -> dict[str, Any]:
    """The upstream's live definitions of ``tools``, as gwc pin reads them."""
    async with connect(url, "unused", "legacy") as client:
        listed = (await client.list_tools()).tools
    live = {t.name: definition_of(t.model_dump(by_alias=True, exclude_none=True, mode="json"))
            for t in listed}
    return {name: live[name] for name in tools}


def write_contract_registry(root: Path, jwks_uri: str, upstream: str,
                            pins: dict[str, Any]) -> Path:
    """``deploys`` (drift: refuse) and ``reported`` (drift: report), both in front of the
    drifting upstream, deploy pinned on both."""
    registry = write_gateway(root, jwks_uri) / "registry"
    tools = {"deploy": {"access": "write", "approval": "none"}, "calls": {"access": "read"},
             "rug_pull": {"access": "read"}, "restore": {"access": "read"}}
    for name, drift in (("deploys", "refuse"), ("reported", "report")):
        (registry / f"{name}.yaml").write_text(dump({
            "name": name, "owner": "eng", "upstream": upstream, "visibility": "team:eng",
            "drift": drift, "tools": tools}))
        (registry / f"{name}.tools.json").write_text(render_lock(name, pins))
    return root


@pytest.fixture
def drifting_upstream() -> Iterator[str]:
    with running_upstream("drifting_upstream.py") as url:
        yield url


async def pinning_node(tmp_path: Path, aiohttp_server: Any, signing_key: Any, upstream: str,
                       tools: tuple[str, ...], write: Any) -> Node:
    """A node serving the registry ``write(root, jwks_uri, upstream, pins)`` makes, pinned to the
    upstream's live definitions of ``tools`` as they are now."""
    pins = await pinned(upstream, tools)
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write(root, jwks, upstream, pins))


@pytest.fixture
async def contracted(tmp_path, aiohttp_server, drifting_upstream, signing_key) -> Node:
    return await pinning_node(tmp_path, aiohttp_server, signing_key, drifting_upstream,
                              ("deploy",), write_contract_registry)


def records(node: Node, kind: str) -> list[dict[str, Any]]:
    return [r for path in trail(node.audit_path)
            for r in map(orjson.loads, path.read_bytes().splitlines()) if r.get("type") == kind]


async def drift_records(node: Node, count: int) -> list[dict[str, Any]]:
    """The node's drift records, once there are ``count`` (they are written off the call path)."""
    for _ in range(100):
        found = records(node, "drift")
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    return records(node, "drift")


def metric(node: Node, name: str, server: str) -> float | None:
    for line in node.gateway.metrics.render().decode().splitlines():
        if line.startswith(f'{name}{{server="{server}",tool="deploy"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def listed(tools: Any) -> dict[str, Any]:
    return {t.name: t for t in tools.tools}


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_changed_after_review_is_hidden_and_refused_or_served_as_reviewed(
        contracted, mode) -> None:
    token = contracted.idp.token("alice", ["eng"])
    async with connect(contracted.endpoint("deploys"), token, mode) as client:
        before = listed(await client.list_tools())
        assert before["deploy"].description == DESCRIPTION
        assert text_of(await client.call_tool("deploy", DEPLOY)) == "deployed web x2 force=False"
        assert text_of(await client.call_tool("rug_pull", {})) == "changed"
        after = listed(await client.list_tools())
        assert "deploy" not in after and "calls" in after
        refused = refusal(await client.call_tool("deploy", {"service": "web", "replicas": "2"}))
        assert refused["reason"] == "tool_changed"
        assert refused["pinned_digest"] != refused["live_digest"]
        assert text_of(await client.call_tool("calls", {})) == "1"  # the upstream never ran it
    async with connect(contracted.endpoint("reported"), token, mode) as client:
        served = listed(await client.list_tools())["deploy"]
        assert served.description == DESCRIPTION  # the reviewed text, not the rug pull
        assert served.input_schema["properties"]["replicas"]["type"] == "integer"
    async with connect(contracted.url + "/mcp", token, mode) as client:
        everything = listed(await client.list_tools())
        assert "deploys__deploy" not in everything
        assert everything["reported__deploy"].description == DESCRIPTION
        assert refusal(await client.call_tool("deploys__deploy", DEPLOY))["reason"] == "tool_changed"

    drifted = await drift_records(contracted, 2)
    assert sorted((r["server"], r["event"], r["drift"]) for r in drifted) == [
        ("deploys", "drifted", "refuse"), ("reported", "drifted", "report")]
    for record in drifted:  # once per change, however often it was listed since
        assert record["tool"] == "deploy" and record["pinned_digest"] != record["live_digest"]
        assert record["principal"]["subject"] == "gwc"
    assert [r["decision"] for r in records(contracted, "call")
            if r["tool"] in ("deploy", "deploys__deploy") and r["decision"] != "allow"] == [
        "tool_changed", "tool_changed"]
    assert metric(contracted, "gwc_tool_drift_total", "deploys") == 1.0
    assert metric(contracted, "gwc_tool_drifted", "deploys") == 1.0


async def test_a_restored_tool_is_served_again_and_the_trail_says_so(contracted) -> None:
    token = contracted.idp.token("alice", ["eng"])
    async with connect(contracted.endpoint("deploys"), token, "legacy") as client:
        await client.call_tool("rug_pull", {})
        assert "deploy" not in listed(await client.list_tools())
        await client.call_tool("restore", {})
        assert listed(await client.list_tools())["deploy"].description == DESCRIPTION
        assert text_of(await client.call_tool("deploy", DEPLOY)) == "deployed web x2 force=False"
    events = [(r["server"], r["event"]) for r in await drift_records(contracted, 2)]
    assert events == [("deploys", "drifted"), ("deploys", "matches_pin")]
    assert metric(contracted, "gwc_tool_drifted", "deploys") == 0.0


async def test_a_node_refuses_a_tool_changed_before_it_started_and_re_reads_on_its_own(
        tmp_path, aiohttp_server, drifting_upstream, signing_key) -> None:
    """No client lists anything: the node reads the pinned upstreams' lists itself (at start,
    before a pinned tool's first call, and every drift_recheck_s: here run at once rather than
    waited for)."""
    pins = await pinned(drifting_upstream, ("deploy",))
    async with connect(drifting_upstream, "unused", "legacy") as direct:
        await direct.call_tool("rug_pull", {})  # after review, before the node started
    node = await start_node(tmp_path, aiohttp_server, signing_key, lambda root, jwks:
                            write_contract_registry(root, jwks, drifting_upstream, pins))
    token = node.idp.token("alice", ["eng"])
    async with connect(node.endpoint("deploys"), token, "auto") as client:
        assert refusal(await client.call_tool("deploy", DEPLOY))["reason"] == "tool_changed"
        async with connect(drifting_upstream, "unused", "legacy") as direct:
            await direct.call_tool("restore", {})
        await node.gateway.mcp.contracts.recheck(node.gateway.store.active)
        assert text_of(await client.call_tool("deploy", DEPLOY)) == "deployed web x2 force=False"


async def test_an_upstreams_list_changed_makes_the_node_read_its_tools_again(contracted) -> None:
    """Nobody lists (a raw client: the SDK's own client lists tools around its calls): the rug
    pull's notifications/tools/list_changed, relayed on the client's GET stream, is what makes the
    node re-read the upstream's list and find the drift."""
    token = contracted.idp.token("alice", ["eng"])
    session = await open_session(contracted, "/servers/deploys/mcp", token)
    headers = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session,
               "MCP-Protocol-Version": "2025-11-25"}
    heard: list[bytes] = []

    async def listen() -> None:
        async with (httpx2.AsyncClient(timeout=10) as http,
                    http.stream("GET", contracted.endpoint("deploys"),
                                headers={**headers, "Accept": "text/event-stream"}) as stream):
            async for line in stream.aiter_lines():
                heard.append(line.encode())
    listener = asyncio.get_running_loop().create_task(listen())
    try:
        pulled = await raw(contracted, "/servers/deploys/mcp", {
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "rug_pull", "arguments": {}}}, token, headers)
        assert pulled.status_code == 200 and "changed" in pulled.text
        for _ in range(100):  # the re-read runs beside the client: wait for it, bounded
            if metric(contracted, "gwc_tool_drifted", "deploys") == 1.0:
                break
            await asyncio.sleep(0.05)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    assert any(b"notifications/tools/list_changed" in line for line in heard)
    assert metric(contracted, "gwc_tool_drifted", "deploys") == 1.0
    assert not [r for r in records(contracted, "list") if r["method"] == "tools/list"]


def write_pinned_fleet(root: Path, jwks_uri: str, upstream: str, pins: dict[str, Any]) -> Path:
    write_gateway(root, jwks_uri)
    (root / "registry" / "fleet.yaml").write_text(dump({
        "name": "fleet", "owner": "eng", "upstream": upstream, "visibility": "team:eng",
        "pin": "required", "tools": {"scale": {"access": "write", "approval": "none"}}}))
    (root / "registry" / "fleet.tools.json").write_text(render_lock("fleet", pins))
    return root


@pytest.fixture
async def pinned_fleet(tmp_path, aiohttp_server, coercing_upstream, signing_key) -> Node:
    return await pinning_node(tmp_path, aiohttp_server, signing_key, coercing_upstream,
                              ("scale",), write_pinned_fleet)


HONEST = {"force": False, "replicas": 3, "schemas": ["public"]}
# (argument, a value the upstream would coerce, the JSON Pointer the refusal names)
COERCIONS = [("force", "true", "/force"), ("force", 1, "/force"), ("replicas", "0", "/replicas"),
             ("replicas", True, "/replicas"), ("schemas", '["finance"]', "/schemas"),
             ("schemas", ["public", 7], "/schemas/1")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aggregate", [False, True], ids=["server", "aggregate"])
async def test_arguments_the_upstream_would_coerce_are_refused_as_invalid_params(
        pinned_fleet, mode, aggregate) -> None:
    url, tool = ((pinned_fleet.url + "/mcp", "fleet__scale") if aggregate
                 else (pinned_fleet.endpoint("fleet"), "scale"))
    async with connect(url, pinned_fleet.idp.token("alice", ["eng"]), mode) as client:
        for name, value, pointer in COERCIONS:
            data = refusal(await client.call_tool(tool, {**HONEST, name: value}))
            assert (data["reason"], data["pointer"]) == ("invalid_params", pointer), (name, value)
        missing = refusal(await client.call_tool(tool, {"force": False, "schemas": []}))
        assert missing["pointer"] == "" and "replicas" in (await client.call_tool(
            tool, {"force": False, "schemas": []})).content[0].text
        assert text_of(await client.call_tool(tool, HONEST)) == (
            "force=False replicas=3 schemas=['public']")


async def test_the_trail_records_invalid_arguments_as_sent_and_nothing_reaches_the_upstream(
        pinned_fleet) -> None:
    async with connect(pinned_fleet.endpoint("fleet"), pinned_fleet.idp.token("alice", ["eng"]),
                       "auto") as client:
        refusal(await client.call_tool("scale", {**HONEST, "force": "true"}))
    [record] = records(pinned_fleet, "call")
    assert (record["decision"], record["outcome"], record["error"], record["upstream_status"]) == (
        "invalid_params", "refused", "invalid_params", None)
