"""Every resource a node opens at start is closed at shutdown: here, the HTTP bundle source's session."""
from __future__ import annotations

from aiohttp import web

from gwc.compiler.build.bundle import build
from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.build.registry import load_registry
from gwc.runtime.app import Gateway
from gwc.runtime.bundle.source import HttpSource
from gwc.runtime.config import Config
from gwc.runtime.mcp.trail import AuditTarget


async def test_the_http_bundle_source_is_closed_at_cleanup(example_root, signing_key, tmp_path,
                                                           aiohttp_server):
    envelope = build(load_registry(example_root), signing_key[2], tmp_path / "out", 1, "r1").envelope

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=envelope)

    served = web.Application()
    served.router.add_get("/bundle.json", serve)
    bundles = await aiohttp_server(served, host="127.0.0.1")
    gw_key_path, _, gw_key = generate_keypair(tmp_path / "gateway-key")
    config = Config(bundle=str(bundles.make_url("/bundle.json")), trust=(str(signing_key[1]),),
                    listen_host="127.0.0.1", listen_port=1, signing_key=gw_key_path,
                    public_url="http://127.0.0.1:1",
                    poll_interval_s=3600, state_dir=tmp_path / "state",
                    audit=AuditTarget("file", tmp_path / "audit" / "audit.jsonl"))
    gateway = Gateway(config, gw_key)
    source = gateway.poller._source
    assert isinstance(source, HttpSource)

    node = await aiohttp_server(gateway.app(), host="127.0.0.1")
    assert gateway.store.active is not None and gateway.store.active.serial == 1  # fetched over HTTP
    assert source._session is not None and not source._session.closed
    await node.close()  # runs the app's cleanup
    assert source._session.closed
