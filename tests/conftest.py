"""Shared fixtures: the example registry and throw-away signing keys."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compiler.keys import generate_keypair
from tests.e2e import node, upstream_url  # noqa: F401  (fixtures for the end-to-end tests)
from tests.redis_server import redis_server  # noqa: F401  (a real redis-server on a free port)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def example_root(tmp_path: Path) -> Path:
    """A private copy of the repo's example registry (gateway.yaml, registry/, policies/)."""
    root = tmp_path / "registry-repo"
    root.mkdir()
    shutil.copy(REPO / "gateway.yaml", root / "gateway.yaml")
    shutil.copytree(REPO / "registry", root / "registry")
    shutil.copytree(REPO / "policies", root / "policies")
    return root


@pytest.fixture
def signing_key(tmp_path: Path):
    """(private key path, public key path, key) in a temporary folder."""
    return generate_keypair(tmp_path / "keys" / "ci")
