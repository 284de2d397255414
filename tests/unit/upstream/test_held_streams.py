"""A GET stream held for a client: what arrives is kept for the client's stream to adopt, only for
the upstream session it was opened in, and closed when nobody adopts it in time."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from gwc.runtime.upstream import held_streams
from gwc.runtime.upstream.held_streams import HeldStreams

CLOSED = web.AppKey("closed", asyncio.Event)


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        await response.write(f"data: {i}\n\n".encode())
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.02)
    request.app[CLOSED].set()
    return response


@pytest.fixture
async def upstream(aiohttp_server):
    app = web.Application()
    app[CLOSED] = asyncio.Event()
    app.router.add_get("/mcp", events)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        yield http, str(server.make_url("/mcp")), app[CLOSED]


async def test_what_arrived_while_held_comes_first(upstream) -> None:
    http, url, closed = upstream
    held = HeldStreams()
    held.hold("key", await http.get(url), "session-1")
    await asyncio.sleep(0.1)  # the events arrive while nobody reads
    stream = held.adopt("key", "session-1")
    assert stream is not None and held.adopt("key", "session-1") is None  # adopted once
    got = b""
    async for chunk in stream.chunks():
        got += chunk
        if got.count(b"\n\n") == 3:
            break
    assert got == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    stream.close()
    await asyncio.wait_for(closed.wait(), 2)


async def test_a_stream_of_a_forgotten_session_is_not_adopted(upstream) -> None:
    http, url, closed = upstream
    held = HeldStreams()
    held.hold("key", await http.get(url), "session-1")
    assert held.adopt("key", "session-2") is None  # the upstream forgot session-1
    await asyncio.wait_for(closed.wait(), 2)


async def test_an_unadopted_stream_is_closed_in_time(upstream, monkeypatch) -> None:
    http, url, closed = upstream
    monkeypatch.setattr(held_streams, "HOLD_S", 0.2)
    held = HeldStreams()
    held.hold("key", await http.get(url), "session-1")
    await asyncio.wait_for(closed.wait(), 2)
    assert held.adopt("key", "session-1") is None
