"""Fleet behaviour with real processes and sockets: any node serves any request of a legacy session
(sealed ids, no sticky sessions, no shared store), the gateway's upstream sessions are re-created
when an upstream forgets them, one hanging or failing upstream never hurts a healthy one, and one
caller whose input makes an upstream fail never opens its breaker for the others."""
from __future__ import annotations

import asyncio
import base64
import itertools
import os
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx2
import pytest
from aiohttp import web
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from gwc.compiler.build.keys import generate_keypair
from tests.support.e2e import (
    INITIALIZE,
    LIST,
    MODES,
    Node,
    connect,
    free_port,
    start_node,
    start_upstream,
    text_of,
    wait_port,
    write_test_registry,
)
from tests.support.helpers import dump
from tests.support.upstream_server import FAIL_MARKER

RUNTIME = Path(sys.executable).parent / "gwc-runtime"


def session_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def start_runtime(tmp_path: Path, node: Node, trust: Path, session_keys: str) -> tuple[subprocess.Popen, int]:
    """A gwc-runtime process serving the same bundle as ``node``, with its own signing key."""
    port = free_port()
    key_path, _, _ = generate_keypair(tmp_path / f"node-{port}")
    env = {**os.environ, "GWC_SESSION_KEYS": session_keys, "GWC_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([str(RUNTIME), "--bundle", str(node.store_dir / "bundle.json"),
                             "--trust", str(trust), "--listen", f"127.0.0.1:{port}",
                             "--signing-key", str(key_path),
                             "--public-url", f"http://127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, "gwc-runtime")
    return proc, port


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next node in turn, as a plain load balancer would."""

    def __init__(self, ports: list[int]) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._next = itertools.cycle(ports)
        self.posts: Counter[int] = Counter()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = next(self._next)
        request.url = request.url.copy_with(port=port)
        if request.method == "POST":
            self.posts[port] += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def fleet(node, tmp_path, signing_key):
    """Two gwc-runtime processes sharing one session key, behind nothing but round robin."""
    key = session_key()
    procs = [start_runtime(tmp_path, node, signing_key[1], key) for _ in range(2)]
    yield node, [port for _, port in procs], key
    for proc, _ in procs:
        proc.terminate()
        proc.wait(10)


async def test_a_legacy_session_works_across_two_nodes_without_stickiness(fleet) -> None:
    node, ports, _ = fleet
    balancer = RoundRobin(ports)
    token = node.idp.token("alice", ["eng"])
    async with httpx2.AsyncClient(transport=balancer, timeout=httpx2.Timeout(10.0, read=30.0),
                                  headers={"Authorization": f"Bearer {token}"}) as http:
        url = f"http://127.0.0.1:{ports[0]}/mcp"
        async with Client(streamable_http_client(url, http_client=http), mode="legacy",
                          read_timeout_seconds=20) as client:
            assert "tools__echo" in {t.name for t in (await client.list_tools()).tools}
            for i in range(6):
                assert text_of(await client.call_tool("tools__echo", {"text": str(i)})) == f"echo: {i}"
            assert text_of(await client.call_tool("tools__slow_count", {"n": 2})) == "counted 2"
    assert min(balancer.posts[p] for p in ports) >= 4  # both nodes served the one session


async def post(port: int, body: dict, token: str, session: str | None = None,
               path: str = "/mcp") -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    if session:
        headers["Mcp-Session-Id"] = session
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(f"http://127.0.0.1:{port}{path}", json=body, headers=headers)


async def test_a_session_id_is_bound_to_its_subject_endpoint_and_fleet(fleet, tmp_path,
                                                                       signing_key) -> None:
    node, ports, _ = fleet
    alice, bob = node.idp.token("alice", ["eng"]), node.idp.token("bob", ["eng"])
    session = (await post(ports[0], INITIALIZE, alice)).headers["Mcp-Session-Id"]
    assert (await post(ports[1], LIST, alice, session)).status_code == 200
    stolen = await post(ports[1], LIST, bob, session)
    assert stolen.status_code == 404
    assert stolen.json()["error"]["data"]["reason"] == "session_invalid"
    assert (await post(ports[1], LIST, alice, session[:-4] + "AAAA")).status_code == 404
    assert (await post(ports[1], LIST, alice, session, "/servers/tools/mcp")).status_code == 404
    stranger, port = start_runtime(tmp_path, node, signing_key[1], session_key())
    try:  # a node of another fleet (another key) cannot open the session
        assert (await post(port, LIST, alice, session)).status_code == 404
    finally:
        stranger.terminate()
        stranger.wait(10)


async def test_upstream_sessions_are_reopened_when_an_upstream_forgets_them(
        tmp_path, aiohttp_server, signing_key) -> None:
    port = free_port()
    upstream = start_upstream(port)
    url = f"http://127.0.0.1:{port}/mcp"
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, url))
    try:
        async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), "legacy") as client:
            assert text_of(await client.call_tool("echo", {"text": "a"})) == "echo: a"
            upstream.terminate()
            upstream.wait(10)
            upstream = start_upstream(port)  # a fresh process: every upstream session is gone
            assert text_of(await client.call_tool("echo", {"text": "b"})) == "echo: b"
    finally:
        upstream.terminate()
        upstream.wait(10)
    sessions = node.gateway.metrics.registry.get_sample_value
    assert sessions("gwc_upstream_sessions_total", {"server": "tools", "reason": "expired"}) == 1


def write_isolation_registry(root: Path, jwks_uri: str, healthy: str, hanging: str,
                             failing: str) -> Path:
    write_test_registry(root, jwks_uri, healthy)
    for name, url in (("hanging", hanging), ("failing", failing)):
        (root / "registry" / f"{name}.yaml").write_text(dump({
            "name": name, "owner": "eng", "upstream": url, "visibility": "team:eng",
            "timeout_ms": 300, "max_concurrency": 2, "tools": {"echo": {"access": "read"}}}))
    return root


@pytest.mark.parametrize("mode", MODES)
async def test_a_hanging_and_a_failing_upstream_never_hurt_a_healthy_one(
        tmp_path, aiohttp_server, signing_key, upstream_url, mode) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 30)
        return web.Response(status=503)

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")
    servers = {}
    for name, handler in (("hanging", hang), ("failing", fail)):
        app = web.Application()
        app.router.add_post("/mcp", handler)
        servers[name] = str((await aiohttp_server(app, host="127.0.0.1")).make_url("/mcp"))
    node = await start_node(tmp_path, aiohttp_server, signing_key, lambda root, jwks:
                            write_isolation_registry(root, jwks, upstream_url, servers["hanging"],
                                                     servers["failing"]))
    token = node.idp.token("alice", ["eng"])
    healthy_failures: list[str] = []
    bad_reasons: Counter[str] = Counter()

    async def healthy_calls() -> int:
        done = 0
        async with connect(node.endpoint(), token, mode) as client:
            for i in range(25):
                try:
                    assert text_of(await client.call_tool("echo", {"text": str(i)})) == f"echo: {i}"
                    done += 1
                except Exception as exc:
                    healthy_failures.append(repr(exc))
        return done

    async def bad_calls(server: str, user: str) -> None:  # several callers: a sick upstream
        async with connect(node.endpoint(server), node.idp.token(user, ["eng"]), mode) as client:
            for _ in range(12):
                with pytest.raises(MCPError) as failed:
                    await client.call_tool("echo", {"text": "x"})
                bad_reasons[failed.value.data["reason"]] += 1

    try:
        results = await asyncio.wait_for(asyncio.gather(
            *(healthy_calls() for _ in range(4)),
            *(bad_calls(s, f"{s}-{i}") for s in ("hanging", "failing") for i in range(3))), 60)
    finally:
        release.set()
    assert healthy_failures == [] and sum(results[:4]) == 100
    assert set(bad_reasons) <= {"upstream_timeout", "upstream_unavailable"}
    assert sum(bad_reasons.values()) == 72 and bad_reasons["upstream_timeout"] >= 1
    metric = node.gateway.metrics.registry.get_sample_value
    assert metric("gwc_upstream_breaker_state", {"server": "failing"}) == 2  # open
    assert metric("gwc_upstream_breaker_state", {"server": "tools"}) == 0
    assert metric("gwc_upstream_rejected_total", {"server": "failing", "reason": "breaker_open"}) >= 1


async def failing_calls(node: Node, user: str, count: int) -> list[str]:
    """``count`` calls whose input makes the upstream answer HTTP 500; each refusal's message."""
    messages = []
    async with connect(node.endpoint(), node.idp.token(user, ["eng"]), "auto") as client:
        for _ in range(count):
            with pytest.raises(MCPError) as failed:
                await client.call_tool("echo", {"text": FAIL_MARKER.decode()})
            assert failed.value.data["reason"] == "upstream_unavailable"
            messages.append(failed.value.message)
    return messages


async def test_one_caller_making_an_upstream_fail_is_refused_alone(node) -> None:
    # erin's input makes the (real) upstream answer 500: her own calls soon fail fast...
    messages = await failing_calls(node, "erin", 7)
    assert all("keep failing" not in m for m in messages[:5])
    assert all("keep failing" in m for m in messages[5:])
    # ...while the upstream's breaker stays closed: everyone else is served.
    for user in ("alice", "bob"):
        async with connect(node.endpoint(), node.idp.token(user, ["eng"]), "auto") as client:
            assert text_of(await client.call_tool("echo", {"text": user})) == f"echo: {user}"
    metric = node.gateway.metrics.registry.get_sample_value
    assert metric("gwc_upstream_breaker_state", {"server": "tools"}) == 0
    assert metric("gwc_upstream_rejected_total",
                  {"server": "tools", "reason": "caller_breaker_open"}) == 2
    assert metric("gwc_upstream_rejected_total", {"server": "tools", "reason": "breaker_open"}) is None


async def test_a_dead_upstream_still_opens_its_breaker_for_everyone(
        tmp_path, aiohttp_server, signing_key, upstream_url) -> None:
    dead = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there: connection refused
    node = await start_node(tmp_path, aiohttp_server, signing_key, lambda root, jwks:
                            write_isolation_registry(root, jwks, upstream_url, dead, dead))
    for user in ("alice", "bob", "carol", "dave", "erin"):
        async with connect(node.endpoint("failing"), node.idp.token(user, ["eng"]), "auto") as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("echo", {"text": "x"})
            assert "circuit breaker is open" not in refused.value.message
    async with connect(node.endpoint("failing"), node.idp.token("frank", ["eng"]), "auto") as client:
        with pytest.raises(MCPError) as refused:  # a caller that never failed: refused at once
            await client.call_tool("echo", {"text": "x"})
    assert "circuit breaker is open" in refused.value.message
    metric = node.gateway.metrics.registry.get_sample_value
    assert metric("gwc_upstream_breaker_state", {"server": "failing"}) == 2

