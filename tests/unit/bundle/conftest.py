"""Fixtures of the bundle tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gwc.compiler.build.compile import compile_data
from gwc.compiler.build.registry import load_registry


@pytest.fixture
def doc(example_root: Path) -> dict[str, Any]:
    """The example registry's compiled document (serial 1, revision r), as plain data."""
    return compile_data(load_registry(example_root), 1, "r")
