"""``gwc connect`` as Claude Desktop runs it: a subprocess driven over stdio with newline-delimited
JSON-RPC, against a real node with sign-in on (its dev IdP, the test upstream), the user signing
in through a scripted browser; and ``gwc login`` / ``gwc logout`` for the commands that call a
gateway. The OS keyring is never touched: the subprocesses get keyring's ``fail`` backend and a
temporary ``XDG_CONFIG_HOME``, so tokens land in the 0600 file there."""
from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import yaml

from demo.browser import ScriptedBrowser
from gwc.compiler.build.bundle import build
from gwc.compiler.build.registry import load_registry
from gwc.runtime.app import Gateway
from gwc.runtime.bundle.keys import load_private_key
from gwc.runtime.config import Config
from tests.support.idp import AUDIENCE
from tests.support.sign_in import SignInWorld, refresh, start_sign_in_world

GWC = str(Path(sys.executable).parent / "gwc")
AUTHORIZE = re.compile(r"(http://\S+/oauth/authorize\?\S+)")
ERIN_TOOLS = {"tools__echo", "tools__whoami", "tools__slow_count", "tools__write_thing"}
INITIALIZE = {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
              "clientInfo": {"name": "claude-desktop-test", "version": "1"}}


class Servers:
    """The ``aiohttp_server`` fixture, remembering each server it starts (to stop a node)."""

    def __init__(self, factory: Any) -> None:
        self.factory, self.started = factory, []

    async def __call__(self, app: Any, **options: Any) -> Any:
        server = await self.factory(app, **options)
        self.started.append(server)
        return server


class Node:
    """Node 0 of a sign-in world, which the tests stop and start again on the same port."""

    def __init__(self, world: SignInWorld, servers: Servers) -> None:
        self.world, self.servers = world, servers
        self.config: Config = world.nodes[0].config
        self.server = servers.started[-1]  # start_sign_in_world starts the node last

    async def stop(self) -> None:
        await self.server.close()

    async def start(self, session_keys: tuple[bytes, ...]) -> None:
        self.config = replace(self.config, session_keys=session_keys)
        gateway = Gateway(self.config, load_private_key(self.config.signing_key))
        self.server = await self.servers(gateway.app(), host="127.0.0.1",
                                         port=self.config.listen_port)

    async def restart(self, session_keys: tuple[bytes, ...]) -> None:
        await self.stop()
        await self.start(session_keys)


