"""The scripts beside the package (bench/, demo/) still import: a renamed or moved module of gwc
breaks them at once here, not the next time someone runs a benchmark."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.repo import REPO

SCRIPTS = sorted(path for folder in ("bench", "demo") for path in (REPO / folder).glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.relative_to(REPO).as_posix() for p in SCRIPTS])
def test_the_script_imports(script) -> None:
    code = (f"import runpy, sys; sys.path.insert(0, {str(script.parent)!r}); "
            f"runpy.run_path({str(script)!r}, run_name='imported_by_test')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
