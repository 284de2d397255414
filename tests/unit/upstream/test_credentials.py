"""Upstream credentials: gateway-minted JWTs verifiable with the published JWKS; env secrets."""
from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gwc.runtime.bundle.format import Audience, Server, UpstreamAuth
from gwc.runtime.policy.decide import Principal
from gwc.runtime.upstream.credentials import TOKEN_TTL_S, CredentialError, UpstreamCredentials

GATEWAY = "https://gw.example"


def server(auth: UpstreamAuth | None = None) -> Server:
    return Server(owner="t", upstream="https://up.internal/mcp", source="registry/s.yaml",
                  visibility=Audience(everyone=True), timeout_ms=1000, max_concurrency=1,
                  upstream_auth=auth or UpstreamAuth(type="gateway_jwt"))


def verify(creds: UpstreamCredentials, token: str) -> dict:
    key = jwt.PyJWK(creds.jwks()["keys"][0])
    return jwt.decode(token, key.key, algorithms=["EdDSA"], audience="https://up.internal/mcp",
                      issuer=GATEWAY)


def test_minted_token_names_caller_tool_and_audience() -> None:
    creds = UpstreamCredentials(Ed25519PrivateKey.generate(), GATEWAY)
    name, value = creds.header(server(), Principal("alice", frozenset({"sre"})), "deploy")
    claims = verify(creds, value.removeprefix("Bearer "))
    assert name == "Authorization" and claims["sub"] == "alice" and claims["scope"] == "deploy"
    assert claims["exp"] - claims["iat"] <= TOKEN_TTL_S and "act" not in claims
    assert claims["kind"] == "human"


def test_the_gateway_itself_is_told_apart_from_a_user_of_the_same_name() -> None:
    creds = UpstreamCredentials(Ed25519PrivateKey.generate(), GATEWAY)
    user = verify(creds, creds.token("https://up.internal/mcp", Principal("gwc"), None))
    service = verify(creds, creds.token("https://up.internal/mcp",
                                        Principal("gwc", kind="service"), None))
    assert (user["kind"], service["kind"]) == ("human", "service")


def test_agent_calls_carry_the_actor() -> None:
    creds = UpstreamCredentials(Ed25519PrivateKey.generate(), GATEWAY)
    token = creds.token("https://up.internal/mcp", Principal("bot", kind="agent", acting_for="alice"),
                        "t")
    claims = verify(creds, token)
    assert (claims["sub"], claims["act"]) == ("alice", {"sub": "bot"})


def test_tokens_are_reused_per_caller_and_tool_only() -> None:
    creds = UpstreamCredentials(Ed25519PrivateKey.generate(), GATEWAY)
    alice, bob = Principal("alice"), Principal("bob")
    first = creds.token("https://up.internal/mcp", alice, "a")
    assert creds.token("https://up.internal/mcp", alice, "a") == first
    assert creds.token("https://up.internal/mcp", alice, "b") != first
    assert creds.token("https://up.internal/mcp", bob, "a") != first


def test_another_key_cannot_verify() -> None:
    creds = UpstreamCredentials(Ed25519PrivateKey.generate(), GATEWAY)
    other = UpstreamCredentials(Ed25519PrivateKey.generate(), GATEWAY)
    with pytest.raises(jwt.InvalidSignatureError):
        verify(other, creds.token("https://up.internal/mcp", Principal("a"), None))


def test_static_env_credential(monkeypatch) -> None:
    creds = UpstreamCredentials(Ed25519PrivateKey.generate(), GATEWAY)
    auth = UpstreamAuth(type="static_env", env="UP_TOKEN", header="X-Api-Key", scheme=None)
    with pytest.raises(CredentialError, match="UP_TOKEN is not set"):
        creds.header(server(auth), Principal("a"), "t")
    monkeypatch.setenv("UP_TOKEN", "s3cret")
    assert creds.header(server(auth), Principal("a"), "t") == ("X-Api-Key", "s3cret")


def test_the_jwks_has_each_key_once_the_nodes_own_first() -> None:
    own, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    creds = UpstreamCredentials(own, GATEWAY, (other.public_key(), own.public_key(),
                                               other.public_key()))
    kids = [key["kid"] for key in creds.jwks()["keys"]]
    assert kids == [creds.kid, UpstreamCredentials(other, GATEWAY).kid]