def environment(config_home: Path, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GWC_TOKEN", "GWC_GATEWAY")}
    env.update(PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
               XDG_CONFIG_HOME=str(config_home), PYTHONUNBUFFERED="1")
    if token is not None:
        env["GWC_TOKEN"] = token
    return env


class Bridge:
    """``gwc connect URL --no-browser`` in a subprocess: stdin and stdout are the client's."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []
        self.stdout: list[dict[str, Any]] = []  # every message, in order
        self.notifications: list[dict[str, Any]] = []
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._stderr_seen = asyncio.Event()
        self._readers = [asyncio.ensure_future(self._read_stdout()),
                         asyncio.ensure_future(self._read_stderr())]
        self._ids = iter(range(1, 10_000))

    @classmethod
    async def start(cls, url: str, env: dict[str, str], *args: str) -> Bridge:
        proc = await asyncio.create_subprocess_exec(
            GWC, "connect", url, "--no-browser", *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        return cls(proc)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            message = json.loads(line)  # stdout is the protocol: every line one JSON-RPC message
            assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", line
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            self.stdout.append(message)
            await self._messages.put(message)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode())
            self._stderr_seen.set()

    @property
    def log(self) -> str:
        return "".join(self.stderr)

    async def wait_stderr(self, pattern: re.Pattern[str], timeout_s: float = 20) -> str:
        async def find() -> str:
            while True:
                match = pattern.search(self.log)
                if match:
                    return match.group(1)
                self._stderr_seen.clear()
                await self._stderr_seen.wait()
        return await asyncio.wait_for(find(), timeout_s)

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params
                                                                  is not None else {})})

    async def ask(self, method: str, params: dict[str, Any] | None = None) -> int:
        request_id = next(self._ids)
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method,
                         "params": params or {}})
        return request_id

    async def answer(self, request_id: Any, timeout_s: float = 30) -> dict[str, Any]:
        """The response to ``request_id``; notifications met on the way are kept."""
        async def wait() -> dict[str, Any]:
            while True:
                message = await self._messages.get()
                if "method" in message:
                    self.notifications.append(message)
                elif message.get("id") == request_id:
                    return message
        return await asyncio.wait_for(wait(), timeout_s)

    async def next_request(self, timeout_s: float = 30) -> dict[str, Any]:
        """The next request the gateway sends the client (notifications met are kept)."""
        async def wait() -> dict[str, Any]:
            while True:
                message = await self._messages.get()
                if "method" in message and "id" in message:
                    return message
                self.notifications.append(message)
        return await asyncio.wait_for(wait(), timeout_s)

    async def request(self, method: str, params: dict[str, Any] | None = None,
                      timeout_s: float = 30) -> dict[str, Any]:
        return await self.answer(await self.ask(method, params), timeout_s)

    async def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = await asyncio.wait_for(self.proc.wait(), 20)
        await asyncio.gather(*self._readers)
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def sign_in_in_browser(log_source: Any, user: str = "erin") -> None:
    """What the user does: open the address gwc printed, log in at the IdP, allow; the browser
    then lands on gwc's loopback listener (this GET is that landing)."""
    url = await log_source.wait_stderr(AUTHORIZE)
    redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", redirect)
    browser = ScriptedBrowser([("sub", user), ("decision", "allow")])
    try:
        landed = await browser.sign_in(url, until=redirect)
    finally:
        await browser.close()
    async with aiohttp.ClientSession() as http, http.get(landed) as response:
        assert response.status == 200, await response.text()


def stored(config_home: Path) -> dict[str, Any]:
    path = config_home / "gwc" / "sign-ins.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())["gateways"]


def text_of(response: dict[str, Any]) -> str:
    assert "result" in response, response
    return "".join(c.get("text", "") for c in response["result"]["content"])


@pytest.fixture
async def sign_in_node(tmp_path: Path, aiohttp_server: Any, upstream_url: str,
                       signing_key: Any) -> Node:
    servers = Servers(aiohttp_server)
    world = await start_sign_in_world(tmp_path, servers, signing_key, upstream_url)
    manifest = world.root / "registry" / "tools.yaml"  # the upstream's `ask` elicits mid-call
    spec = yaml.safe_load(manifest.read_text())
    spec["tools"]["ask"] = {"access": "read"}
    manifest.write_text(yaml.safe_dump(spec))
    build(load_registry(world.root), signing_key[2], tmp_path / "store", 2, "r2")  # next start
    return Node(world, servers)


async def test_claude_desktop_through_gwc_connect(sign_in_node: Node, tmp_path: Path) -> None:
    node, home = sign_in_node, tmp_path / "config"
    keys = (os.urandom(32),)
    await node.restart(keys)  # nodes sharing --session-keys: a restarted one keeps sessions
    url = node.world.url
    bridge = await Bridge.start(url, environment(home))
    try:
        first = await bridge.ask("initialize", INITIALIZE)
        await sign_in_in_browser(bridge)
        initialized = await bridge.answer(first)
        assert initialized["result"]["protocolVersion"] == "2025-11-25"
        assert initialized["result"]["serverInfo"]["name"] == "gwc"
        assert f"signed in to {url}" in bridge.log
        await bridge.notify("notifications/initialized")

        listed = await bridge.request("tools/list")
        names = {tool["name"] for tool in listed["result"]["tools"]}
        assert names >= ERIN_TOOLS and not any(n.startswith("hidden__") for n in names)
        assert text_of(await bridge.request("tools/call", {
            "name": "tools__echo", "arguments": {"text": "hello"}})) == "echo: hello"
        counted = await bridge.request("tools/call", {
            "name": "tools__slow_count", "arguments": {"n": 3}, "_meta": {"progressToken": "p"}})
        assert text_of(counted) == "counted 3"
        progress = [n for n in bridge.notifications if n["method"] == "notifications/progress"]
        assert [p["params"]["progress"] for p in progress] == [1, 2, 3]  # relayed as they came
        # the upstream asks the user in the middle of a call; the client's answer goes back
        asking = await bridge.ask("tools/call", {"name": "tools__ask",
                                                 "arguments": {"question": "deploy?"}})
        elicitation = await bridge.next_request()
        assert elicitation["method"] == "elicitation/create"
        assert elicitation["params"]["message"] == "deploy?"
        await bridge.send({"jsonrpc": "2.0", "id": elicitation["id"],
                           "result": {"action": "accept", "content": {"answer": "yes"}}})
        assert text_of(await bridge.answer(asking)) == "accept: yes"
        refused = await bridge.request("tools/call", {
            "name": "tools__write_thing", "arguments": {"target": "db", "env": "prod"}})
        assert refused["result"]["isError"] is True  # a refusal the model reads, with its reason
        assert refused["result"]["structuredContent"]["reason"] == "denied"
        assert "erin may not call write_thing on tools" in text_of(refused)

        # The node goes away in the middle; a call made meanwhile waits for its successor,
        # which accepts the sealed session: no new session.
        await node.stop()
        waiting = await bridge.ask("tools/call", {"name": "tools__echo",
                                                  "arguments": {"text": "through a restart"}})
        await bridge.wait_stderr(re.compile(r"(is unreachable)"))
        await node.start(keys)
        assert text_of(await bridge.answer(waiting)) == "echo: through a restart"
        assert "no longer knows the session" not in bridge.log

        # A node that cannot open the session (other keys): the bridge opens a new one with the
        # client's own initialize, and the request goes on.
        await node.restart((os.urandom(32),))
        assert text_of(await bridge.request("tools/call", {
            "name": "tools__echo", "arguments": {"text": "new session"}})) == "echo: new session"
        assert "no longer knows the session" in bridge.log
        assert (await bridge.request("ping"))["result"] == {}
        assert await bridge.close() == 0
    finally:
        bridge.kill()
    entry = stored(home)[url]
    assert entry["resource"] == url and entry["refresh_token"] and entry["access_token"]
    assert entry["access_token"] not in bridge.log and entry["refresh_token"] not in bridge.log
    assert all("/oauth/authorize" not in json.dumps(m) for m in bridge.stdout)


async def test_an_unreachable_gateway_is_a_json_rpc_error(tmp_path: Path) -> None:
    from tests.support.e2e import free_port

    bridge = await Bridge.start(f"http://127.0.0.1:{free_port()}",
                                environment(tmp_path / "config", token="any"), "--retry-for", "1")
    try:
        answer = await bridge.request("initialize", INITIALIZE)
        assert answer["error"]["code"] == -32004
        assert re.search(r"is unreachable; retrying failed after 1 s", answer["error"]["message"])
        assert await bridge.close() == 0
    finally:
        bridge.kill()


async def test_gwc_token_is_used_as_is_and_never_signs_in(sign_in_node: Node,
                                                          tmp_path: Path) -> None:
    world, home = sign_in_node.world, tmp_path / "config"

    def idp_token(user: str, groups: list[str]) -> str:
        return world.idp.idp.token(issuer=world.idp.issuer, audience=AUDIENCE, subject=user,
                                   groups=groups)

    bridge = await Bridge.start(world.url, environment(home, idp_token("erin", ["eng"])))
    try:
        assert "result" in await bridge.request("initialize", INITIALIZE)
        await bridge.notify("notifications/initialized")
        whoami = json.loads(text_of(await bridge.request("tools/call", {
            "name": "tools__whoami", "arguments": {}})))
        assert whoami["authorization"].startswith("Bearer ")  # the gateway's own, not erin's
        assert await bridge.close() == 0
    finally:
        bridge.kill()
    assert "/oauth/authorize" not in bridge.log and not (home / "gwc").exists()

    nina = await Bridge.start(world.url, environment(home, idp_token("nina", ["sales"])))
    try:  # 2026-07-28, stateless: no initialize, the version in every request's _meta
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}}
        listed = await nina.request("tools/list", {"_meta": meta})
        assert listed["result"]["tools"] == []  # nina sees nothing
        assert await nina.close() == 0
    finally:
        nina.kill()

    wrong = await Bridge.start(world.url, environment(home, "not-a-token"))
    try:
        refused = await wrong.request("initialize", INITIALIZE)
        assert refused["error"]["code"] == -32005 and "GWC_TOKEN" in refused["error"]["message"]
        assert await wrong.close() == 0
    finally:
        wrong.kill()
    assert "/oauth/authorize" not in wrong.log


