"""Identity: bearer JWTs checked against a JWKS served over real HTTP by a test IdP."""
from __future__ import annotations

import time

import jwt
import pytest

from gwc.compiler.client.dev_idp import DevIdP
from gwc.runtime.bundle.format import Identity
from gwc.runtime.identity import Authenticator, AuthError
from tests.support.idp import AUDIENCE, ISSUER, TestIdP, claims, hs256_with_public_key, unsigned_token


@pytest.fixture
async def idp_server(aiohttp_server):
    idp = TestIdP()
    server = await aiohttp_server(idp.app(), host="127.0.0.1")
    return idp, str(server.make_url("/jwks.json"))


@pytest.fixture
async def auth(idp_server):
    idp, jwks_uri = idp_server
    authenticator = Authenticator(Identity(
        issuer=ISSUER, audience=(AUDIENCE,), jwks_uri=jwks_uri, groups_claim="groups",
        algorithms=("ES256", "RS256"), leeway_s=5))
    yield idp, authenticator
    await authenticator.close()


async def test_valid_token_gives_the_principal(auth) -> None:
    idp, authenticator = auth
    principal = await authenticator.authenticate("Bearer " + idp.token("alice", ["sre", "eng"]))
    assert (principal.subject, principal.groups, principal.kind, principal.acting_for) == \
        ("alice", frozenset({"sre", "eng"}), "human", None)


async def test_agent_token_acts_for_a_human(auth) -> None:
    idp, authenticator = auth
    principal = await authenticator.authenticate("Bearer " + idp.token("alice", actor="triage-bot"))
    assert (principal.subject, principal.kind, principal.acting_for) == ("triage-bot", "agent", "alice")


@pytest.mark.parametrize("make, reason", [
    (lambda idp: idp.token(ttl_s=-60), "token expired"),
    (lambda idp: idp.token(issuer="https://evil.example"), "issuer is not trusted"),
    (lambda idp: idp.token(audience="another-service"), "audience is not this gateway"),
    (lambda idp: DevIdP.generate("k-other").token(issuer=ISSUER, audience=AUDIENCE, subject="x"),
     "unknown key"),
    (lambda idp: unsigned_token(claims()), "algorithm 'none' is not accepted"),
    (lambda idp: hs256_with_public_key(idp), "algorithm 'HS256' is not accepted"),
    (lambda idp: "not-a-jwt", "malformed token"),
    (lambda idp: idp.token(now=time.time() + 600), "invalid token"),  # not yet valid
])
async def test_bad_tokens_are_refused(auth, make, reason) -> None:
    idp, authenticator = auth
    with pytest.raises(AuthError, match=reason):
        await authenticator.authenticate("Bearer " + make(idp))


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer"])
async def test_missing_or_non_bearer_credentials(auth, header) -> None:
    with pytest.raises(AuthError):
        await auth[1].authenticate(header)


async def test_unknown_key_from_a_different_idp_with_the_same_kid(auth) -> None:
    _idp, authenticator = auth
    impostor = TestIdP().current  # also kid "k1", other key
    token = impostor.token(issuer=ISSUER, audience=AUDIENCE, subject="mallory")
    with pytest.raises(AuthError, match="invalid token"):
        await authenticator.authenticate("Bearer " + token)


async def test_valid_tokens_are_verified_once(auth, monkeypatch) -> None:
    idp, authenticator = auth
    token = "Bearer " + idp.token("alice")
    await authenticator.authenticate(token)
    calls = []
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1))
    assert (await authenticator.authenticate(token)).subject == "alice"
    assert calls == []


async def test_key_rotation_is_picked_up_and_unknown_kids_are_rate_limited(auth) -> None:
    idp, authenticator = auth
    await authenticator.authenticate("Bearer " + idp.token("alice"))
    assert idp.jwks_requests == 1
    authenticator._fetched_at -= 10  # time passes beyond the refresh floor
    idp.rotate()
    # The new kid is unknown: one refresh, then it verifies.
    assert (await authenticator.authenticate("Bearer " + idp.token("bob"))).subject == "bob"
    assert idp.jwks_requests == 2
    # A flood of tokens with unknown kids does not hammer the IdP.
    stranger = DevIdP.generate("k-stranger")
    for i in range(20):
        with pytest.raises(AuthError, match="unknown key"):
            await authenticator.authenticate("Bearer " + stranger.token(
                issuer=ISSUER, audience=AUDIENCE, subject=f"m{i}"))
    assert idp.jwks_requests == 2


async def test_embedded_jwks_needs_no_fetch() -> None:
    idp = TestIdP()
    authenticator = Authenticator(Identity(issuer=ISSUER, audience=(AUDIENCE,),
                                           jwks=idp.current.jwks(), groups_claim="roles",
                                           algorithms=("ES256",), leeway_s=0))
    token = idp.current.token(issuer=ISSUER, audience=AUDIENCE, subject="carol",
                              groups=["a"], groups_claim="roles")
    principal = await authenticator.authenticate("Bearer " + token)
    assert principal.groups == frozenset({"a"}) and idp.jwks_requests == 0


async def test_a_cached_principal_goes_when_its_key_leaves_the_jwks(auth) -> None:
    idp, authenticator = auth
    token = "Bearer " + idp.token("alice")
    assert (await authenticator.authenticate(token)).subject == "alice"
    idp.rotate()
    idp.idps.pop(0)  # the IdP removes the key that signed alice's token
    authenticator._fetched_at -= 3600  # the JWKS is now stale: the next use refetches it
    assert (await authenticator.authenticate(token)).subject == "alice"  # served, refetch begins
    await authenticator._refreshing
    with pytest.raises(AuthError, match="unknown key"):
        await authenticator.authenticate(token)


@pytest.mark.parametrize("header, token_sent", [
    (None, False), ("Basic abc", False), ("Bearer x.y.z", True)])
async def test_errors_say_whether_a_token_was_sent(auth, header, token_sent) -> None:
    with pytest.raises(AuthError) as caught:
        await auth[1].authenticate(header)
    assert caught.value.token_sent is token_sent


async def test_the_challenge_text_never_holds_what_the_caller_sent(auth) -> None:
    _idp, authenticator = auth
    forged = unsigned_token(claims())
    _header, _, rest = forged.partition(".")
    import base64
    import json
    evil = base64.urlsafe_b64encode(json.dumps(
        {"alg": 'x", error="fake\r\nX-Evil: 1', "typ": "JWT"}).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError) as caught:
        await authenticator.authenticate(f"Bearer {evil}.{rest}")
    assert caught.value.challenge == "token algorithm is not accepted"
