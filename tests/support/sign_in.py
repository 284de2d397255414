"""A gateway whose users sign in through its own authorization server, delegating the login to a
real ``gwc dev-idp serve`` (in this process, on a real socket), and the ways a client drives it:
the SDK's ``OAuthClientProvider``, or raw OAuth requests for what the SDK never sends."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
import yaml
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from demo.browser import MemoryTokens, ScriptedBrowser
from gwc.compiler.build.bundle import build
from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.build.registry import load_registry
from gwc.compiler.client.dev_idp import DevIdP
from gwc.compiler.client.dev_idp_config import DevClient, DevUser
from gwc.compiler.client.dev_idp_server import DevIdPServer
from gwc.runtime.app import Gateway
from gwc.runtime.config import Config
from gwc.runtime.mcp.trail import AuditTarget
from tests.support.e2e import free_port, write_test_registry

IDP_SECRET = "gateway-secret-at-the-idp"
USERS = (DevUser(sub="erin", groups=("eng",)), DevUser(sub="olga", groups=("ops",)),
         DevUser(sub="nina", groups=("sales",)))
CALLBACK = "http://127.0.0.1:{port}/callback"  # a native client's loopback redirect


@dataclass
class SignInWorld:
    url: str  # the gateway's public URL (node 0)
    nodes: list[Gateway]
    node_urls: list[str]  # where each node really listens
    idp: DevIdPServer
    root: Path


async def start_sign_in_world(tmp_path: Path, aiohttp_server: Any, signing_key: Any,
                              upstream: str, *, nodes: int = 1, state: str = "memory",
                              **sign_in: Any) -> SignInWorld:
    """A dev IdP, and ``nodes`` gateways sharing one public URL (as behind a load balancer), one
    gateway key, and ``state``."""
    ports = [free_port() for _ in range(nodes)]
    public = f"http://127.0.0.1:{ports[0]}"
    idp = DevIdPServer(DevIdP.generate(), issuer="http://placeholder", users=USERS, clients=(
        DevClient(client_id="gwc-gateway", client_secret=IDP_SECRET,
                  redirect_uris=(f"{public}/oauth/callback",)),))
    running = await aiohttp_server(idp.app(), host="127.0.0.1")
    idp.issuer = str(running.make_url("")).rstrip("/")
    root = write_test_registry(tmp_path / "repo", idp.issuer + "/jwks.json", upstream)
    gateway_yaml = root / "gateway.yaml"
    settings = yaml.safe_load(gateway_yaml.read_text())
    settings["identity"].update(issuer=idp.issuer, algorithms=["ES256"])
    settings["sign_in"] = {"idp_client_id": "gwc-gateway", "idp_scopes": ["openid", "groups"],
                           **sign_in}
    gateway_yaml.write_text(yaml.safe_dump(settings))
    store = tmp_path / "store"
    build(load_registry(root), signing_key[2], store, 1, "r1")
    key_path, _, key = generate_keypair(tmp_path / "gateway-key")  # a fleet shares its key
    gateways = []
    for number, port in enumerate(ports):
        here = tmp_path / f"node{number}"
        config = Config(bundle=str(store / "bundle.json"), trust=(str(signing_key[1]),),
                        listen_host="127.0.0.1", listen_port=port, signing_key=key_path,
                        public_url=public, poll_interval_s=3600, state_dir=here / "state",
                        audit=AuditTarget("file", here / "audit.jsonl"), state=state,
                        idp_client_secret=IDP_SECRET, dev_client_metadata=True)
        gateway = Gateway(config, key)
        await aiohttp_server(gateway.app(), host="127.0.0.1", port=port)
        gateways.append(gateway)
    return SignInWorld(public, gateways, [f"http://127.0.0.1:{p}" for p in ports], idp, root)


@pytest.fixture
async def world(tmp_path: Path, aiohttp_server: Any, upstream_url: str, signing_key: Any
                ) -> SignInWorld:
    """One gateway with sign-in on, its dev IdP and the test upstream (import it to use it)."""
    return await start_sign_in_world(tmp_path, aiohttp_server, signing_key, upstream_url)


def sdk_provider(server_url: str, user: str, *, consent: str = "allow",
                 storage: MemoryTokens | None = None) -> tuple[OAuthClientProvider, MemoryTokens]:
    """The SDK's OAuth client for ``server_url``, signing in as ``user`` through a scripted
    browser (registering itself dynamically, redirect on loopback)."""
    redirect = CALLBACK.format(port=free_port())
    storage = storage or MemoryTokens()
    landed: asyncio.Queue[str] = asyncio.Queue()

    async def open_browser(url: str) -> None:
        browser = ScriptedBrowser([("sub", user), ("decision", consent)])
        try:
            await landed.put(await browser.sign_in(url, until=redirect))
        finally:
            await browser.close()

    async def come_back() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(await landed.get()).query)
        if "error" in query:
            raise PermissionError(query["error"][0])
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0],
                                       iss=query.get("iss", [None])[0])

    provider = OAuthClientProvider(server_url, OAuthClientMetadata(
        client_name="sign-in test", redirect_uris=[redirect],
        grant_types=["authorization_code", "refresh_token"], response_types=["code"],
        token_endpoint_auth_method="none"), storage, open_browser, come_back)
    return provider, storage


@dataclass
class Login:
    """One raw authorization-code login, up to the code."""

    client_id: str
    redirect_uri: str
    verifier: str
    landed: dict[str, str]  # the redirect's query: code, state, iss (or error)


async def register(world_url: str, redirect_uri: str, **extra: Any) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(f"{world_url}/oauth/register", json={
            "client_name": "raw test", "redirect_uris": [redirect_uri], **extra})


def authorize_url(base: str, client_id: str, redirect_uri: str, verifier: str, **extra: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "state": generate_token(20), "code_challenge": create_s256_code_challenge(verifier),
              "code_challenge_method": "S256", "resource": f"{base}/mcp", **extra}
    return f"{base}/oauth/authorize?{urlencode(params)}"


async def raw_login(world: SignInWorld, user: str = "erin", *, consent: str = "allow",
                    browser: ScriptedBrowser | None = None, **extra: str) -> Login:
    redirect = CALLBACK.format(port=free_port())
    registered = await register(world.url, redirect)
    client_id = registered.json()["client_id"]
    verifier = generate_token(48)
    own = browser is None
    browser = browser or ScriptedBrowser([("sub", user), ("decision", consent)])
    try:
        landed = await browser.sign_in(authorize_url(world.url, client_id, redirect, verifier,
                                                     **extra), until=redirect)
    finally:
        if own:
            await browser.close()
    query = {k: v[0] for k, v in parse_qs(urlsplit(landed).query).items()}
    return Login(client_id, redirect, verifier, query)


async def redeem(token_url: str, login: Login, **overrides: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(token_url, data={
            "grant_type": "authorization_code", "code": login.landed.get("code", ""),
            "redirect_uri": login.redirect_uri, "client_id": login.client_id,
            "code_verifier": login.verifier, **overrides})


async def signed_in(world: SignInWorld, **extra: str) -> tuple[Login, dict[str, Any]]:
    """A raw login as erin, its code redeemed: the login and the token answer."""
    login = await raw_login(world, **extra)
    answer = await redeem(world.url + "/oauth/token", login)
    assert answer.status_code == 200, answer.text
    return login, answer.json()


async def refresh(token_url: str, client_id: str, refresh_token: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(token_url, data={"grant_type": "refresh_token",
                                                "refresh_token": refresh_token,
                                                "client_id": client_id})
