"""MCP clients written by others, from the npm registry: installed once per test session under a
temporary folder (``GWC_NPM_DIR`` to reuse one), with the machine's Node.js and npm.

Without node and npm the tests that need them skip, except under ``CI=1``, where they fail:
``.ci/run`` makes sure they are there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TS_SDK = "@modelcontextprotocol/sdk@1.32.2"
SCRIPTS = Path(__file__).parent / "node"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ts_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the TypeScript SDK's package."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _missing("node and npm are not installed")
    folder = Path(os.environ.get("GWC_NPM_DIR") or tmp_path_factory.mktemp("npm"))
    package = folder / "node_modules" / "@modelcontextprotocol" / "sdk"
    if not (package / "package.json").exists():
        done = subprocess.run(["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund",
                               "--silent", TS_SDK], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            _missing(f"npm install {TS_SDK} failed: {done.stderr[-500:]}")
    return package
