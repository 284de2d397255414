"""Signing in through the gateway's own authorization server, with real parts: the SDK's
``OAuthClientProvider``, a real ``gwc dev-idp serve`` doing the login, a scripted browser
submitting the login and consent forms, and a real upstream."""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2
import pytest
import yaml
from aiohttp import web
from authlib.common.security import generate_token
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from demo.browser import ScriptedBrowser
from gwc.compiler.build.bundle import build
from gwc.compiler.build.registry import load_registry
from gwc.compiler.client.dev_idp_config import DevUser
from gwc.runtime.auth import token_endpoint
from gwc.runtime.policy.decide import Principal
from tests.support.e2e import INITIALIZE, MODES, free_port
from tests.support.helpers import gwc
from tests.support.sign_in import (
    CALLBACK,
    SignInWorld,
    authorize_url,
    raw_login,
    redeem,
    refresh,
    register,
    sdk_provider,
    signed_in,
    start_sign_in_world,
    world,
)

pytestmark = pytest.mark.e2e
__all__ = ["world"]  # the fixture, from tests.support.sign_in


async def tool_names(url: str, provider, mode: str) -> set[str]:
    async with (httpx2.AsyncClient(auth=provider, timeout=20) as http,
                Client(streamable_http_client(url, http_client=http), mode=mode,
                       read_timeout_seconds=20) as client):
        return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.parametrize("mode", MODES)
async def test_the_sdk_client_signs_in_and_sees_its_users_tools(world: SignInWorld, mode: str):
    provider, storage = sdk_provider(world.url + "/mcp", "erin")
    names = await tool_names(world.url + "/mcp", provider, mode)
    assert "tools__echo" in names and not any(n.startswith("hidden__") for n in names)
    assert storage.client is not None and storage.client.client_id.startswith("gwc-")
    assert storage.tokens is not None and storage.tokens.refresh_token

    # another user, another client: olga (ops) sees what ops may, not erin's
    other, _ = sdk_provider(world.url + "/mcp", "nina")
    assert not any(n.startswith("tools__") for n in await tool_names(world.url + "/mcp", other,
                                                                    mode))


async def test_the_sdk_refreshes_an_expired_token_without_a_new_login(world: SignInWorld):
    provider, storage = sdk_provider(world.url + "/servers/tools/mcp", "erin")
    await tool_names(world.url + "/servers/tools/mcp", provider, "auto")
    first = storage.tokens
    provider.context.token_expiry_time = time.time() - 1  # as if an access token lifetime went by
    assert "echo" in await tool_names(world.url + "/servers/tools/mcp", provider, "auto")
    assert storage.tokens.access_token != first.access_token
    assert storage.tokens.refresh_token != first.refresh_token  # rotated


async def test_a_token_works_only_for_the_resource_it_was_issued_for(world: SignInWorld):
    login = await raw_login(world, resource=f"{world.url}/servers/tools/mcp")
    tokens = (await redeem(world.url + "/oauth/token", login)).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}",
              "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        here = await http.post(f"{world.url}/servers/tools/mcp", json=INITIALIZE, headers=bearer)
        there = await http.post(f"{world.url}/mcp", json=INITIALIZE, headers=bearer)
    assert here.status_code == 200, here.text
    assert there.status_code == 401 and "another resource" in there.headers["WWW-Authenticate"]


async def test_metadata_names_the_gateway_as_the_authorization_server(world: SignInWorld):
    async with httpx2.AsyncClient(timeout=10) as http:
        resource = (await http.get(
            f"{world.url}/.well-known/oauth-protected-resource/servers/tools/mcp")).json()
        server = (await http.get(f"{world.url}/.well-known/oauth-authorization-server")).json()
        oidc = (await http.get(f"{world.url}/.well-known/openid-configuration")).json()
    assert resource["authorization_servers"] == [world.url]
    assert resource["resource"] == f"{world.url}/servers/tools/mcp"
    assert server == oidc and server["issuer"] == world.url
    assert server["code_challenge_methods_supported"] == ["S256"]
    assert server["client_id_metadata_document_supported"] is True
    assert server["authorization_response_iss_parameter_supported"] is True
    assert server["registration_endpoint"] == f"{world.url}/oauth/register"


