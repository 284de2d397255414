"""The gateway's access tokens: what a node accepts, for which resource, and what it refuses."""
from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gwc.runtime.auth.tokens import AccessTokens
from gwc.runtime.bundle.format import Identity
from gwc.runtime.identity import Authenticator, AuthError
from gwc.runtime.policy.decide import Principal
from gwc.runtime.upstream.credentials import UpstreamCredentials

GATEWAY = "https://mcp.acme.example"
ERIN = Principal("erin", frozenset({"eng", "ops"}))
IDENTITY = Identity(issuer="https://login.acme.example", audience=("gwc",), jwks={"keys": []},
                    groups_claim="groups", algorithms=("ES256",), leeway_s=0)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def authenticator(tokens: AccessTokens) -> Authenticator:
    return Authenticator(IDENTITY, gateway_tokens=tokens.verifier())


def mint(tokens: AccessTokens, resource: str = GATEWAY + "/mcp", ttl_s: int = 300) -> str:
    return tokens.mint(ERIN, client_id="c1", resource=resource, scope="", ttl_s=ttl_s)


async def test_a_gateway_token_names_its_user_and_groups(key) -> None:
    tokens = AccessTokens(key, GATEWAY)
    principal = await authenticator(tokens).authenticate("Bearer " + mint(tokens), "/mcp")
    assert principal == ERIN
    header = jwt.get_unverified_header(mint(tokens))
    assert header["typ"] == "at+jwt" and header["alg"] == "EdDSA"


@pytest.mark.parametrize(("issued_for", "used_at", "ok"), [
    (GATEWAY + "/mcp", "/mcp", True),
    (GATEWAY + "/servers/a/mcp", "/servers/a/mcp", True),
    (GATEWAY + "/servers/a/mcp", "/servers/b/mcp", False),
    (GATEWAY + "/servers/a/mcp", "/mcp", False),
    (GATEWAY + "/mcp", "/servers/a/mcp", False),
    (GATEWAY + "/servers/ab/mcp", "/servers/a/mcp", False),
    (GATEWAY, "/servers/a/mcp", True),  # the gateway itself: every endpoint
    (GATEWAY + "/servers/a/mcp", None, False),  # the gateway's APIs (approvals, bypasses)
    (GATEWAY + "/mcp", None, False),
    (GATEWAY, None, True),  # take only a token for the gateway itself
])
async def test_a_token_is_good_only_for_its_resource(key, issued_for, used_at, ok) -> None:
    tokens = AccessTokens(key, GATEWAY)
    auth = authenticator(tokens)
    token = "Bearer " + mint(tokens, issued_for)
    if ok:
        assert await auth.authenticate(token, used_at) == ERIN
    else:
        with pytest.raises(AuthError, match="another resource"):
            await auth.authenticate(token, used_at)


async def test_a_cached_token_is_still_checked_against_each_resource(key) -> None:
    tokens = AccessTokens(key, GATEWAY)
    auth, token = authenticator(tokens), "Bearer " + mint(tokens, GATEWAY + "/servers/a/mcp")
    assert await auth.authenticate(token, "/servers/a/mcp") == ERIN
    with pytest.raises(AuthError, match="another resource"):  # the cache keeps no verdict
        await auth.authenticate(token, "/servers/b/mcp")


async def test_an_expired_token_is_refused(key) -> None:
    tokens = AccessTokens(key, GATEWAY)
    with pytest.raises(AuthError, match="expired"):
        # past the 30 s leeway
        await authenticator(tokens).authenticate("Bearer " + mint(tokens, ttl_s=-100))


async def test_another_keys_token_with_the_same_kid_is_refused(key) -> None:
    ours, forged = AccessTokens(key, GATEWAY), AccessTokens(Ed25519PrivateKey.generate(), GATEWAY)
    forged.kid = ours.kid
    with pytest.raises(AuthError, match="invalid token"):
        await authenticator(ours).authenticate("Bearer " + mint(forged))


async def test_an_upstream_token_from_the_same_key_is_no_access_token(key) -> None:
    tokens = AccessTokens(key, GATEWAY)
    upstream = UpstreamCredentials(key, GATEWAY).token(GATEWAY + "/mcp", ERIN, None)
    with pytest.raises(AuthError):
        await authenticator(tokens).authenticate("Bearer " + upstream, "/mcp")


async def test_without_sign_in_a_node_takes_no_gateway_tokens(key) -> None:
    tokens = AccessTokens(key, GATEWAY)
    with pytest.raises(AuthError):
        await Authenticator(IDENTITY).authenticate("Bearer " + mint(tokens), "/mcp")


@pytest.mark.parametrize("audience", ["https://mcp.other.example/mcp",
                                      GATEWAY + "x/mcp"])  # a host that starts like this one
async def test_a_token_for_another_gateway_is_refused(key, audience) -> None:
    tokens = AccessTokens(key, GATEWAY)
    with pytest.raises(AuthError, match="not this gateway"):
        await authenticator(tokens).authenticate("Bearer " + mint(tokens, audience), "/mcp")


async def test_a_token_issued_by_another_gateway_with_this_key_is_refused(key) -> None:
    elsewhere = AccessTokens(key, "https://mcp.other.example")
    with pytest.raises(AuthError, match="invalid token"):  # the issuer is checked
        await authenticator(AccessTokens(key, GATEWAY)).authenticate(
            "Bearer " + mint(elsewhere, GATEWAY + "/mcp"), "/mcp")


async def test_a_signing_key_rotation_overlaps_old_and_new_keys(key) -> None:
    """Step 2 of a rotation: one node signs with the new key, another still with the old, each
    accepting the other's (``--accept-key``): a token from either works on both, and both keys
    are in each node's JWK Set. A key neither accepts is refused, as before the rotation."""
    new_key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old, new = AccessTokens(key, GATEWAY), AccessTokens(new_key, GATEWAY)
    old_node = Authenticator(IDENTITY, gateway_tokens=old.verifier((new_key.public_key(),)))
    new_node = Authenticator(IDENTITY, gateway_tokens=new.verifier((key.public_key(),)))
    for node in (old_node, new_node):
        for tokens in (old, new):
            assert await node.authenticate("Bearer " + mint(tokens), "/mcp") == ERIN
    with pytest.raises(AuthError):
        await old_node.authenticate("Bearer " + mint(AccessTokens(stranger, GATEWAY)), "/mcp")
    # without the overlap, the old node refuses the new key's tokens
    with pytest.raises(AuthError):
        await authenticator(old).authenticate("Bearer " + mint(new), "/mcp")

    published = UpstreamCredentials(new_key, GATEWAY, (key.public_key(), new_key.public_key()))
    kids = [jwk["kid"] for jwk in published.jwks()["keys"]]
    assert kids == [new.kid, old.kid]  # its own first, and no key twice
