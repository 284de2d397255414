"""gwc dev-idp / dev-token: demo tokens the runtime's authenticator accepts."""
from __future__ import annotations

import json
import stat
from pathlib import Path

from gwc.runtime.bundle.format import Identity
from gwc.runtime.identity import Authenticator
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