async def test_a_refresh_token_used_twice_revokes_the_whole_sign_in(world: SignInWorld):
    login, first = await signed_in(world)
    token_url = world.url + "/oauth/token"
    second = await refresh(token_url, login.client_id, first["refresh_token"])
    assert second.status_code == 200, second.text
    reused = await refresh(token_url, login.client_id, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # the family is gone: even the newest refresh token no longer works
    newest = await refresh(token_url, login.client_id, second.json()["refresh_token"])
    assert newest.status_code == 400 and newest.json()["error"] == "invalid_grant"


async def test_a_user_the_idp_no_longer_accepts_loses_access_at_the_next_refresh(
        world: SignInWorld):
    login, tokens = await signed_in(world)
    token_url = world.url + "/oauth/token"
    world.idp.refresh_tokens.clear()  # the IdP ended the user's session (disabled, logged out)
    answer = await refresh(token_url, login.client_id, tokens["refresh_token"])
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert "identity provider" in answer.json()["error_description"]


async def test_logging_out_revokes_the_refresh_token(world: SignInWorld):
    login, tokens = await signed_in(world)
    token_url = world.url + "/oauth/token"
    async with httpx2.AsyncClient(timeout=10) as http:
        revoked = await http.post(world.url + "/oauth/revoke", data={
            "token": tokens["refresh_token"], "client_id": login.client_id})
    assert revoked.status_code == 200
    answer = await refresh(token_url, login.client_id, tokens["refresh_token"])
    assert answer.json()["error"] == "invalid_grant"


async def test_a_wrong_verifier_is_refused_and_burns_the_code(world: SignInWorld):
    login = await raw_login(world)
    wrong = await redeem(world.url + "/oauth/token", login, code_verifier="x" * 43)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    right = await redeem(world.url + "/oauth/token", login)
    assert right.json()["error"] == "invalid_grant"  # one guess only


async def test_a_code_redeemed_twice_is_refused_and_revokes_what_it_gave(world: SignInWorld):
    login, tokens = await signed_in(world)
    token_url = world.url + "/oauth/token"
    again = await redeem(token_url, login)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    answer = await refresh(token_url, login.client_id, tokens["refresh_token"])
    assert answer.json()["error"] == "invalid_grant"


async def test_a_code_is_bound_to_its_client_and_redirect(world: SignInWorld):
    login = await raw_login(world)
    other = await redeem(world.url + "/oauth/token", login,
                         redirect_uri=CALLBACK.format(port=free_port()))
    assert other.json()["error"] == "invalid_grant"


async def test_consent_denied_sends_the_client_access_denied(world: SignInWorld):
    login = await raw_login(world, consent="deny")
    assert login.landed["error"] == "access_denied" and login.landed["iss"] == world.url
    assert "code" not in login.landed


async def test_a_resource_that_is_not_this_gateways_is_refused(world: SignInWorld):
    login = await raw_login(world, resource="https://mcp.elsewhere.example/mcp")
    assert login.landed["error"] == "invalid_target"
    hidden = await raw_login(world, resource=f"{world.url}/servers/hidden/mcp")
    missing = await raw_login(world, resource=f"{world.url}/servers/nonexistent/mcp")
    # invisible to erin answers as a server that does not exist, and both only after login:
    # nobody learns server names from the authorization endpoint
    assert hidden.landed == {**missing.landed, "state": hidden.landed["state"]}
    assert hidden.landed["error"] == "invalid_target"


async def test_authorization_answers_carry_state_and_iss(world: SignInWorld):
    login = await raw_login(world, state="my-state")
    assert login.landed["state"] == "my-state" and login.landed["iss"] == world.url


async def test_an_unregistered_client_or_redirect_gets_a_page_never_a_redirect(
        world: SignInWorld):
    redirect = CALLBACK.format(port=free_port())
    client_id = (await register(world.url, redirect)).json()["client_id"]
    async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
        unknown = await http.get(f"{world.url}/oauth/authorize", params={
            "client_id": "nobody", "redirect_uri": "https://evil.example/cb",
            "response_type": "code"})
        elsewhere = await http.get(f"{world.url}/oauth/authorize", params={
            "client_id": client_id, "redirect_uri": "https://evil.example/cb",
            "response_type": "code"})
    for answer in (unknown, elsewhere):
        assert answer.status_code == 400 and "location" not in answer.headers
        assert answer.headers["X-Frame-Options"] == "DENY"
    assert "Unknown application" in unknown.text


async def test_a_loopback_redirect_matches_on_any_port(world: SignInWorld):
    client_id = (await register(world.url, "http://127.0.0.1:1/callback")).json()["client_id"]
    async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
        answer = await http.get(f"{world.url}/oauth/authorize", params={
            "client_id": client_id, "redirect_uri": "http://127.0.0.1:45678/callback",
            "response_type": "code", "code_challenge": "x" * 43,
            "code_challenge_method": "S256", "state": "s"})
        wrong_path = await http.get(f"{world.url}/oauth/authorize", params={
            "client_id": client_id, "redirect_uri": "http://127.0.0.1:45678/other",
            "response_type": "code"})
    assert answer.status_code == 302 and answer.headers["location"].startswith(world.idp.issuer)
    assert wrong_path.status_code == 400


async def test_pkce_plain_is_refused(world: SignInWorld):
    redirect = CALLBACK.format(port=free_port())
    client_id = (await register(world.url, redirect)).json()["client_id"]
    async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
        answer = await http.get(f"{world.url}/oauth/authorize", params={
            "client_id": client_id, "redirect_uri": redirect, "response_type": "code",
            "code_challenge": "x" * 43, "code_challenge_method": "plain", "state": "s"})
    assert answer.status_code == 302
    assert "error=invalid_request" in answer.headers["location"]
    assert answer.headers["location"].startswith(redirect)


async def test_a_forged_or_replayed_state_is_refused(world: SignInWorld):
    async with httpx2.AsyncClient(timeout=10) as http:
        forged = await http.get(f"{world.url}/oauth/callback",
                                params={"state": "made-up", "code": "x"})
    assert forged.status_code == 400 and "expired" in forged.text

    # a real login's answer from the IdP, replayed into another browser (no binding cookie)
    redirect = CALLBACK.format(port=free_port())
    client_id = (await register(world.url, redirect)).json()["client_id"]
    browser = ScriptedBrowser([("sub", "erin")])
    try:
        callback = await browser.sign_in(authorize_url(world.url, client_id, redirect, "v" * 43),
                                         until=world.url + "/oauth/callback")
    finally:
        await browser.close()
    async with httpx2.AsyncClient(timeout=10) as http:
        replayed = await http.get(callback)
    assert replayed.status_code == 403 and "started elsewhere" in replayed.text


async def test_dynamic_registration_refuses_bad_redirects(world: SignInWorld):
    for uri in ("http://evil.example/cb", "javascript:alert(1)", "https://a.example/cb#frag",
                "https://user@a.example/cb"):
        answer = await register(world.url, uri)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_redirect_uri", uri


async def test_registration_can_be_switched_off_and_restricted(tmp_path, aiohttp_server,
                                                               upstream_url, signing_key):
    off = await start_sign_in_world(tmp_path / "off", aiohttp_server, signing_key, upstream_url,
                                    dynamic_registration="off")
    answer = await register(off.url, CALLBACK.format(port=free_port()))
    assert answer.status_code == 403 and answer.json()["error"] == "access_denied"
    async with httpx2.AsyncClient(timeout=10) as http:
        metadata = (await http.get(f"{off.url}/.well-known/oauth-authorization-server")).json()
    assert "registration_endpoint" not in metadata

    narrow = await start_sign_in_world(tmp_path / "narrow", aiohttp_server, signing_key,
                                       upstream_url, redirect_hosts=["vscode.dev"])
    assert (await register(narrow.url, "https://vscode.dev/redirect")).status_code == 201
    assert (await register(narrow.url, "http://127.0.0.1:1/cb")).status_code == 201
    assert (await register(narrow.url, "https://evil.example/cb")).status_code == 400


async def test_a_metadata_document_on_a_private_address_is_refused(tmp_path, aiohttp_server,
                                                                  upstream_url, signing_key):
    world = await start_sign_in_world(tmp_path, aiohttp_server, signing_key, upstream_url)
    for gateway in world.nodes:  # production setting: no private addresses, https only
        gateway.client_metadata._allow_private = gateway.client_metadata._allow_http = False
    async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
        answer = await http.get(f"{world.url}/oauth/authorize", params={
            "client_id": "https://127.0.0.1:9/client.json", "response_type": "code",
            "redirect_uri": "http://127.0.0.1:1/cb"})
    assert answer.status_code == 400 and "location" not in answer.headers
    assert "metadata document" in answer.text


async def test_a_token_the_gateway_minted_for_an_upstream_is_no_access_token(world: SignInWorld):
    # same key, same issuer, even an audience that names the gateway: still not an access token
    minted = world.nodes[0].credentials.token(world.url + "/mcp", Principal("erin",
                                                                            frozenset({"eng"})),
                                              None)
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(world.url + "/mcp", json=INITIALIZE, headers={
            "Authorization": f"Bearer {minted}", "Accept": "application/json, text/event-stream"})
    assert answer.status_code == 401


async def test_a_client_identified_by_its_metadata_document_signs_in(world: SignInWorld,
                                                                     aiohttp_server):
    redirect = CALLBACK.format(port=free_port())
    document: dict = {"client_name": "Documented Client", "redirect_uris": [redirect],
                      "token_endpoint_auth_method": "none"}
    app = web.Application()

    async def serve_document(request: web.Request) -> web.Response:
        return web.json_response(document)
    app.router.add_get("/oauth/client.json", serve_document)
    served = await aiohttp_server(app, host="127.0.0.1")
    client_id = document["client_id"] = str(served.make_url("/oauth/client.json"))  # http: dev
    verifier = generate_token(48)
    browser = ScriptedBrowser([("sub", "erin"), ("decision", "allow")])
    try:
        landed = await browser.sign_in(authorize_url(world.url, client_id, redirect, verifier),
                                       until=redirect)
    finally:
        await browser.close()
    assert "Documented Client" in browser.pages[-1] and "metadata document" in browser.pages[-1]
    code = dict(pair.split("=", 1) for pair in landed.split("?", 1)[1].split("&"))["code"]
    async with httpx2.AsyncClient(timeout=10) as http:
        tokens = await http.post(world.url + "/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": client_id,
            "redirect_uri": redirect, "code_verifier": verifier})
    assert tokens.status_code == 200, tokens.text


