"""Shared fixtures (the example registry, throw-away signing keys) and the suite's markers.

Markers come from where a test lives, so a new test file is marked by being put in the right folder:
``e2e`` (tests/e2e: real processes and SDK clients), ``fleet`` (tests/fleet: several nodes),
``redis`` (any test that starts a real redis-server), ``browser`` (any test that drives headless
Chromium). ``pytest -m "not fleet and not e2e"`` is the inner loop.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gwc.compiler.build.keys import generate_keypair
from tests.support.aiohttp_servers import aiohttp_server  # noqa: F401  (as production runs one)
from tests.support.browser import browser  # noqa: F401  (a real headless Chromium)
from tests.support.e2e import (  # noqa: F401  (fixtures for the end-to-end tests)
    coercing_upstream,
    node,
    upstream_url,
)
from tests.support.node_packages import ts_sdk  # noqa: F401  (the TypeScript SDK, from npm)
from tests.support.redis_server import redis_server  # noqa: F401  (a real redis-server on a free port)
from tests.support.repo import REPO
from tests.support.s3_server import s3_server  # noqa: F401  (a real S3 API: moto's server mode)

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"e2e": pytest.mark.e2e, "fleet": pytest.mark.fleet}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])
        fixtures = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        if "redis_server" in fixtures or (callspec is not None and "redis" in callspec.id):
            item.add_marker(pytest.mark.redis)
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)


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
