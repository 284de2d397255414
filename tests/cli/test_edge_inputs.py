"""Inputs that once crashed the compiler or slipped past it: each must give a clear answer."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gwc.compiler.build.bundle import default_revision
from gwc.compiler.build.registry import load_registry
from gwc.runtime.policy.decide import Principal, decide
from tests.support.helpers import (
    GATEWAY,
    compile_root,
    diagnostics,
    errors,
    gwc,
    manifest,
    rule,
    with_code,
    write_registry,
)


def test_empty_visibility_builds_a_server_visible_to_nobody(tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "r", manifests={"svc.yaml": manifest(visibility="")})
    assert with_code(diagnostics(root), "audience")[0].severity == "warning"
    result = gwc("build", root, "--key", signing_key[0], "--out", tmp_path / "out", "--serial", "1")
    assert result.exit_code == 0, result.stderr
    payload = compile_root(root)
    assert decide(payload, Principal("u", frozenset({"team-a"})), "svc", "read_it", {}).effect == \
        "not_found"


def test_static_env_scheme_null_survives_compilation(tmp_path: Path) -> None:
    auth = {"type": "static_env", "env": "SVC_TOKEN", "header": "X-Api-Key", "scheme": None}
    root = write_registry(tmp_path / "r", manifests={"svc.yaml": manifest(upstream_auth=auth)})
    compiled = compile_root(root).servers["svc"].upstream_auth
    assert (compiled.type, compiled.env, compiled.header, compiled.scheme) == \
        ("static_env", "SVC_TOKEN", "X-Api-Key", None)


def test_json_policy_files_are_read(tmp_path: Path) -> None:
    root = write_registry(tmp_path / "r", policies={
        "team-a/rules.json": [rule(server="nope", team="team-a")]})
    assert [d.file for d in with_code(diagnostics(root), "unknown-server")] == \
        ["policies/team-a/rules.json"]


@pytest.mark.parametrize("sink", ["file", "both"])
def test_audit_file_sink_needs_a_path(tmp_path: Path, sink: str) -> None:
    root = write_registry(tmp_path / "r", gateway={**GATEWAY, "audit": {"sink": sink}})
    [err] = errors(diagnostics(root))
    assert (err.file, err.message) == ("gateway.yaml", f"audit sink '{sink}' writes a file: set audit.path")


def test_approvers_without_approval_are_a_warning(tmp_path: Path) -> None:
    tools = {"read_it": {"access": "read", "approvers": ["team:sre"]}}
    root = write_registry(tmp_path / "r", manifests={"svc.yaml": manifest(tools=tools)})
    [warning] = with_code(diagnostics(root), "approvers-unused")
    assert warning.severity == "warning" and "read_it" in warning.message


@pytest.mark.parametrize("field, value", [("action", []), ("tool", [])])
def test_empty_action_or_tool_list_is_an_error(tmp_path: Path, field: str, value: list) -> None:
    bad = rule(team="team-a", **{field: value})
    root = write_registry(tmp_path / "r", policies={"team-a/p.yaml": [bad]})
    [err] = errors(diagnostics(root))
    assert err.code == "schema" and err.message == f"{field} needs at least 1 item(s)"


def test_ignored_input_files_make_the_revision_dirty(tmp_path: Path) -> None:
    root = write_registry(tmp_path / "r")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("policies/secret/\n")
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@e",
                    "commit", "-qm", "init"], check=True)
    registry = load_registry(root)
    assert not default_revision(root, registry.input_paths()).endswith("-dirty")
    (root / "policies" / "secret").mkdir(parents=True)
    (root / "policies" / "secret" / "p.yaml").write_text("[]\n")
    assert default_revision(root, registry.input_paths()).endswith("-dirty")


def test_owner_global_is_refused(tmp_path: Path) -> None:
    root = write_registry(tmp_path / "r", manifests={"svc.yaml": manifest(owner="global")})
    [err] = with_code(diagnostics(root), "reserved-name")
    assert err.is_error and (err.line, err.column) == (2, 8)


@pytest.mark.parametrize("text, fragment", [
    ("name: svc\ncreated: 2024-02-31\n", "cannot read value '2024-02-31'"),
    ("base: &b {access: read}\nname: svc\nother:\n  <<: *b\n", "cannot read value '<<'"),
])
def test_unconstructible_yaml_values_are_diagnostics_not_crashes(tmp_path: Path, text: str,
                                                                 fragment: str) -> None:
    root = write_registry(tmp_path / "r", manifests={"svc.yaml": text})
    found = [d for d in errors(diagnostics(root)) if d.code == "unreadable-value"]
    assert [d.file for d in found] == ["registry/svc.yaml"] and fragment in found[0].message
    result = gwc("validate", root)
    assert result.exit_code == 1 and "Traceback" not in result.output
