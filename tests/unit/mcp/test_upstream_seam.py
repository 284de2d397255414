"""The transport seam between the pipeline and its upstreams (``Gateway(connect=...)``): a test puts
its own HTTP pool there and sees exactly what leaves the gateway, or makes an upstream fail,
without a process or a real network fault."""
from __future__ import annotations

import types

import aiohttp
import jwt
import pytest

from gwc.runtime.bundle.format import Server
from gwc.runtime.upstream.isolation import http_pool
from tests.support.e2e import start_node, write_governed_registry
from tests.unit.mcp.test_pipeline import call_tool, last_record


class Recorder:
    """A ``connect`` that opens the real pool, and keeps the headers of every request it sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []

    def __call__(self, server: Server) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()

        async def on_start(session: aiohttp.ClientSession, context: types.SimpleNamespace,
                           params: aiohttp.TraceRequestStartParams) -> None:
            self.sent.append((str(params.url), dict(params.headers)))

        trace.on_request_start.append(on_start)
        pool = http_pool(server)
        pool.trace_configs.append(trace)
        trace.freeze()
        return pool


def refusing(server: Server) -> aiohttp.ClientSession:
    """A ``connect`` whose pool reaches nothing: every connection is refused."""
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path="/nonexistent/gwc-seam.sock"))


@pytest.fixture
async def upstream_url(aiohttp_server) -> str:
    from tests.support.fake_upstream import FakeUpstream
    server = await aiohttp_server(FakeUpstream().app(), host="127.0.0.1")
    return str(server.make_url("/mcp"))


async def test_the_upstream_gets_the_gateways_token_never_the_callers(
        tmp_path, aiohttp_server, signing_key, upstream_url) -> None:
    recorder = Recorder()
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_governed_registry(root, jwks, upstream_url),
                            connect=recorder)
    caller_token = node.idp.token("alice", ["eng"])
    answer = await call_tool(node, "ops", "whoami", {}, caller_token)
    assert answer["status"] == 200
    (url, headers), = recorder.sent
    assert url == upstream_url
    sent = headers["Authorization"].removeprefix("Bearer ")
    assert sent != caller_token and caller_token not in str(headers)
    claims = jwt.decode(sent, options={"verify_signature": False})
    assert claims["iss"] == node.url and claims["sub"] == "alice"


async def test_an_upstream_that_cannot_be_reached_is_answered_and_recorded_as_failed(
        tmp_path, aiohttp_server, signing_key, upstream_url) -> None:
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_governed_registry(root, jwks, upstream_url),
                            connect=refusing)
    answer = await call_tool(node, "ops", "whoami", {}, node.idp.token("alice", ["eng"]))
    assert answer["status"] == 502 and answer["error"]["data"]["reason"] == "upstream_unavailable"
    record = last_record(node)
    assert (record["decision"], record["outcome"], record["error"]) == (
        "allow", "failed", "upstream_unavailable")
