"""An approver clicks through an approval in a real headless Chromium: the caller's ``approval_required``
answer names a page; the approver opens it, signs in at the IdP (a real ``gwc dev-idp serve``, through
the gateway's ``/login``), reads the call with its sensitive argument masked, presses Approve, and the
caller's retry goes through. The gateway is a real node in this process on 127.0.0.1, its upstream an
in-process fake."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from gwc.compiler.build.bundle import build
from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.build.registry import load_registry
from gwc.compiler.client.dev_idp import DevIdP
from gwc.compiler.client.dev_idp_config import DevClient, DevUser
from gwc.compiler.client.dev_idp_server import DevIdPServer
from gwc.runtime.app import Gateway
from gwc.runtime.config import Config
from gwc.runtime.mcp.trail import AuditTarget
from gwc.runtime.policy.decide import Principal
from tests.support.e2e import free_port, raw, write_governed_registry
from tests.support.fake_upstream import FakeUpstream
from tests.support.idp import AUDIENCE

IDP_SECRET = "gateway-secret-at-the-idp"
SECRET = "tok-do-not-show-7731"
ARGS = {"target": "prod-db", "token": SECRET}


class World:
    def __init__(self, gateway: Gateway, url: str, idp: DevIdPServer, fake: FakeUpstream) -> None:
        self.gateway, self.url, self.idp, self.fake = gateway, url, idp, fake

    def token(self, subject: str, *groups: str) -> str:
        return self.idp.idp.token(issuer=self.idp.issuer, audience=AUDIENCE, subject=subject,
                                  groups=list(groups))

    @property
    def audit_path(self) -> Path:
        return Path(self.gateway.config.audit.path)


@pytest.fixture
async def world(tmp_path: Path, aiohttp_server: Any, signing_key: Any) -> World:
    """The governed registry (ops/write_thing: approval by team:sre), its token argument marked
    sensitive, users signing in at a dev IdP."""
    fake = FakeUpstream()
    upstream = str((await aiohttp_server(fake.app(), host="127.0.0.1")).make_url("/mcp"))
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = DevIdPServer(DevIdP.generate(), issuer="http://placeholder", users=(
        DevUser(sub="alice", groups=("eng",)), DevUser(sub="sam", groups=("sre",))), clients=(
        DevClient(client_id="gwc-gateway", client_secret=IDP_SECRET,
                  redirect_uris=(f"{public}/oauth/callback",)),))
    idp.issuer = str((await aiohttp_server(idp.app(), host="127.0.0.1")).make_url("")).rstrip("/")
    root = write_governed_registry(tmp_path / "repo", idp.issuer + "/jwks.json", upstream)
    settings = yaml.safe_load((root / "gateway.yaml").read_text())
    settings["identity"]["issuer"] = idp.issuer
    settings["sign_in"] = {"idp_client_id": "gwc-gateway", "idp_scopes": ["openid", "groups"]}
    (root / "gateway.yaml").write_text(yaml.safe_dump(settings))
    ops = yaml.safe_load((root / "registry" / "ops.yaml").read_text())
    ops["tools"]["write_thing"]["sensitive"] = ["token"]
    (root / "registry" / "ops.yaml").write_text(yaml.safe_dump(ops))
    build(load_registry(root), signing_key[2], tmp_path / "store", 1, "r1")
    key_path, _, key = generate_keypair(tmp_path / "gateway-key")
    config = Config(bundle=str(tmp_path / "store" / "bundle.json"), trust=(str(signing_key[1]),),
                    listen_host="127.0.0.1", listen_port=port, signing_key=key_path,
                    public_url=public, poll_interval_s=3600, state_dir=tmp_path / "state",
                    audit=AuditTarget("file", tmp_path / "audit.jsonl"), idp_client_secret=IDP_SECRET)
    gateway = Gateway(config, key)
    await aiohttp_server(gateway.app(), host="127.0.0.1", port=port)
    return World(gateway, public, idp, fake)


async def call_tool(world: World, tool: str, arguments: dict, token: str) -> dict:
    """A stateless tools/call on the ops server; the JSON-RPC answer (a 200, refused or not)."""
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments,
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"}}}}
    response = await raw(world, "/servers/ops/mcp", body, token, {  # type: ignore[arg-type]
        "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool})
    assert response.status_code == 200, response.text
    return response.json()


def refused(answer: dict) -> dict:
    """The refusal a tools/call came to, as the tool result (isError) the model reads: its text
    starts with the refusal's message; its structured content is the refusal's reason and ids."""
    assert "error" not in answer, answer
    result = answer["result"]
    assert result["isError"] is True
    data = result["structuredContent"]
    assert result["content"][0]["text"].startswith(data["message"] + ". ")
    return data


def text_of(browser: WebDriver) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


async def test_an_approver_signs_in_reads_the_call_and_approves_it_in_a_real_browser(
        world: World, browser: WebDriver) -> None:
    alice = world.token("alice", "eng")
    waiting = await call_tool(world, "write_thing", ARGS, alice)
    data = refused(waiting)
    assert data["reason"] == "approval_required"
    approval = data["approval_id"]
    assert data["approve_url"] == f"{world.url}/approvals/{approval}"

    # the link, opened in a browser without a session: sign in at the IdP, come back to the page
    await asyncio.to_thread(browser.get, data["approve_url"])
    button = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR, 'button[value="sam"]')
    await asyncio.to_thread(button.click)
    await asyncio.to_thread(WebDriverWait(browser, 20).until,
                            lambda b: b.current_url == data["approve_url"])
    page = await asyncio.to_thread(text_of, browser)
    assert "write_thing on ops" in page and "alice" in page and "waiting for a decision" in page
    assert '"target": "prod-db"' in page and '"token": "***"' in page and SECRET not in page
    assert SECRET not in await asyncio.to_thread(lambda: browser.page_source)

    approve = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR,
                                      'button[name="decision"][value="approve"]')
    await asyncio.to_thread(approve.click)
    # the page is replaced as it is read: an element gone stale means "look again"
    await asyncio.to_thread(WebDriverWait(browser, 20, ignored_exceptions=(
        StaleElementReferenceException,)).until, lambda b: "You approved this request" in
        text_of(b))
    assert (await asyncio.to_thread(lambda: browser.current_url)) == data["approve_url"]
    assert "approved, not used yet" in await asyncio.to_thread(text_of, browser)

    # the list shows it as decided no more, then alice's retry goes through once
    await asyncio.to_thread(browser.get, f"{world.url}/approvals")
    assert "Nothing is waiting for your decision" in await asyncio.to_thread(text_of, browser)
    done = await call_tool(world, "write_thing", ARGS, alice)
    assert json.loads(done["result"]["content"][0]["text"])["arguments"] == ARGS  # the real token
    assert [c["params"]["arguments"] for c in world.fake.calls()] == [ARGS]

    records = [json.loads(line) for line in world.audit_path.read_text().splitlines()]
    decision = [r for r in records if r["type"] == "approval"]
    assert [(r["event"], r["approval"], r["principal"]["subject"]) for r in decision] == [
        ("approved", approval, "sam")]
    assert SECRET not in json.dumps(decision)


async def test_the_requester_sees_their_request_but_cannot_approve_it_in_a_real_browser(
        world: World, browser: WebDriver) -> None:
    """A session set straight in the browser (no IdP round trip): alice, on her own request."""
    waiting = await call_tool(world, "write_thing", ARGS, world.token("alice", "eng"))
    data = refused(waiting)
    assert data["reason"] == "approval_required"
    url = data["approve_url"]
    response = web.Response()
    await world.gateway.browser.start(response, Principal("alice", frozenset({"eng", "sre"})))
    cookie = response.cookies[world.gateway.browser.cookie]
    await asyncio.to_thread(browser.get, f"{world.url}/healthz")  # the gateway's origin first
    await asyncio.to_thread(browser.add_cookie, {"name": cookie.key, "value": cookie.value, "path": "/"})
    await asyncio.to_thread(browser.get, url)
    page = await asyncio.to_thread(text_of, browser)
    assert "This is your request" in page and '"token": "***"' in page
    assert not await asyncio.to_thread(browser.find_elements, By.CSS_SELECTOR, 'button[name="decision"]')
