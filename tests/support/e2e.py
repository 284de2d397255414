"""What the end-to-end tests share: a real upstream MCP server process, a throw-away registry, a
gateway node on a real socket, and clients (the SDK's, and raw HTTP for what the SDK never sends)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gwc.compiler.build.bundle import build
from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.build.registry import load_registry
from gwc.runtime.app import Gateway
from gwc.runtime.config import Config
from gwc.runtime.mcp.trail import AuditTarget
from gwc.runtime.upstream.isolation import Connect, http_pool
from tests.support.helpers import dump
from tests.support.idp import AUDIENCE, ISSUER, TestIdP

MODES = ["auto", "legacy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{what} did not start listening on port {port}")


def start_upstream(port: int, script: str = "upstream_server.py") -> subprocess.Popen:
    """A test upstream MCP server (by default tests/support/upstream_server.py) in its own process."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / script), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, "the upstream MCP server")
    except BaseException:
        proc.kill()
        raise
    return proc


@contextmanager
def running_upstream(script: str = "upstream_server.py") -> Iterator[str]:
    """The URL of a test upstream MCP server running for the ``with`` block."""
    port = free_port()
    proc = start_upstream(port, script)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # uvicorn still waiting on a client's open stream
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def upstream_url():
    with running_upstream() as url:
        yield url


@pytest.fixture(scope="module")
def coercing_upstream() -> Iterator[str]:
    """A real upstream whose SDK coerces arguments (tests/support/coercion_upstream.py)."""
    with running_upstream("coercion_upstream.py") as url:
        yield url


def write_gateway(root: Path, jwks_uri: str) -> Path:
    """A registry root with the test IdP's gateway.yaml and an empty registry/; its path."""
    (root / "registry").mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(dump({"identity": {
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": jwks_uri, "algorithms": ["ES256"]}}))
    return root


def write_test_registry(root: Path, jwks_uri: str, upstream: str,
                        read_tools: tuple[str, ...] = ()) -> Path:
    """The test registry; ``read_tools`` are declared besides the usual ones on ``tools``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(dump({"identity": {
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": jwks_uri, "algorithms": ["ES256"]}}))
    tools = {"echo": {"access": "read"}, "whoami": {"access": "read"},
             "slow_count": {"access": "read"}, "write_thing": {"access": "write", "approval": "none"},
             **{name: {"access": "read"} for name in read_tools}}
    registry = root / "registry"
    registry.mkdir(exist_ok=True)
    (registry / "tools.yaml").write_text(dump({
        "name": "tools", "owner": "eng", "upstream": upstream,
        "visibility": ["team:eng", "team:ops"], "tools": tools}))
    (registry / "hidden.yaml").write_text(dump({
        "name": "hidden", "owner": "secret", "upstream": upstream, "visibility": "team:secret",
        "tools": {"echo": {"access": "read"}}}))
    (registry / "guarded.yaml").write_text(dump({
        "name": "guarded", "owner": "eng", "upstream": upstream, "visibility": "team:eng",
        "mode": "shadow", "tools": {"write_thing": {"access": "write", "approval": "required"},
                                    "echo": {"access": "read"}}}))
    (root / "policies" / "eng").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "eng" / "guarded.yaml").write_text(dump([
        {"id": "guarded-no-mallory", "subject": {"user": "mallory"},
         "resource": {"server": "guarded"}, "action": "*", "effect": "deny"}]))
    (root / "policies" / "eng" / "tools.yaml").write_text(dump([
        {"id": "eng-read", "subject": {"team": "eng"}, "resource": {"server": "tools"},
         "action": "read"},
        {"id": "eng-write-staging", "subject": {"team": "eng"},
         "resource": {"server": "tools", "tool": "write_thing"}, "action": "write",
         "conditions": {"env": ["staging"]}},
        {"id": "ops-all", "subject": {"team": "ops"}, "resource": {"server": "tools"}, "action": "*"},
        {"id": "no-mallory", "subject": {"user": "mallory"}, "resource": {"server": "tools"},
         "action": "*", "effect": "deny"},
    ]))
    return root


def write_governed_registry(root: Path, jwks_uri: str, upstream: str) -> Path:
    """A registry exercising governance: a rate-limited tool (6 a minute, one at a time), an
    approval tool approved by sre (5 a minute), a server shadowing writes only, and a server only a
    break-glass bypass opens."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(dump({
        "identity": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": jwks_uri,
                     "algorithms": ["ES256"]},
        "break_glass": {"group": "sre-oncall", "max_ttl_s": 600}}))
    registry = root / "registry"
    registry.mkdir(exist_ok=True)
    (registry / "ops.yaml").write_text(dump({
        "name": "ops", "owner": "eng", "upstream": upstream, "visibility": ["team:eng", "team:sre"],
        "tools": {"echo": {"access": "read", "limits": {"per_user_rpm": 6, "per_user_burst": 1}},
                  "whoami": {"access": "read"},
                  "write_thing": {"access": "write", "approval": "required",
                                  "approvers": ["team:sre"], "limits": {"per_user_rpm": 5}}}}))
    (registry / "legacy.yaml").write_text(dump({
        "name": "legacy", "owner": "eng", "upstream": upstream, "visibility": "team:eng",
        "mode": {"read": "enforce", "write": "shadow"},
        "tools": {"echo": {"access": "read"}, "write_thing": {"access": "write"}}}))
    (registry / "vault.yaml").write_text(dump({
        "name": "vault", "owner": "secret", "upstream": upstream, "visibility": "team:secret",
        "tools": {"echo": {"access": "read"}}}))
    (root / "policies" / "eng").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "eng" / "legacy.yaml").write_text(dump([
        {"id": "legacy-read", "subject": {"team": "eng"}, "resource": {"server": "legacy"},
         "action": "read"},
        {"id": "legacy-no-mallory", "subject": {"user": "mallory"},
         "resource": {"server": "legacy"}, "action": "*", "effect": "deny"}]))
    return root


