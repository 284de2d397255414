"""gwc dev-idp / dev-token: demo tokens the runtime's authenticator accepts."""
from __future__ import annotations

import json
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gwc.compiler.client.dev_idp_config import parse_client
from gwc.runtime.bundle.format import Identity
from gwc.runtime.identity import Authenticator
from tests.support.e2e import free_port, wait_port
from tests.support.helpers import GATEWAY, gwc, write_registry


async def test_dev_token_is_accepted_by_the_runtime_authenticator(tmp_path: Path) -> None:
    root = write_registry(tmp_path / "repo")
    assert gwc("dev-idp", "--out", tmp_path / "idp" / "dev").exit_code == 0
    key = tmp_path / "idp" / "dev.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    result = gwc("dev-token", "--idp", key, "--sub", "alice", "--group", "sre", "--group", "eng",
                 "--agent", "bot", "--root", root)
    assert result.exit_code == 0, result.stderr
    identity = GATEWAY["identity"]
    authenticator = Authenticator(Identity(
        issuer=identity["issuer"], audience=(identity["audience"],),
        jwks=json.loads((tmp_path / "idp" / "dev.jwks.json").read_text()), groups_claim="groups",
        algorithms=("ES256",), leeway_s=0))
    principal = await authenticator.authenticate("Bearer " + result.stdout.strip())
    assert (principal.subject, principal.groups, principal.kind, principal.acting_for) == \
        ("bot", frozenset({"sre", "eng"}), "agent", "alice")


def test_dev_token_needs_a_readable_gateway_yaml(tmp_path: Path) -> None:
    gwc("dev-idp", "--out", tmp_path / "dev")
    result = gwc("dev-token", "--idp", tmp_path / "dev.key", "--sub", "a", "--root", tmp_path)
    assert result.exit_code == 1 and "gateway.yaml not found" in result.stderr


def test_dev_idp_without_out_or_a_subcommand_is_a_usage_error(tmp_path: Path) -> None:
    assert gwc("dev-idp").exit_code == 2
    assert gwc("dev-idp", "--out", tmp_path / "dev", "serve", "--idp", tmp_path / "dev.key").exit_code == 2


def test_serve_refuses_a_non_loopback_address_unless_told(tmp_path: Path) -> None:
    gwc("dev-idp", "--out", tmp_path / "dev")
    result = gwc("dev-idp", "serve", "--idp", tmp_path / "dev.key", "--listen", "0.0.0.0:8400")
    assert result.exit_code == 2 and "--allow-remote" in result.stderr


@pytest.mark.parametrize("content, expected", [
    ("users: []\n", "non-empty"),
    ("users: [{sub: a}, {sub: a}]\n", "each sub"),
    ("users: [{sub: a, group: [x]}]\n", "group"),
])
def test_serve_refuses_a_bad_users_file(tmp_path: Path, content: str, expected: str) -> None:
    gwc("dev-idp", "--out", tmp_path / "dev")
    (tmp_path / "users.yaml").write_text(content)
    result = gwc("dev-idp", "serve", "--idp", tmp_path / "dev.key", "--users", tmp_path / "users.yaml")
    assert result.exit_code == 1 and expected in result.stderr


def test_a_client_flag_keeps_the_colons_of_its_redirect_uri() -> None:
    client = parse_client("gw:secret:http://127.0.0.1:8000/oauth/callback")
    assert (client.client_id, client.client_secret, client.redirect_uris) == \
        ("gw", "secret", ("http://127.0.0.1:8000/oauth/callback",))
    assert parse_client("cli::http://localhost/cb").client_secret is None  # public
    with pytest.raises(ValueError):
        parse_client("gw:secret")


def test_serve_runs_an_oidc_provider_that_publishes_the_shared_key(tmp_path: Path) -> None:
    """A real `gwc dev-idp serve` process: discovery names this issuer, the JWKS is the key's."""
    gwc("dev-idp", "--out", tmp_path / "dev")
    (tmp_path / "clients.yaml").write_text(
        "clients: [{client_id: gw, client_secret: s, redirect_uris: ['http://127.0.0.1:1/cb']}]\n")
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("gwc")), "dev-idp", "serve", "--idp",
                             str(tmp_path / "dev.key"), "--listen", f"127.0.0.1:{port}",
                             "--clients", str(tmp_path / "clients.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, "gwc dev-idp serve")
        issuer = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration") as response:
            meta = json.load(response)
        assert meta["issuer"] == issuer and meta["jwks_uri"] == f"{issuer}/jwks.json"
        with urllib.request.urlopen(meta["jwks_uri"]) as response:
            assert json.load(response) == json.loads((tmp_path / "dev.jwks.json").read_text())
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert "NOT FOR PRODUCTION" in stderr and "clients: gw" in stderr
