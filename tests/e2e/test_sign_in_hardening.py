"""What a security review of the authorization server found, each as a test: no open redirect
for unvetted clients, the gateway's APIs only for tokens meant for them, bounded state, refusals
that leave a refresh token usable, IdP trouble that does not end sign-ins, and hostile input that
gets an answer, never a 500."""
from __future__ import annotations

import httpx2
import pytest

from demo.browser import ScriptedBrowser
from gwc.compiler.client.dev_idp_config import DevClient
from gwc.runtime.auth import authorize
from gwc.runtime.auth.clients import UNUSED_REGISTRATION_TTL_S
from tests.support.e2e import free_port
from tests.support.sign_in import (
    CALLBACK,
    IDP_SECRET,
    SignInWorld,
    authorize_url,
    refresh,
    register,
    signed_in,
    world,
)

pytestmark = pytest.mark.e2e
__all__ = ["world"]  # the fixture, from tests.support.sign_in


async def get(url: str, **params: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
        return await http.get(url, params=params or None)  # none: keep the URL's own query


async def test_a_self_registered_client_is_never_bounced_to_unasked(world: SignInWorld):
    evil = (await register(world.url, "https://evil.example/x")).json()["client_id"]
    answer = await get(world.url + "/oauth/authorize", client_id=evil,
                       redirect_uri="https://evil.example/x")  # everything else missing
    assert answer.status_code == 400 and "location" not in answer.headers
    assert "invalid_request" in answer.text or "unsupported_response_type" in answer.text
    loopback = (await register(world.url, "http://127.0.0.1:1/cb")).json()["client_id"]
    answer = await get(world.url + "/oauth/authorize", client_id=loopback,
                       redirect_uri="http://127.0.0.1:1/cb")  # the user's own machine: fine
    assert answer.status_code == 302 and answer.headers["location"].startswith(
        "http://127.0.0.1:1/cb?error=")


async def test_the_gateways_apis_take_only_a_token_for_the_gateway_itself(world: SignInWorld):
    _, endpoint_token = await signed_in(world, resource=f"{world.url}/servers/tools/mcp")
    _, gateway_token = await signed_in(world, resource=world.url)
    async with httpx2.AsyncClient(timeout=10) as http:
        refused = await http.get(world.url + "/v1/approvals", headers={
            "Authorization": f"Bearer {endpoint_token['access_token']}"})
        allowed = await http.get(world.url + "/v1/approvals", headers={
            "Authorization": f"Bearer {gateway_token['access_token']}"})
    assert refused.status_code == 401 and allowed.status_code == 200


async def test_logins_and_their_inputs_are_bounded(world: SignInWorld, monkeypatch):
    redirect = CALLBACK.format(port=free_port())
    client_id = (await register(world.url, redirect)).json()["client_id"]
    entry = world.nodes[0].auth_store._entries[f"client:{client_id}"]
    assert entry[0] - world.nodes[0].auth_store._clock() <= UNUSED_REGISTRATION_TTL_S
    too_long = await get(authorize_url(world.url, client_id, redirect, "v" * 43, state="s" * 600))
    bad_scope = await get(authorize_url(world.url, client_id, redirect, "v" * 43,
                                        scope='mcp "quoted"'))
    assert "error=invalid_request" in too_long.headers["location"]
    assert "error=invalid_scope" in bad_scope.headers["location"]
    monkeypatch.setattr(authorize, "LOGINS_PER_MINUTE", 2)
    started = [await get(authorize_url(world.url, client_id, redirect, "v" * 43))
               for _ in range(3)]
    assert [a.headers["location"].startswith(world.idp.issuer) for a in started] == [
        True, True, False]
    assert "error=temporarily_unavailable" in started[-1].headers["location"]


async def test_a_refused_refresh_leaves_the_token_usable(world: SignInWorld):
    login, tokens = await signed_in(world)
    token_url = world.url + "/oauth/token"
    async with httpx2.AsyncClient(timeout=10) as http:
        elsewhere = await http.post(token_url, data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": login.client_id, "resource": f"{world.url}/servers/tools/mcp"})
        other_client = await http.post(token_url, data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": "someone-else"})
    assert elsewhere.json()["error"] == "invalid_target"
    assert other_client.json()["error"] == "invalid_grant"
    assert (await refresh(token_url, login.client_id, tokens["refresh_token"])).status_code == 200


async def test_a_failing_audit_trail_leaves_the_refresh_token_usable(world: SignInWorld):
    login, tokens = await signed_in(world)
    token_url = world.url + "/oauth/token"
    writer = world.nodes[0].auditor._writer
    good = writer._file
    with open(good.name, "rb", buffering=0) as read_only:
        writer._file = read_only  # every write fails, as on a full disk
        try:
            failed = await refresh(token_url, login.client_id, tokens["refresh_token"])
        finally:
            writer._file = good
    assert failed.status_code == 503 and failed.json()["error"] == "temporarily_unavailable"
    again = await refresh(token_url, login.client_id, tokens["refresh_token"])
    assert again.status_code == 200, again.text  # not taken for a reuse


async def test_an_idp_refusing_the_gateway_itself_ends_nobodys_sign_in(world: SignInWorld):
    login, tokens = await signed_in(world)
    token_url = world.url + "/oauth/token"
    world.idp.clients["gwc-gateway"] = DevClient(  # the gateway's secret was rotated at the IdP
        client_id="gwc-gateway", client_secret="rotated",
        redirect_uris=(f"{world.url}/oauth/callback",))
    failed = await refresh(token_url, login.client_id, tokens["refresh_token"])
    assert failed.status_code == 503 and failed.json()["error"] == "temporarily_unavailable"
    world.idp.clients["gwc-gateway"] = DevClient(
        client_id="gwc-gateway", client_secret=IDP_SECRET,
        redirect_uris=(f"{world.url}/oauth/callback",))
    assert (await refresh(token_url, login.client_id, tokens["refresh_token"])).status_code == 200


@pytest.mark.parametrize("body", [
    {"redirect_uris": ["http://[::1/cb"]},
    {"redirect_uris": ["http://127.0.0.1:abc/cb"]},
    {"redirect_uris": ["http://127.0.0.1:1/cb"], "grant_types": [{}]},
    {"redirect_uris": ["http://127.0.0.1:1/" + c * 1800 for c in "abc"]},  # 5,457 together
])
async def test_hostile_registrations_get_oauth_errors(world: SignInWorld, body):
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(world.url + "/oauth/register", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


async def test_hostile_requests_get_answers_not_500s(world: SignInWorld):
    nested = b"[" * 100_000 + b"]" * 100_000
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=bogus"}
    async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
        deep = await http.post(world.url + "/oauth/register", content=nested,
                               headers={"Content-Type": "application/json"})
        charset = await http.post(world.url + "/oauth/token", content=b"grant_type=x",
                                  headers=form)
        consent = await http.post(world.url + "/oauth/consent", content=b"grant=x", headers=form)
        unicode_id = await http.post(world.url + "/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": "x", "client_id": "é"})
        bad_redirect = await http.get(world.url + "/oauth/authorize", params={
            "client_id": (await register(world.url, "http://127.0.0.1:1/cb")).json()["client_id"],
            "redirect_uri": "http://[::1/cb"})
        control = await http.get(world.url + "/login", params={"next": "/\x0b/x"})
    assert (deep.status_code, deep.json()["error"]) == (400, "invalid_client_metadata")
    assert (charset.status_code, charset.json()["error"]) == (400, "invalid_request")
    assert consent.status_code == 403
    assert unicode_id.json()["error"] == "invalid_grant"
    assert bad_redirect.status_code == 400
    assert control.status_code == 302  # to the IdP, with a harmless next
    for answer in (deep, charset, consent, unicode_id, bad_redirect, control):
        assert answer.status_code < 500


async def test_the_login_binding_cookie_is_cleared_when_the_login_returns(world: SignInWorld):
    redirect = CALLBACK.format(port=free_port())
    client_id = (await register(world.url, redirect)).json()["client_id"]
    browser = ScriptedBrowser([("sub", "erin"), ("decision", "allow")])
    try:
        await browser.sign_in(authorize_url(world.url, client_id, redirect, "v" * 43),
                              until=redirect)
        names = [cookie.key for cookie in browser.session.cookie_jar]
    finally:
        await browser.close()
    assert "gwc_session" in names and not any(n.startswith("gwc_login_") for n in names)


async def test_a_401_from_the_gateways_apis_points_at_the_gateways_own_resource(
        world: SignInWorld):
    async with httpx2.AsyncClient(timeout=10) as http:
        refused = await http.get(world.url + "/v1/approvals")
        challenge = refused.headers["WWW-Authenticate"]
        metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
        metadata = (await http.get(metadata_url)).json()
    assert refused.status_code == 401 and metadata["resource"] == world.url
    _, tokens = await signed_in(world, resource=metadata["resource"])  # what a client asks for
    assert tokens["access_token"]
