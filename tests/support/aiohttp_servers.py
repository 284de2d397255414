"""``aiohttp_server`` as production runs a node: aiohttp's test server cancels a handler when its
client goes away (``handler_cancellation=True``), ``web.run_app`` (which ``gwc-runtime`` uses)
does not. Tests that let a client go away mid-request must see what a real node does, so every
server a test starts runs with aiohttp's production default."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer


class ProductionServer(TestServer):
    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest_asyncio.fixture
async def aiohttp_server() -> AsyncIterator[Any]:
    servers: list[ProductionServer] = []

    async def start(app: web.Application, *, host: str = "127.0.0.1", port: int | None = None,
                    **kwargs: Any) -> ProductionServer:
        server = ProductionServer(app, host=host, port=port)
        await server.start_server(**kwargs)
        servers.append(server)
        return server

    yield start
    while servers:
        await servers.pop().close()
