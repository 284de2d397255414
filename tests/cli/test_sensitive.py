"""A tool's ``sensitive`` arguments: validated as a list of top-level argument names, compiled into the
bundle sorted and once each, and left out of the payload of a tool that names none."""
from __future__ import annotations

import base64
import json
from pathlib import Path

from gwc.compiler.build.bundle import build
from gwc.runtime.bundle import layout
from tests.support.helpers import compile_root, diagnostics, load_ok, manifest, with_code, write_registry


def with_tool(**write_it: object) -> dict:
    return manifest(tools={"read_it": {"access": "read"},
                           "write_it": {"access": "write", "approval": "required", **write_it}})


def test_sensitive_arguments_are_compiled_sorted_and_once(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": with_tool(sensitive=["token", "password", "token"])})
    tools = compile_root(tmp_path).servers["svc"].tools
    assert tools["write_it"].sensitive == ("password", "token")
    assert tools["read_it"].sensitive == ()


def test_a_tool_without_sensitive_arguments_has_none_in_the_payload(tmp_path: Path, signing_key) -> None:
    write_registry(tmp_path / "reg", manifests={"svc.yaml": with_tool(sensitive=["password"])})
    built = build(load_ok(tmp_path / "reg"), signing_key[2], tmp_path / "out", 1, "r")
    env = json.loads(built.envelope)
    tools = layout.document(env["payloadType"], base64.b64decode(env["payload"]))["servers"]["svc"]["tools"]
    assert tools["write_it"]["sensitive"] == ["password"]
    assert "sensitive" not in tools["read_it"]  # so bundles of registries without it are unchanged


def test_sensitive_must_be_a_list_of_names(tmp_path: Path) -> None:
    for bad in ("password", [""], [{"name": "password"}]):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        write_registry(root, manifests={"svc.yaml": with_tool(sensitive=bad)})
        assert len(with_code(diagnostics(root), "schema")) == 1, bad


def test_a_misspelt_sensitive_field_suggests_it(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": with_tool(sensitiv=["password"])})
    [found] = with_code(diagnostics(tmp_path), "schema")
    assert found.message == "unknown field 'sensitiv' (did you mean 'sensitive'?)"