async def test_tokens_are_refreshed_and_a_dead_sign_in_signs_in_again(
        sign_in_node: Node, tmp_path: Path) -> None:
    url, home = sign_in_node.world.url, tmp_path / "config"
    path = home / "gwc" / "sign-ins.json"

    async def session(expect_sign_in: bool) -> Bridge:
        bridge = await Bridge.start(url, environment(home))
        try:
            first = await bridge.ask("initialize", INITIALIZE)
            if expect_sign_in:
                await sign_in_in_browser(bridge)
            assert "result" in await bridge.answer(first)
            await bridge.notify("notifications/initialized")
            assert "result" in await bridge.request("tools/list")
            assert await bridge.close() == 0
        finally:
            bridge.kill()
        assert ("/oauth/authorize" in bridge.log) is expect_sign_in
        return bridge

    def edit(**fields: Any) -> dict[str, Any]:
        data = json.loads(path.read_text())
        before = dict(data["gateways"][url])
        data["gateways"][url].update(fields)
        path.write_text(json.dumps(data))
        return before

    await session(expect_sign_in=True)
    before = edit(expires_at=0)  # the access token has run out
    await session(expect_sign_in=False)
    after = stored(home)[url]
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]  # rotated, and the new one kept
    assert after["client_id"] == before["client_id"]  # registered once
    assert (await refresh(f"{url}/oauth/token", after["client_id"], before["refresh_token"])
            ).json()["error"] == "invalid_grant"  # the old one is dead

    edit(expires_at=0, refresh_token="revoked-or-forgotten")  # the gateway answers invalid_grant
    await session(expect_sign_in=True)
    assert stored(home)[url]["client_id"] == before["client_id"]


