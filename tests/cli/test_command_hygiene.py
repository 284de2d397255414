"""The `gwc` group itself changes nothing process-wide: the collector pause belongs to the commands that
build large trees, offline commands load no aiohttp or prometheus_client, and what a command caches
belongs to the object it works on."""
from __future__ import annotations

import gc
import subprocess
import sys

from click.testing import CliRunner

from gwc.compiler.build import sources
from gwc.compiler.build.registry import load_registry
from gwc.compiler.cli import main, registry
from tests.support.helpers import write_registry


def test_a_command_that_builds_nothing_leaves_the_collector_on():
    assert gc.isenabled()
    result = CliRunner().invoke(main, ["session-key"])
    assert result.exit_code == 0, result.output
    assert gc.isenabled()


def test_validate_pauses_the_collector_while_it_runs_and_restores_it(tmp_path, monkeypatch):
    write_registry(tmp_path)
    seen: list[bool] = []
    load = registry.load_registry

    def watching(root):
        seen.append(gc.isenabled())
        return load(root)

    monkeypatch.setattr(registry, "load_registry", watching)
    result = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == [False] and gc.isenabled()


def test_importing_the_cli_loads_no_network_or_metrics_library():
    code = ("import sys, gwc.compiler.cli; "
            "print([m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'prometheus_client')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_yaml_tag_memo_belongs_to_the_registry_being_loaded(tmp_path):
    write_registry(tmp_path)
    first, second = load_registry(tmp_path), load_registry(tmp_path)
    assert first.ok and first.resolved_tags  # filled while its files were read...
    assert first.resolved_tags is not second.resolved_tags  # ...and nobody else's
    assert not [name for name, value in vars(sources).items()  # no module-level memo
                if isinstance(value, dict) and not name.startswith("__")]
