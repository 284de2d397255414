"""A refused request leaves nothing behind for the cycle collector: the node freezes the objects
alive when it accepts a bundle (gc.freeze), so a cycle alive at that moment is never collected and
keeps whatever it holds, a replaced bundle included, for the life of the process."""
from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from aiohttp import web

from gwc.runtime.mcp.endpoint import McpEndpoint
from tests.support.e2e import (  # noqa: F401
    echo_in_session,
    node,
    raw,
    upstream_url,
)


class Marker:
    """Rides on the request: alive as long as the request is."""


MARKER = web.RequestKey("test-marker", Marker)


@pytest.mark.parametrize("name, arguments, answer", [
    ("no_such_tool", {}, "error"),  # refused as a JSON-RPC error
    ("write_thing", {"env": "production"}, "result"),  # denied by policy: a tool result
])
async def test_a_refused_call_is_freed_by_reference_counting_alone(
        node, monkeypatch, name, arguments, answer) -> None:  # noqa: F811
    calls: list[weakref.ref] = []
    handle = McpEndpoint.call

    async def watched(self, call, version):
        marker = Marker()
        call.request[MARKER] = marker
        calls.append(weakref.ref(marker))
        return await handle(self, call, version)
    monkeypatch.setattr(McpEndpoint, "call", watched)
    token = node.idp.token("alice", ["eng"])
    call, headers = await echo_in_session(node, token)
    refused = {**call, "params": {"name": name, "arguments": arguments}}
    gc.collect()
    gc.disable()
    try:
        response = await raw(node, "/servers/tools/mcp", refused, token, headers)
        assert response.status_code == 200 and answer in response.json(), response.text
        if answer == "result":
            assert response.json()["result"]["isError"] is True
        for _ in range(50):  # the connection's close reaches the node
            if calls[-1]() is None:
                break
            await asyncio.sleep(0.01)
        assert calls[-1]() is None, gc.get_referrers(calls[-1]())
    finally:
        gc.enable()
