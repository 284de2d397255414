"""A node in the overlap of a signing-key rotation publishes the accepted key beside its own."""
from __future__ import annotations

import httpx2

from gwc.compiler.build.bundle import build
from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.build.registry import load_registry
from gwc.runtime.app import Gateway
from gwc.runtime.bundle.envelope import jwk_kid
from gwc.runtime.config import Config
from gwc.runtime.mcp.trail import AuditTarget


async def test_the_jwk_set_holds_the_nodes_key_then_the_accepted_one(example_root, signing_key,
                                                                     tmp_path, aiohttp_server):
    build(load_registry(example_root), signing_key[2], tmp_path / "out", 1, "r1")
    key_path, _, key = generate_keypair(tmp_path / "gateway")
    _, next_pub, next_key = generate_keypair(tmp_path / "gateway-next")
    config = Config(bundle=str(tmp_path / "out" / "bundle.json"), trust=(str(signing_key[1]),),
                    listen_host="127.0.0.1", listen_port=1, signing_key=key_path,
                    public_url="http://127.0.0.1:1", accept_keys=(next_pub,),
                    audit=AuditTarget("none"))
    node = await aiohttp_server(Gateway(config, key).app(), host="127.0.0.1")
    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(str(node.make_url("/.well-known/jwks.json")))).json()
    assert [jwk["kid"] for jwk in jwks["keys"]] == [jwk_kid(key.public_key()),
                                                     jwk_kid(next_key.public_key())]
    await node.close()
