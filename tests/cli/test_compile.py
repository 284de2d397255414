"""The compiled payload: its exact canonical form (snapshot) and the pre-resolved indexes."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gwc.compiler.build.bundle import build
from gwc.compiler.build.compile import compile_registry
from gwc.runtime.bundle import layout
from gwc.runtime.bundle.canonical import canonical_json
from tests.support.helpers import compile_root, load_ok, manifest, rule, write_registry


def signed_payload(root: Path, key, out: Path, serial: int = 1700000000,
                   revision: str = "0123456789abcdef0123456789abcdef01234567") -> tuple[str, bytes]:
    """The payload type and payload of the bundle ``gwc build`` makes."""
    built = build(load_ok(root), key, out, serial, revision)
    env = json.loads(built.envelope)
    return env["payloadType"], base64.b64decode(env["payload"])


def test_example_payload_snapshot(example_root: Path, signing_key, tmp_path: Path, snapshot) -> None:
    payload_type, raw = signed_payload(example_root, signing_key[2], tmp_path / "out")
    doc = layout.document(payload_type, raw)
    assert raw == layout.encode(doc)  # canonical JSON lines: header, servers, rules
    assert json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) == snapshot


def test_payload_does_not_depend_on_the_signing_key(example_root: Path, tmp_path: Path) -> None:
    from gwc.compiler.build.keys import generate_keypair
    a = signed_payload(example_root, generate_keypair(tmp_path / "k1")[2], tmp_path / "a")
    b = signed_payload(example_root, generate_keypair(tmp_path / "k2")[2], tmp_path / "b")
    assert a == b


def test_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": "é"}]}) == \
        '{"a":[1,{"c":"é","d":null}],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_payload_is_independent_of_file_order_and_formatting(tmp_path: Path) -> None:
    """Same meaning, different YAML layout: identical compiled servers and rules."""
    a = write_registry(tmp_path / "a", policies={"team-a/p.yaml": [rule(id="r", action="*")]})
    b = write_registry(tmp_path / "b", manifests={"svc.yaml": (
        "# a comment\ntools:\n  write_it: {approval: required, access: write}\n"
        "  read_it: {access: read}\nvisibility: team:team-a\nupstream: https://svc.internal/mcp\n"
        "owner: team-a\nname: svc\n")},
        policies={"team-a/p.yaml": "- action: '*'\n  resource: {server: svc}\n  subject: {group: g}\n"
                                   "  id: r\n"})
    pa, pb = compile_root(a), compile_root(b)
    assert pa.servers == pb.servers and pa.rules == pb.rules
    assert pa.source_digest != pb.source_digest  # the digest is over the source bytes


def test_tool_rule_indexes_cover_exactly_the_applicable_rules(example_root: Path) -> None:
    p = compile_root(example_root)
    for server_name, server in p.servers.items():
        for tool_name, tool in server.tools.items():
            for effect, indexes in (("allow", tool.allow), ("deny", tool.deny)):
                expected = [i for i, r in enumerate(p.rules)
                            if r.effect == effect and r.server in (server_name, "*")
                            and tool.access in r.actions and (r.tools is None or tool_name in r.tools)]
                assert list(indexes) == expected, (server_name, tool_name, effect)
    deploy = p.servers["deploy"].tools
    assert [p.rules[i].id for i in deploy["deploy"].allow] == [
        "deploy-engineering-staging", "deploy-platform-all", "deploy-sre-all"]
    assert [p.rules[i].id for i in deploy["deploy"].deny] == ["global-contractors-read-only"]
    assert [p.rules[i].id for i in deploy["get_status"].deny] == []


def test_rule_ids_and_sources(example_root: Path) -> None:
    p = compile_root(example_root)
    by_id = {r.id: r for r in p.rules}
    default_id = "policies/data-platform/postgres-prod.yaml#0"
    assert by_id[default_id].source == "policies/data-platform/postgres-prod.yaml:2"
    assert by_id["deploy-sre-all"].source == "policies/platform/deploy.yaml:18"
    assert by_id["deploy-sre-all"].actions == ("read", "write")
    assert by_id["deploy-sre-all"].rate_limit_per_minute == 30
    assert by_id["pg-analytics-public"].tools == ("query",)
    cond = by_id[default_id].conditions
    assert [(c.arg, c.path, c.in_) for c in cond] == [("schemas", ("schemas",), ("public", "analytics"))]


def test_restricted_flag(example_root: Path) -> None:
    p = compile_root(example_root)
    assert {n: s.restricted for n, s in p.servers.items()} == {
        "data-catalog": False, "deploy": True, "incidents": False, "postgres-prod": True,
        "zendesk": True}


def test_server_defaults_and_upstream_auth(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(
        upstream_auth={"type": "static_env", "env": "SVC_TOKEN"})})
    server = compile_root(tmp_path).servers["svc"]
    assert (server.timeout_ms, server.max_concurrency) == (30_000, 32)
    assert (server.upstream_auth.type, server.upstream_auth.env, server.upstream_auth.header,
            server.upstream_auth.scheme) == ("static_env", "SVC_TOKEN", "Authorization", "Bearer")
    assert server.tools["read_it"].timeout_ms == 30_000


def test_compile_refuses_a_registry_with_errors(tmp_path: Path) -> None:
    from gwc.compiler.build.registry import load_registry
    write_registry(tmp_path, manifests={"svc.yaml": manifest(upstream="http://10.0.0.1/")})
    with pytest.raises(ValueError, match="cannot compile a registry with errors"):
        compile_registry(load_registry(tmp_path), 1, "r")