async def gwc_command(*args: str, env: dict[str, str], sign_in_as: str | None = None
                      ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        GWC, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)

    class Lines:
        text = ""

        async def wait_stderr(self, pattern: re.Pattern[str], timeout_s: float = 20) -> str:
            assert proc.stderr is not None

            async def find() -> str:
                while not (match := pattern.search(self.text)):
                    line = await proc.stderr.readline()
                    assert line, self.text
                    self.text += line.decode()
                return match.group(1)
            return await asyncio.wait_for(find(), timeout_s)

    lines = Lines()
    if sign_in_as is not None:
        await sign_in_in_browser(lines, sign_in_as)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), lines.text + err.decode()


async def test_login_approvals_and_logout(sign_in_node: Node, tmp_path: Path) -> None:
    url, home = sign_in_node.world.url, tmp_path / "config"
    env = environment(home)
    code, _, err = await gwc_command("approvals", "list", "--gateway", url, env=env)
    assert code == 1 and f"not signed in to {url}: run `gwc login --gateway {url}`" in err

    code, out, err = await gwc_command("login", "--gateway", url, "--no-browser", env=env,
                                       sign_in_as="olga")
    assert code == 0 and out == "" and f"signed in to {url}" in err
    entry = stored(home)[url]

    code, out, err = await gwc_command("approvals", "list", "--gateway", url, env=env)
    assert (code, out.strip()) == (0, "no approvals"), err
    code, out, err = await gwc_command("bypass", "list", "--gateway", url, env=env)
    assert code == 1 and "break_glass_disabled" in err  # signed in: past the token, to the API

    code, _, err = await gwc_command("logout", "--gateway", url, env=env)
    assert code == 0 and f"signed out of {url}" in err
    assert url not in stored(home)
    assert (await refresh(f"{url}/oauth/token", entry["client_id"], entry["refresh_token"])
            ).json()["error"] == "invalid_grant"  # revoked at the gateway
    code, _, err = await gwc_command("approvals", "list", "--gateway", url, env=env)
    assert code == 1 and "not signed in" in err
