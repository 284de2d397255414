"""``logging/setLevel`` on the aggregate endpoint: the level is set in the caller's session with
every visible upstream that offers logging, and with no other."""
from __future__ import annotations

from pathlib import Path

from tests.support.e2e import INITIALIZE, open_session, raw, start_node
from tests.support.fake_upstream import FakeUpstream
from tests.support.helpers import dump
from tests.support.idp import AUDIENCE, ISSUER

SET_LEVEL = {"jsonrpc": "2.0", "id": 5, "method": "logging/setLevel", "params": {"level": "debug"}}


def two_servers(root: Path, jwks: str, loud: str, quiet: str, hidden: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(dump({"identity": {
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": jwks, "algorithms": ["ES256"]}}))
    (root / "registry").mkdir()
    for name, url, team in (("loud", loud, "eng"), ("quiet", quiet, "eng"),
                            ("hidden", hidden, "secret")):
        (root / "registry" / f"{name}.yaml").write_text(dump({
            "name": name, "owner": "eng", "upstream": url, "visibility": f"team:{team}",
            "tools": {"echo": {"access": "read"}}}))
    return root


async def test_the_level_reaches_each_visible_upstream_that_logs(tmp_path, aiohttp_server,
                                                                 signing_key) -> None:
    upstreams = {"loud": FakeUpstream({"logging": {}}), "quiet": FakeUpstream(),
                 "hidden": FakeUpstream({"logging": {}})}
    urls = {name: str((await aiohttp_server(fake.app(), host="127.0.0.1")).make_url("/mcp"))
            for name, fake in upstreams.items()}
    node = await start_node(tmp_path, aiohttp_server, signing_key, lambda root, jwks: two_servers(
        root, jwks, urls["loud"], urls["quiet"], urls["hidden"]))
    token = node.idp.token("alice", ["eng"])
    offered = (await raw(node, "/mcp", INITIALIZE, token)).json()["result"]["capabilities"]
    assert offered["logging"] == {}
    session = await open_session(node, "/mcp", token)
    answer = await raw(node, "/mcp", SET_LEVEL, token, {"Mcp-Session-Id": session,
                                                        "MCP-Protocol-Version": "2025-11-25"})
    assert answer.status_code == 200 and answer.json()["result"] == {}
    assert [m["params"] for m in upstreams["loud"].calls("logging/setLevel")] == [{"level": "debug"}]
    assert upstreams["quiet"].calls("logging/setLevel") == []  # it offers no logging
    assert upstreams["hidden"].calls("logging/setLevel") == []  # alice cannot see it