class Node:
    """A running gateway plus what the tests need to drive it."""

    def __init__(self, gateway: Gateway, url: str, idp: TestIdP, store_dir: Path, registry_root: Path,
                 bundle_key) -> None:
        self.gateway, self.url, self.idp = gateway, url, idp
        self.store_dir, self.registry_root, self.bundle_key = store_dir, registry_root, bundle_key

    @property
    def audit_path(self) -> Path:
        return Path(self.gateway.config.audit.path)

    def endpoint(self, server: str = "tools") -> str:
        return f"{self.url}/servers/{server}/mcp"

    def publish(self, serial: int) -> None:
        build(load_registry(self.registry_root), self.bundle_key, self.store_dir, serial, f"r{serial}")


RegistryWriter = Callable[[Path, str], Path]  # (root, jwks_uri) -> root


async def start_node(tmp_path: Path, aiohttp_server, signing_key, write: RegistryWriter,
                     connect: Connect = http_pool, **settings) -> Node:
    """A gateway in this process, on a real socket, serving bundle 1 of the registry ``write``
    makes; an IdP serving its JWKS over HTTP beside it. ``connect`` opens its upstream pools."""
    return (await start_fleet(tmp_path, aiohttp_server, signing_key, write, 1, connect,
                              **settings))[0]


async def start_fleet(tmp_path: Path, aiohttp_server, signing_key, write: RegistryWriter,
                      size: int, connect: Connect = http_pool, **settings) -> list[Node]:
    """``size`` gateways in this process serving the same bundle, trusting the same IdP, each
    with its own port, audit trail and gateway key (as separate machines would)."""
    idp = TestIdP()
    idp_server = await aiohttp_server(idp.app(), host="127.0.0.1")
    root = write(tmp_path / "repo", str(idp_server.make_url("/jwks.json")))
    store = tmp_path / "store"
    build(load_registry(root), signing_key[2], store, 1, "r1")
    nodes = []
    for number in range(size):
        here = tmp_path / f"node{number}" if size > 1 else tmp_path
        gw_key_path, _, gw_key = generate_keypair(here / "gateway-key")
        port = free_port()
        config = Config(bundle=str(store / "bundle.json"), trust=(str(signing_key[1]),),
                        listen_host="127.0.0.1", listen_port=port, signing_key=gw_key_path,
                        public_url=f"http://127.0.0.1:{port}", poll_interval_s=3600,
                        state_dir=here / "state", max_body_bytes=64 * 1024,
                        **{"audit": AuditTarget("file", here / "audit" / "audit.jsonl"),
                           **settings})
        gateway = Gateway(config, gw_key, connect=connect)
        await aiohttp_server(gateway.app(), host="127.0.0.1", port=port)
        nodes.append(Node(gateway, config.public_url, idp, store, root, signing_key[2]))
    return nodes


@pytest.fixture
async def node(tmp_path, aiohttp_server, upstream_url, signing_key) -> Node:
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, upstream_url))


@asynccontextmanager
async def connect(url: str, token: str, mode: str, **client_options):
    async with (httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                   timeout=httpx2.Timeout(10.0, read=30.0)) as http,
                Client(streamable_http_client(url, http_client=http), mode=mode,
                       read_timeout_seconds=20, **client_options) as client):
        # no silent fallback: auto must really speak the stateless era through the gateway
        assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
        yield client


def text_of(result) -> str:
    return result.content[0].text


def refusal(result) -> dict:
    """What a refused tools/call came to, as an SDK client reads the tool result the gateway answers
    a denial, an approval to wait for, a rate limit or too many approvals with: isError, one text
    for the model that starts with the refusal's message, and as structured content the reason, ids
    and numbers a JSON-RPC error's data had, with the message. Returns that data, without the
    message (so, what error.data was)."""
    assert result.is_error is True, result
    data = dict(result.structured_content or {})
    message = data.pop("message")
    assert isinstance(data.get("reason"), str), data
    [content] = result.content
    assert content.type == "text" and content.text.startswith(f"{message}. "), content.text
    return data


async def raw(node: Node, path: str, body: bytes | dict, token: str | None = None,
              headers: dict | None = None) -> httpx2.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(node.url + path, content=data, headers=all_headers)


LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}


async def open_session(node: Node, path: str, token: str) -> str:
    """A legacy session id from the gateway, as a raw client gets it."""
    response = await raw(node, path, INITIALIZE, token)
    assert response.status_code == 200, response.text
    return response.headers["Mcp-Session-Id"]



@contextmanager
def unwritable_trail(node: Node) -> Iterator[Path]:
    """Every audit write fails inside the block, as on a full disk; the trail's path."""
    writer = node.gateway.auditor._writer
    good = writer._file
    with open(good.name, "rb", buffering=0) as read_only:
        writer._file = read_only
        try:
            yield Path(good.name)
        finally:
            writer._file = good


async def echo_in_session(node: Node, token: str) -> tuple[dict, dict]:
    """A legacy ``tools/call`` of echo and the headers of a fresh session to send it in."""
    session = await open_session(node, "/servers/tools/mcp", token)
    return ({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"text": "x"}}}, {"Mcp-Session-Id": session})
