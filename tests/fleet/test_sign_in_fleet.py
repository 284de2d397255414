"""Any node serves any step of signing in: two nodes behind one public URL sharing Redis."""
from __future__ import annotations

import httpx2
import pytest

from tests.support.e2e import INITIALIZE
from tests.support.sign_in import SignInWorld, raw_login, redeem, refresh, start_sign_in_world

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
async def fleet(tmp_path, aiohttp_server, upstream_url, signing_key, redis_server) -> SignInWorld:
    return await start_sign_in_world(tmp_path, aiohttp_server, signing_key, upstream_url,
                                     nodes=2, state=redis_server.url)


async def test_a_code_from_one_node_is_redeemed_on_the_other_once(fleet: SignInWorld) -> None:
    login = await raw_login(fleet)  # the whole browser dance on node 0 (the public URL)
    other = fleet.node_urls[1] + "/oauth/token"
    tokens = await redeem(other, login)
    assert tokens.status_code == 200, tokens.text
    again = await redeem(fleet.node_urls[0] + "/oauth/token", login)
    assert again.json()["error"] == "invalid_grant"  # single use across the fleet

    bearer = {"Authorization": f"Bearer {tokens.json()['access_token']}",
              "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(fleet.node_urls[0] + "/mcp", json=INITIALIZE, headers=bearer)
    assert answer.status_code == 200, answer.text  # node 1's token is good on node 0


async def test_refresh_reuse_is_detected_across_nodes(fleet: SignInWorld) -> None:
    login = await raw_login(fleet)
    first = (await redeem(fleet.node_urls[0] + "/oauth/token", login)).json()
    rotated = await refresh(fleet.node_urls[1] + "/oauth/token", login.client_id,
                            first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    reused = await refresh(fleet.node_urls[0] + "/oauth/token", login.client_id,
                           first["refresh_token"])
    assert reused.json()["error"] == "invalid_grant"
    newest = await refresh(fleet.node_urls[1] + "/oauth/token", login.client_id,
                           rotated.json()["refresh_token"])
    assert newest.json()["error"] == "invalid_grant"


async def test_without_redis_signing_in_fails_closed(fleet: SignInWorld, redis_server) -> None:
    redis_server.stop()
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(fleet.url + "/oauth/register", json={
            "redirect_uris": ["http://127.0.0.1:1/cb"]})
        token = await http.post(fleet.url + "/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": "x", "client_id": "y"})
    assert answer.status_code == 503 and answer.json()["error"] == "temporarily_unavailable"
    assert token.status_code == 503 and token.json()["error"] == "temporarily_unavailable"