async def test_consent_is_remembered_for_the_same_user_and_client(world: SignInWorld):
    redirect = CALLBACK.format(port=free_port())
    client_id = (await register(world.url, redirect)).json()["client_id"]
    for press in ([("sub", "erin"), ("decision", "allow")], [("sub", "erin")]):
        browser = ScriptedBrowser(press)  # the second time there is no consent page to answer
        try:
            landed = await browser.sign_in(authorize_url(world.url, client_id, redirect,
                                                         generate_token(48)), until=redirect)
        finally:
            await browser.close()
        assert "code=" in landed
    browser = ScriptedBrowser([("sub", "olga")])  # another user is asked
    try:
        with pytest.raises(Exception, match="no button to press"):
            await browser.sign_in(authorize_url(world.url, client_id, redirect,
                                                generate_token(48)), until=redirect)
    finally:
        await browser.close()


@pytest.mark.parametrize(("data", "headers", "status", "error"), [
    ({"grant_type": "password", "username": "a"}, {}, 400, "unsupported_grant_type"),
    ({"grant_type": "authorization_code"}, {}, 400, "invalid_request"),
    ({"grant_type": "refresh_token", "refresh_token": "x" * 5000, "client_id": "c"}, {}, 400,
     "invalid_request"),
    ({"grant_type": "authorization_code", "code": "c", "client_id": "x"},
     {"Authorization": "Basic eDp5"}, 401, "invalid_client"),
])
async def test_hostile_token_requests_get_oauth_errors(world: SignInWorld, data, headers, status,
                                                       error):
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(world.url + "/oauth/token", data=data, headers=headers)
        as_json = await http.post(world.url + "/oauth/token", json=data)
        repeated = await http.post(world.url + "/oauth/token", content=b"grant_type=a&grant_type=b",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (answer.status_code, answer.json()["error"]) == (status, error)
    assert answer.headers["Cache-Control"] == "no-store"
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    assert repeated.json()["error"] == "invalid_request"


async def test_a_group_change_at_the_idp_reaches_the_gateway_at_the_next_refresh(
        world: SignInWorld):
    provider, storage = sdk_provider(world.url + "/mcp", "erin")
    assert "tools__echo" in await tool_names(world.url + "/mcp", provider, "auto")
    world.idp.users["erin"] = DevUser(sub="erin", groups=("sales",))  # moved out of eng
    provider.context.token_expiry_time = time.time() - 1  # an access-token lifetime later
    assert not any(name.startswith("tools__") for name in await tool_names(
        world.url + "/mcp", provider, "auto"))

    del world.idp.users["erin"]  # and then removed at the IdP
    answer = await refresh(world.url + "/oauth/token", storage.client.client_id,
                           storage.tokens.refresh_token)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


async def test_the_audit_trail_says_who_let_which_client_in_and_what_went_wrong(
        world: SignInWorld):
    login, first = await signed_in(world)
    token_url = world.url + "/oauth/token"
    await refresh(token_url, login.client_id, first["refresh_token"])
    await refresh(token_url, login.client_id, first["refresh_token"])  # reused
    trail = Path(world.nodes[0].config.audit.path)
    records = [json.loads(line) for line in trail.read_text().splitlines()]
    sign_ins = [(r["event"], r["principal"]["subject"], r.get("grant_type"))
                for r in records if r["type"] == "sign_in"]
    assert sign_ins == [("consent_granted", "erin", None),
                        ("tokens_issued", "erin", "authorization_code"),
                        ("tokens_issued", "erin", "refresh_token"),
                        ("refresh_reused", "erin", None)]
    ids = {r["sign_in"] for r in records if r["type"] == "sign_in" and "sign_in" in r}
    assert len(ids) == 1 and first["refresh_token"] not in json.dumps(records)
    assert gwc("audit", "verify", trail).exit_code == 0


async def test_dynamic_registrations_are_rate_limited(world: SignInWorld, monkeypatch):
    monkeypatch.setattr(token_endpoint, "REGISTRATIONS_PER_MINUTE", 3)
    answers = [await register(world.url, CALLBACK.format(port=1)) for _ in range(4)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert answers[-1].json()["error"] == "temporarily_unavailable"
    assert int(answers[-1].headers["Retry-After"]) >= 1


async def test_sign_in_steps_are_counted_in_metrics(world: SignInWorld):
    login = await raw_login(world)
    await redeem(world.url + "/oauth/token", login)
    await redeem(world.url + "/oauth/token", login)  # reused: invalid_grant
    async with httpx2.AsyncClient(timeout=10) as http:
        metrics = (await http.get(world.url + "/metrics")).text
    assert 'gwc_sign_in_total{outcome="ok",step="code"} 1.0' in metrics
    assert 'gwc_sign_in_total{outcome="ok",step="token"} 1.0' in metrics
    assert 'gwc_sign_in_total{outcome="invalid_grant",step="token"} 1.0' in metrics
    assert 'gwc_sign_in_total{outcome="ok",step="register"} 1.0' in metrics


async def test_turning_sign_in_off_stops_the_gateways_own_tokens(world: SignInWorld,
                                                                   signing_key, tmp_path):
    tokens = (await redeem(world.url + "/oauth/token", await raw_login(world))).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}",
              "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.post(world.url + "/mcp", json=INITIALIZE, headers=bearer)
                ).status_code == 200
        settings = yaml.safe_load((world.root / "gateway.yaml").read_text())
        del settings["sign_in"]
        (world.root / "gateway.yaml").write_text(yaml.safe_dump(settings))
        build(load_registry(world.root), signing_key[2], tmp_path / "store", 2, "r2")
        assert await world.nodes[0].poller.poll_once() == "activated"
        refused = await http.post(world.url + "/mcp", json=INITIALIZE, headers=bearer)
        metadata = await http.get(world.url + "/.well-known/oauth-authorization-server")
    assert refused.status_code == 401
    assert metadata.status_code == 404


async def test_a_client_pre_registered_in_gateway_yaml_signs_in(tmp_path, aiohttp_server,
                                                                upstream_url, signing_key):
    world = await start_sign_in_world(
        tmp_path, aiohttp_server, signing_key, upstream_url, client_id_metadata_documents=False,
        clients=[{"client_id": "acme-desktop", "client_name": "Acme Desktop",
                  "redirect_uris": ["http://127.0.0.1/oauth/callback"]}])
    redirect = f"http://127.0.0.1:{free_port()}/oauth/callback"
    verifier = generate_token(48)
    browser = ScriptedBrowser([("sub", "erin"), ("decision", "allow")])
    try:
        landed = await browser.sign_in(authorize_url(world.url, "acme-desktop", redirect,
                                                     verifier), until=redirect)
        assert "registered by the gateway" in browser.pages[-1]
        documented = authorize_url(world.url, "https://apps.example/client.json", redirect,
                                   verifier)
        async with httpx2.AsyncClient(timeout=10) as http:
            refused = await http.get(documented)  # metadata documents are off here
    finally:
        await browser.close()
    code = dict(pair.split("=", 1) for pair in landed.split("?", 1)[1].split("&"))["code"]
    async with httpx2.AsyncClient(timeout=10) as http:
        tokens = await http.post(world.url + "/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": "acme-desktop",
            "redirect_uri": redirect, "code_verifier": verifier})
    assert tokens.status_code == 200, tokens.text
    assert refused.status_code == 400 and "Unknown application" in refused.text


async def test_a_client_in_a_browser_page_may_read_the_metadata_and_token_answers(
        world: SignInWorld):
    origin = {"Origin": "http://localhost:6274"}  # MCP Inspector's page
    async with httpx2.AsyncClient(timeout=10) as http:
        preflight = await http.options(world.url + "/oauth/token", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        metadata = await http.get(world.url + "/.well-known/oauth-protected-resource/mcp",
                                  headers=origin)
        token = await http.post(world.url + "/oauth/token", data={"grant_type": "x"},
                                headers=origin)
        page = await http.get(world.url + "/oauth/authorize", headers=origin)
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
    for answer in (preflight, metadata, token):
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Origin" not in page.headers  # the pages are not for scripts
