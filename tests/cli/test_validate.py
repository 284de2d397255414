"""`gwc validate`: every check, its position, its message, and the CLI's exit codes and formats.
Long because it holds one case per diagnostic code (docs/validation.md), as a reviewer looks them up."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gwc.compiler.build.diagnostics import Diagnostic
from tests.support.helpers import (
    GATEWAY,
    compile_root,
    diagnostics,
    dump,
    errors,
    gwc,
    load_ok,
    manifest,
    rule,
    with_code,
    write_registry,
)


def one(diags: list[Diagnostic], code: str) -> Diagnostic:
    found = with_code(diags, code)
    assert len(found) == 1, diags
    return found[0]


def test_minimal_registry_is_clean(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/svc.yaml": [rule(group="team-a")]})
    assert diagnostics(tmp_path) == []


def test_example_registry_is_clean(example_root: Path) -> None:
    assert diagnostics(example_root) == []


# --- syntax ---------------------------------------------------------------------------------------

def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": "name: svc\nowner: [team-a\nupstream: x\n"})
    d = one(diagnostics(tmp_path), "syntax")
    assert (d.file, d.line, d.column, d.severity) == ("registry/svc.yaml", 3, 9, "error")
    assert d.message.startswith("invalid YAML: ")


def test_yaml_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": "name: svc\n\towner: x\n"})
    d = one(diagnostics(tmp_path), "syntax")
    assert (d.line, d.column) == (2, 1)
    assert "tab" in d.message


def test_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = '{\n  "name": "svc",\n  "owner": "team-a"\n  "upstream": "x"\n}\n'
    write_registry(tmp_path, manifests={"svc.json": text})
    d = one(diagnostics(tmp_path), "syntax")
    assert (d.file, d.line, d.column) == ("registry/svc.json", 4, 3)
    assert d.message == "invalid JSON: Expecting ',' delimiter"


def test_duplicate_key_in_yaml(tmp_path: Path) -> None:
    text = dump(manifest()) + "owner: team-b\n"
    write_registry(tmp_path, manifests={"svc.yaml": text})
    d = one(diagnostics(tmp_path), "duplicate-key")
    last_line = text.count("\n")
    assert (d.line, d.column, d.severity) == (last_line, 1, "error")
    assert d.message == "duplicate key 'owner' (first at line 2)"


def test_duplicate_key_in_json(tmp_path: Path) -> None:
    body = json.dumps(manifest(), indent=2)
    text = body[:-2] + ',\n  "name": "svc"\n}\n'
    write_registry(tmp_path, manifests={"svc.json": text})
    d = one(diagnostics(tmp_path), "duplicate-key")
    assert d.line == text.count("\n") - 1 and d.column == 3
    assert d.message == "duplicate key 'name' (first at line 2)"


def test_duplicate_key_in_nested_mapping(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\nvisibility: everyone\n"
            "tools:\n  t: {access: read}\n  t: {access: write}\n")
    write_registry(tmp_path, manifests={"svc.yaml": text})
    d = one(diagnostics(tmp_path), "duplicate-key")
    assert (d.line, d.column) == (7, 3)
    assert d.message == "duplicate key 't' (first at line 6)"


# --- schema ---------------------------------------------------------------------------------------

def test_missing_field_points_at_parent(tmp_path: Path) -> None:
    doc = manifest()
    del doc["owner"]
    write_registry(tmp_path, manifests={"svc.yaml": doc})
    d = one(diagnostics(tmp_path), "schema")
    assert (d.line, d.column) == (1, 1)
    assert d.message == "missing required field 'owner'"


def test_missing_tool_access(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\nvisibility: everyone\n"
            "tools:\n  t: {approval: none}\n")
    write_registry(tmp_path, manifests={"svc.yaml": text})
    d = one(diagnostics(tmp_path), "schema")
    assert (d.line, d.message) == (6, "missing required field 'access'")


def test_unknown_field_suggests_the_close_one(tmp_path: Path) -> None:
    text = dump(manifest()) + "ownr: x\n"
    write_registry(tmp_path, manifests={"svc.yaml": text})
    d = one(diagnostics(tmp_path), "schema")
    assert d.message == "unknown field 'ownr' (did you mean 'owner'?)"
    assert (d.line, d.column) == (text.count("\n"), 1)  # points at the key itself


def test_unknown_field_without_close_match_has_no_suggestion(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(zzzzqqq=1)})
    assert one(diagnostics(tmp_path), "schema").message == "unknown field 'zzzzqqq'"


def test_unknown_access_execute(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\nvisibility: everyone\n"
            "tools:\n  run:\n    access: execute\n")
    write_registry(tmp_path, manifests={"svc.yaml": text})
    d = one(diagnostics(tmp_path), "schema")
    assert d.message == "unknown access 'execute' (expected read or write)"
    assert (d.line, d.column) == (7, 13)


def test_unknown_action_in_rule(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(action="execute")]})
    d = one(diagnostics(tmp_path), "schema")
    assert d.message == "unknown action 'execute' (expected read, write or *)"
    assert d.file == "policies/team-a/p.yaml" and d.line == 5


@pytest.mark.parametrize("name", ["Bad_Name", "-svc", "svc-", "a" * 64, "svc.internal"])
def test_bad_server_name(tmp_path: Path, name: str) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(name=name)})
    d = one(diagnostics(tmp_path), "schema")
    assert d.message.startswith(f"name {name!r} is not valid (expected lowercase letters")
    assert (d.line, d.column) == (1, 7)


def test_bad_tool_name_points_at_the_key(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\nvisibility: everyone\n"
            "tools:\n  ok: {access: read}\n  'bad tool': {access: read}\n")
    write_registry(tmp_path, manifests={"svc.yaml": text})
    d = one(diagnostics(tmp_path), "schema")
    assert (d.line, d.column) == (7, 3)
    assert d.message.startswith("tool name 'bad tool' is not valid")


@pytest.mark.parametrize("field, message", [
    ({"limits": {"per_user_rpm": 0}}, "per_user_rpm 0 is out of bounds (expected >= 1)"),
    ({"limits": {"upstream_rpm": 2_000_000}},
     "upstream_rpm 2000000 is out of bounds (expected <= 1000000)"),
    ({"timeout_ms": 50}, "timeout_ms 50 is out of bounds (expected >= 100)"),
    ({"timeout_ms": 300_001}, "timeout_ms 300001 is out of bounds (expected <= 300000)"),
    ({"max_concurrency": 0}, "max_concurrency 0 is out of bounds (expected >= 1)"),
    ({"tools": {"t": {"access": "read", "timeout_ms": 99}}},
     "timeout_ms 99 is out of bounds (expected >= 100)"),
    ({"tools": {"t": {"access": "read", "limits": {"per_user_rpm": 100_001}}}},
     "per_user_rpm 100001 is out of bounds (expected <= 100000)"),
])
def test_out_of_bounds_limits_and_timeouts(tmp_path: Path, field: dict, message: str) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(**field)})
    assert [d.message for d in errors(diagnostics(tmp_path))] == [message]


def test_bounds_are_inclusive(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(
        timeout_ms=100, max_concurrency=10_000, limits={"per_user_rpm": 1, "upstream_rpm": 1_000_000})})
    assert errors(diagnostics(tmp_path)) == []


def test_rate_limit_per_minute_out_of_bounds(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [
        rule(conditions={"rate_limit_per_minute": 0})]})
    assert one(diagnostics(tmp_path), "schema").message == \
        "rate_limit_per_minute 0 is out of bounds (expected >= 1)"


def test_a_burst_larger_than_its_rate_is_an_error_at_the_burst(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\nvisibility: everyone\n"
            "tools:\n  t:\n    access: read\n    limits: {per_user_rpm: 5, per_user_burst: 6}\n"
            "limits:\n  per_user_rpm: 60\n  per_user_burst: 60\n  upstream_rpm: 100\n"
            "  upstream_burst: 101\n")
    write_registry(tmp_path, manifests={"svc.yaml": text}, policies={"team-a/p.yaml": [
        rule(conditions={"rate_limit_per_minute": 10, "rate_limit_burst": 11}),
        rule(id="no-rate", action="write", conditions={"rate_limit_burst": 2})]})
    found = [(d.file, d.line, d.column, d.message) for d in with_code(diagnostics(tmp_path), "limits")]
    assert found == [  # each at the burst's value
        ("policies/team-a/p.yaml", 8, 23, "rate_limit_burst 11 is larger than rate_limit_per_minute "
                                          "10: a burst is at most the rate (leave it out to allow "
                                          "all 10 at once)"),
        ("policies/team-a/p.yaml", 16, 23, "rate_limit_burst needs rate_limit_per_minute: a burst "
                                           "tightens a rate"),
        ("registry/svc.yaml", 8, 47, "per_user_burst 6 is larger than per_user_rpm 5: a burst is at "
                                     "most the rate (leave it out to allow all 5 at once)"),
        ("registry/svc.yaml", 13, 19, "upstream_burst 101 is larger than upstream_rpm 100: a burst "
                                      "is at most the rate (leave it out to allow all 100 at once)")]
    assert all(d.is_error for d in with_code(diagnostics(tmp_path), "limits"))


@pytest.mark.parametrize("limits", [{"per_user_burst": 0}, {"upstream_burst": 1_000_001}])
def test_a_burst_is_at_least_one(tmp_path: Path, limits: dict) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(limits=limits)})
    assert [d.code for d in errors(diagnostics(tmp_path))] == ["schema"]


def test_unknown_upstream_auth_type(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(upstream_auth={"type": "basic"})})
    assert one(diagnostics(tmp_path), "schema").message.startswith("unknown upstream_auth 'basic'")


def test_subject_names_exactly_one_kind(tmp_path: Path) -> None:
    bad = rule()
    bad["subject"] = {"group": "a", "user": "b"}
    write_registry(tmp_path, policies={"team-a/p.yaml": [bad]})
    assert one(diagnostics(tmp_path), "schema").message == \
        "a subject names exactly one of group, team, user, agent (got group, user)"


def test_condition_object_needs_an_operator(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(conditions={"env": {}})]})
    assert one(diagnostics(tmp_path), "schema").message == \
        "a condition needs at least one of in, not_in, pattern, min, max"


# --- visibility / audiences ---------------------------------------------------------------------------

def test_visibility_comma_string_and_list_compile_alike(tmp_path: Path) -> None:
    as_string = manifest(visibility="team:team-a, group:eng ,user:alice,agent:bot, everyone")
    as_list = manifest(visibility=["team:team-a", "group:eng", "user:alice", "agent:bot", "everyone"])
    a = compile_root(write_registry(tmp_path / "a", manifests={"svc.yaml": as_string}))
    b = compile_root(write_registry(tmp_path / "b", manifests={"svc.yaml": as_list}))
    vis = a.servers["svc"].visibility
    assert vis == b.servers["svc"].visibility
    assert (vis.everyone, vis.groups, vis.users, vis.agents) == (
        True, ("eng", "team-a"), ("alice",), ("bot",))


def test_bad_visibility_entry_in_list_points_at_the_entry(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\n"
            "visibility:\n  - team:team-a\n  - tema:x\n  - nobody\n  - 'group:a b'\n"
            "tools: {t: {access: read}}\n")
    write_registry(tmp_path, manifests={"svc.yaml": text})
    found = with_code(diagnostics(tmp_path), "audience")
    assert [(d.line, d.column) for d in found] == [(6, 5), (7, 5), (8, 5)]
    assert all(d.is_error for d in found)
    assert "'tema:x' is not valid (did you mean 'team'?)" in found[0].message
    assert "'nobody' is not valid" in found[1].message
    assert "'group:a b' is not valid" in found[2].message
    assert "did you mean" not in found[2].message  # 'group' is right; the value is wrong


def test_bad_visibility_entry_in_comma_string_points_at_the_string(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\n"
            "visibility: team:team-a, grup:eng\ntools: {t: {access: read}}\n")
    write_registry(tmp_path, manifests={"svc.yaml": text})
    d = one(diagnostics(tmp_path), "audience")
    assert (d.line, d.column) == (4, 13)
    assert d.message.startswith("audience entry 'grup:eng' is not valid (did you mean 'group'?)")


def test_empty_visibility_is_a_warning(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(visibility="")})
    d = one(diagnostics(tmp_path), "audience")
    assert d.severity == "warning" and "nobody can see this server" in d.message


def test_bad_approvers_entry(tmp_path: Path) -> None:
    m = manifest()
    m["tools"]["write_it"]["approvers"] = ["team:team-a", "sre"]
    write_registry(tmp_path, manifests={"svc.yaml": m})
    assert "'sre' is not valid" in one(diagnostics(tmp_path), "audience").message


# --- upstream URLs -------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://svc.internal/mcp", "https://10.0.0.1/mcp", "http://127.0.0.1:8080/mcp",
    "http://localhost:9000/mcp", "http://[::1]:8080/mcp", "http://127.1.2.3/mcp",
])
def test_upstream_accepted(tmp_path: Path, url: str) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(upstream=url)})
    assert diagnostics(tmp_path) == []


@pytest.mark.parametrize("url, code, fragment", [
    ("http://10.0.0.1/mcp", "url", "must use https (http is allowed only for loopback hosts"),
    ("http://svc.internal/mcp", "url", "got host 'svc.internal'"),
    ("http://localhost.evil.example/mcp", "url", "must use https"),
    ("ftp://svc.internal/mcp", "url", "is not an absolute http(s) URL"),
    ("svc.internal/mcp", "url", "is not an absolute http(s) URL"),
    ("https://user:secret@svc.internal/mcp", "secret-in-registry", "carries credentials"),
    ("https://token@svc.internal/mcp", "secret-in-registry", "carries credentials"),
])
def test_upstream_refused(tmp_path: Path, url: str, code: str, fragment: str) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": "name: svc\nowner: team-a\n"
                                                    f"upstream: {url}\nvisibility: everyone\n"
                                                    "tools: {t: {access: read}}\n"})
    d = one(diagnostics(tmp_path), code)
    assert d.is_error and fragment in d.message
    assert (d.line, d.column) == (3, 11)
    if code == "secret-in-registry":
        assert url not in d.message and "@" not in d.message  # never echoes the credentials


def test_gateway_urls_are_checked(tmp_path: Path) -> None:
    gateway = {"identity": {"issuer": "http://idp.example", "audience": "gwc",
                            "jwks_uri": "https://u:p@idp.example/jwks"}}
    write_registry(tmp_path, gateway=gateway)
    diags = diagnostics(tmp_path)
    assert one(diags, "url").file == "gateway.yaml"
    assert "identity.issuer must use https" in one(diags, "url").message
    assert "identity.jwks_uri carries credentials" in one(diags, "secret-in-registry").message


# --- server-level checks ---------------------------------------------------------------------------

def test_duplicate_server_names_across_files(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(),
                                        "svc-copy.json": manifest(owner="team-b")})
    diags = diagnostics(tmp_path)
    d = one(diags, "duplicate-server")
    assert d.file == "registry/svc.yaml" and d.is_error  # sorted: svc-copy.json was seen first
    assert d.message == "server 'svc' is already defined in registry/svc-copy.json:2"
    assert one(diags, "file-name").file == "registry/svc-copy.json"


def test_file_name_differs_from_server_name_is_a_warning(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"other.yaml": manifest()})
    diags = diagnostics(tmp_path)
    d = one(diags, "file-name")
    assert d.severity == "warning" and (d.line, d.column) == (1, 7)
    assert d.message == "file is named 'other' but defines server 'svc'; name it svc.yaml"
    assert errors(diags) == []


def test_write_tool_without_approval_is_a_warning(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\nvisibility: everyone\n"
            "tools:\n  read_it: {access: read}\n  drop_table: {access: write}\n"
            "  explicit: {access: write, approval: none}\n"
            "  gated: {access: write, approval: required}\n")
    write_registry(tmp_path, manifests={"svc.yaml": text})
    diags = diagnostics(tmp_path)
    d = one(diags, "write-without-approval")
    assert (d.severity, d.line, d.column) == ("warning", 7, 3)
    assert "write tool 'drop_table' runs without approval" in d.message
    assert errors(diags) == []


def test_no_tools_is_a_warning(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(tools={})})
    assert one(diagnostics(tmp_path), "no-tools").severity == "warning"


# --- policy checks -------------------------------------------------------------------------------

def test_rule_naming_unknown_server_suggests(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(server="svcc")]})
    d = one(diagnostics(tmp_path), "unknown-server")
    assert d.message == "unknown server 'svcc' (did you mean 'svc'?)"
    assert (d.file, d.line, d.column) == ("policies/team-a/p.yaml", 4, 13)


def test_rule_naming_unknown_tool_suggests(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(tool=["read_it", "reed_it"])]})
    d = one(diagnostics(tmp_path), "unknown-tool")
    assert d.message == "server 'svc' has no tool 'reed_it' (did you mean 'read_it'?)"


def test_owner_boundary(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(), "other.yaml": manifest("other", "team-b")},
                   policies={"team-a/ok.yaml": [rule("svc")],
                             "team-a/bad.yaml": [rule("other")],
                             "global/any.yaml": [rule("other", group="h"), rule("svc", group="h")]})
    d = one(diagnostics(tmp_path), "owner-boundary")
    assert d.file == "policies/team-a/bad.yaml" and d.is_error
    assert d.message == ("policies/team-a/ may only name servers owned by team-a; 'other' is owned "
                         "by team-b (move this rule to policies/team-b/ or policies/global/)")


def test_owner_boundary_applies_in_nested_folders(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(), "other.yaml": manifest("other", "team-b")},
                   policies={"team-a/sub/deeper.yaml": [rule("other")]})
    assert one(diagnostics(tmp_path), "owner-boundary").file == "policies/team-a/sub/deeper.yaml"


@pytest.mark.parametrize("folder, effect, ok", [
    ("global", "deny", True), ("global", "allow", False), ("team-a", "deny", False),
])
def test_server_star_only_for_deny_rules_in_global(tmp_path: Path, folder: str, effect: str,
                                                   ok: bool) -> None:
    write_registry(tmp_path, policies={f"{folder}/p.yaml": [rule("*", effect=effect, action="write")]})
    found = with_code(diagnostics(tmp_path), "owner-boundary")
    assert found == [] if ok else [d.message for d in found] == [
        "server '*' is allowed only in deny rules under policies/global/"]


def test_server_star_cannot_name_tools(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"global/p.yaml": [rule("*", effect="deny", tool="x")]})
    assert one(diagnostics(tmp_path), "rule").message == \
        "a rule for server '*' cannot name tools (tool names differ per server)"


def test_policy_file_directly_under_policies_is_refused(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"loose.yaml": [rule()]})
    d = one(diagnostics(tmp_path), "policy-layout")
    assert (d.file, d.is_error) == ("policies/loose.yaml", True)
    assert d.message == "policy files live in policies/<team>/ or policies/global/"


def test_policy_file_must_be_a_list(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": rule()})
    assert one(diagnostics(tmp_path), "schema").message == "a policy file is a list of rules"


def test_empty_policy_file_is_fine(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": "# nothing yet\n"})
    assert diagnostics(tmp_path) == []


def test_rate_limit_on_deny_rule(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [
        rule(effect="deny", conditions={"rate_limit_per_minute": 5})]})
    d = one(diagnostics(tmp_path), "rule")
    assert d.is_error and d.message == "rate_limit_per_minute has no meaning on a deny rule"
    assert (d.line, d.column) == (8, 28)  # the rate_limit_per_minute value


def test_invalid_regex(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(conditions={"table": {"pattern": "(a"}})]})
    d = one(diagnostics(tmp_path), "rule")
    assert d.is_error and d.message.startswith("pattern for 'table' is not a valid regular expression")


def test_min_greater_than_max(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [
        rule(conditions={"rows": {"min": 10, "max": 1}})]})
    d = one(diagnostics(tmp_path), "rule")
    assert d.is_error and d.message == "condition on 'rows' can never hold (min > max)"


def test_min_equal_max_is_fine(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [
        rule(conditions={"rows": {"min": 5, "max": 5}})]})
    assert diagnostics(tmp_path) == []


def test_bad_condition_path(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(conditions={"a..b": ["x"]})]})
    assert "condition key 'a..b' is not an argument path" in one(diagnostics(tmp_path), "rule").message


def test_duplicate_rule_ids_across_files(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/a.yaml": [rule(id="same")],
                                       "team-a/b.yaml": [rule(id="same", group="h")]})
    d = one(diagnostics(tmp_path), "duplicate-rule-id")
    assert (d.file, d.line, d.is_error) == ("policies/team-a/b.yaml", 1, True)
    assert d.message == "rule id 'same' is already used at policies/team-a/a.yaml:1"


def test_contradictory_allow_is_a_warning(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [
        rule(id="allow-w", action="write", tool="write_it"),
        rule(id="deny-all", action="*", effect="deny")]})
    registry_ok = load_ok(tmp_path)  # warnings do not fail
    d = one(registry_ok.diagnostics, "contradiction")
    assert d.severity == "warning" and d.line == 1
    assert d.message == ("allow rule allow-w never grants: deny rule deny-all "
                         "(policies/team-a/p.yaml:8) always overrides it")


def test_global_star_deny_contradicts_team_allow(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(id="a", team="g", action="write")],
                                       "global/p.yaml": [rule("*", id="d", action="*", effect="deny")]})
    assert "deny rule d (policies/global/p.yaml:1)" in one(diagnostics(tmp_path), "contradiction").message


def test_refused_star_allow_is_not_reported_as_a_blocking_deny(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(id="a")],
                                       "global/p.yaml": [rule("*", id="star-allow")]})
    diags = diagnostics(tmp_path)
    assert one(diags, "owner-boundary").file == "policies/global/p.yaml"
    assert with_code(diags, "contradiction") == []


@pytest.mark.parametrize("deny", [
    rule(id="d", action="write", effect="deny", conditions={"env": ["prod"]}),  # conditional
    rule(id="d", action="read", effect="deny"),  # other action
    rule(id="d", group="h", action="*", effect="deny"),  # other subject
    rule(id="d", action="write", tool="other", effect="deny"),  # fewer tools
])
def test_no_contradiction_when_the_deny_does_not_cover_the_allow(tmp_path: Path, deny: dict) -> None:
    m = manifest()
    m["tools"]["other"] = {"access": "write", "approval": "required"}
    write_registry(tmp_path, manifests={"svc.yaml": m}, policies={
        "team-a/p.yaml": [rule(id="a", action="write"), deny]})
    assert with_code(diagnostics(tmp_path), "contradiction") == []


def test_shadowed_and_duplicate_allow_rules_are_warnings(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [
        rule(id="broad", action="*"),
        rule(id="narrow", action="read", tool="read_it"),
        rule(id="twin-1", group="h"), rule(id="twin-2", group="h")]})
    registry_ok = load_ok(tmp_path)
    found = with_code(registry_ok.diagnostics, "shadowed")
    assert all(d.severity == "warning" for d in found)
    assert [d.message.split(" is shadowed by ")[0] for d in found] == [
        "allow rule narrow", "allow rule twin-2"]  # of two twins only the later one is reported
    assert "shadowed by broad" in found[0].message and "shadowed by twin-1" in found[1].message


def test_conditional_or_rate_limited_allow_does_not_shadow(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [
        rule(id="cond", action="*", conditions={"env": ["dev"]}),
        rule(id="slow", action="*", conditions={"rate_limit_per_minute": 5}),
        rule(id="fast", action="read", conditions={"rate_limit_per_minute": 50})]})
    assert with_code(diagnostics(tmp_path), "shadowed") == []


def test_a_tighter_burst_is_shadowed_by_the_whole_budget_not_the_reverse(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [
        rule(id="spaced", conditions={"rate_limit_per_minute": 50, "rate_limit_burst": 5}),
        rule(id="whole", conditions={"rate_limit_per_minute": 50})]})
    assert [d.message.split(" (")[0] for d in with_code(diagnostics(tmp_path), "shadowed")] == [
        "allow rule spaced is shadowed by whole"]


def test_tool_action_mismatch_is_a_warning(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(action="write", tool="read_it")]})
    diags = diagnostics(tmp_path)
    d = one(diags, "never-matches")
    assert d.severity == "warning" and errors(diags) == []
    assert d.message == ("tool 'read_it' is a read tool but the rule's action is write: the rule "
                         "never applies to it")


def test_subject_with_white_space(tmp_path: Path) -> None:
    write_registry(tmp_path, policies={"team-a/p.yaml": [rule(group="data platform")]})
    assert "subject group 'data platform' is empty or has white space" in \
        one(diagnostics(tmp_path), "rule").message


# --- files and gateway.yaml --------------------------------------------------------------------------

def test_missing_gateway_yaml(tmp_path: Path) -> None:
    write_registry(tmp_path, gateway=None)
    d = one(diagnostics(tmp_path), "missing-file")
    assert (d.file, d.is_error) == ("gateway.yaml", True)
    assert "gateway.yaml not found" in d.message


def test_missing_registry_folder(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(dump(GATEWAY))
    d = one(diagnostics(tmp_path), "missing-file")
    assert (d.file, d.message) == ("registry", "registry/ folder not found at the registry root")


@pytest.mark.parametrize("identity", [
    {"issuer": "https://i.example", "audience": "gwc"},
    {"issuer": "https://i.example", "audience": "gwc", "jwks_uri": "https://i.example/jwks",
     "jwks_file": "jwks.json"},
])
def test_identity_needs_exactly_one_jwks_source(tmp_path: Path, identity: dict) -> None:
    write_registry(tmp_path, gateway={"identity": identity})
    (tmp_path / "jwks.json").write_text('{"keys": [{"kty": "OKP"}]}')
    d = one(diagnostics(tmp_path), "schema")
    assert (d.file, d.line, d.column) == ("gateway.yaml", 2, 3)
    assert d.message == "identity needs exactly one of jwks_uri, jwks_file"


JWKS = {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                  "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}


def _jwks_registry(root: Path, jwks_text: str | None, name: str = "idp/jwks.json") -> Path:
    write_registry(root, gateway={"identity": {"issuer": "https://idp.example", "audience": "gwc",
                                               "jwks_file": name}})
    if jwks_text is not None:
        (root / "idp").mkdir(exist_ok=True)
        (root / "idp" / "jwks.json").write_text(jwks_text)
    return root


def test_jwks_file_is_embedded_and_covered_by_the_digest(tmp_path: Path) -> None:
    a = compile_root(_jwks_registry(tmp_path / "a", json.dumps(JWKS)))
    assert a.gateway.identity.jwks == JWKS and a.gateway.identity.jwks_uri is None
    other = {"keys": [{**JWKS["keys"][0], "kid": "k2"}]}
    b = compile_root(_jwks_registry(tmp_path / "b", json.dumps(other)))
    assert b.gateway.identity.jwks == other
    assert a.source_digest != b.source_digest


@pytest.mark.parametrize("text, name, fragment", [
    (None, "idp/jwks.json", "cannot read jwks_file 'idp/jwks.json'"),
    ("{not json", "idp/jwks.json", "jwks_file 'idp/jwks.json' is not JSON"),
    ('{"keys": []}', "idp/jwks.json", "is not a JWK Set"),
    ('[1, 2]', "idp/jwks.json", "is not a JWK Set"),
    (json.dumps(JWKS), "../outside.json", "jwks_file '../outside.json' is outside the registry"),
])
def test_bad_jwks_file(tmp_path: Path, text: str | None, name: str, fragment: str) -> None:
    (tmp_path / "outside.json").write_text(json.dumps(JWKS))
    root = _jwks_registry(tmp_path / "root", text, name)
    d = one(diagnostics(root), "jwks")
    assert d.is_error and d.file == "gateway.yaml" and fragment in d.message
    assert (d.line, d.column) == (4, 14)  # the jwks_file value


# --- all errors in one run ---------------------------------------------------------------------------

def broken_registry(root: Path) -> Path:
    """Many independent problems in many files (also the validate snapshot)."""
    write_registry(root, gateway={"identity": {"issuer": "https://idp.example", "audience": "gwc"}},
                   manifests={
                       "svc.yaml": manifest(upstream="http://10.0.0.1/mcp",
                                            visibility=["team:team-a", "nobody"]),
                       "exec.yaml": manifest("exec", tools={"run": {"access": "execute"}}),
                       "broken.json": '{"name": "broken",\n "owner": "team-a",,\n}\n',
                       "named-wrong.yaml": manifest("elsewhere", "team-b", tools={
                           "drop": {"access": "write"}}),
                       "dup.yaml": "name: dup\nname: dup\nowner: team-a\n"
                                   "upstream: https://dup.internal/mcp\nvisibility: everyone\n"
                                   "tools: {t: {access: read}}\n",
                   },
                   policies={
                       "team-a/rules.yaml": [
                           rule(id="r1", server="svcc"),
                           rule(id="r1", server="elsewhere"),
                           rule(id="r3", action="write", tool="read_it"),
                           rule(id="r4", effect="deny", conditions={
                               "rate_limit_per_minute": 5, "q": {"pattern": "("},
                               "n": {"min": 3, "max": 1}}),
                       ],
                       "team-a/overlap.yaml": [rule(id="w", group="h", action="write"),
                                               rule(id="nw", group="h", action="*", effect="deny")],
                       "global/star.yaml": [rule("*", id="star-allow")],
                       "loose.yaml": [rule()],
                   })
    return root


def test_all_errors_are_reported_in_one_run(tmp_path: Path) -> None:
    diags = diagnostics(broken_registry(tmp_path))
    codes = {(d.file, d.code) for d in errors(diags)}
    assert codes >= {
        ("gateway.yaml", "schema"), ("registry/svc.yaml", "url"), ("registry/svc.yaml", "audience"),
        ("registry/exec.yaml", "schema"), ("registry/broken.json", "syntax"),
        ("registry/dup.yaml", "duplicate-key"), ("policies/team-a/rules.yaml", "unknown-server"),
        ("policies/team-a/rules.yaml", "owner-boundary"),
        ("policies/team-a/rules.yaml", "duplicate-rule-id"), ("policies/team-a/rules.yaml", "rule"),
        ("policies/global/star.yaml", "owner-boundary"), ("policies/loose.yaml", "policy-layout"),
    }
    warnings = {(d.file, d.code) for d in diags if not d.is_error}
    assert warnings >= {("registry/named-wrong.yaml", "file-name"),
                        ("registry/named-wrong.yaml", "write-without-approval"),
                        ("policies/team-a/rules.yaml", "never-matches"),
                        ("policies/team-a/overlap.yaml", "contradiction")}
    assert len(with_code(diags, "rule")) == 3  # rate limit on deny, bad regex, min > max


def test_validate_text_snapshot(tmp_path: Path, snapshot) -> None:
    result = gwc("validate", broken_registry(tmp_path / "broken"))
    assert result.exit_code == 1
    assert result.stdout == snapshot


# --- the CLI ---------------------------------------------------------------------------------------

def test_cli_exit_0_when_valid_even_with_warnings(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"other.yaml": manifest()})
    result = gwc("validate", tmp_path)
    assert result.exit_code == 0
    assert "registry/other.yaml:1:7: warning: file is named 'other'" in result.stdout
    assert result.stdout.rstrip().endswith("valid: 0 errors, 1 warning in 2 files")


def test_cli_exit_1_when_invalid(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"svc.yaml": manifest(upstream="http://10.0.0.1/")})
    result = gwc("validate", tmp_path)
    assert result.exit_code == 1
    assert result.stdout.rstrip().endswith("invalid: 1 error, 0 warnings in 2 files")


def test_cli_exit_2_on_usage_error(tmp_path: Path) -> None:
    assert gwc("validate", tmp_path / "does-not-exist").exit_code == 2
    write_registry(tmp_path)
    assert gwc("validate", tmp_path, "--format", "xml").exit_code == 2


def test_cli_default_root_is_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    write_registry(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = gwc("validate")
    assert result.exit_code == 0 and "valid: 0 errors" in result.stdout


def test_cli_text_format_lines(tmp_path: Path) -> None:
    text = ("name: svc\nowner: team-a\nupstream: https://svc.internal/mcp\nvisibility: everyone\n"
            "tools:\n  run:\n    access: execute\n")
    write_registry(tmp_path, manifests={"svc.yaml": text})
    lines = gwc("validate", tmp_path).stdout.splitlines()
    assert lines[0] == ("registry/svc.yaml:7:13: error: unknown access 'execute' (expected read or "
                        "write) [schema]")
    assert all(re.match(r"^\S+:\d+:\d+: (error|warning): .+ \[[a-z-]+\]$", line) for line in lines[:-1])


def test_cli_json_format(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"other.yaml": manifest(upstream="http://10.0.0.1/")})
    result = gwc("validate", tmp_path, "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert (doc["valid"], doc["errors"], doc["warnings"], doc["files"]) == (False, 1, 1, 2)
    assert {d["code"] for d in doc["diagnostics"]} == {"url", "file-name"}
    first = doc["diagnostics"][0]
    assert set(first) == {"file", "line", "column", "severity", "code", "message"}


def test_cli_json_format_when_valid(tmp_path: Path) -> None:
    write_registry(tmp_path)
    doc = json.loads(gwc("validate", tmp_path, "--format", "json").stdout)
    assert doc == {"valid": True, "errors": 0, "warnings": 0, "files": 2, "diagnostics": []}


def test_cli_github_format(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={"other.yaml": manifest(upstream="http://10.0.0.1/")})
    result = gwc("validate", tmp_path, "--format", "github")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("::warning file=registry/other.yaml,line=1,col=7,title=gwc file-name::"
                               "file is named 'other'")
    assert lines[1].startswith("::error file=registry/other.yaml,line=3,col=11,title=gwc url::"
                               "upstream must use https")


def test_github_format_escapes_properties() -> None:
    from gwc.compiler.build.diagnostics import render
    d = Diagnostic("a,b:c.yaml", 1, 2, "error", "x", "50% off\nnext")
    line = render([d], 1, "github").splitlines()[0]
    assert line == "::error file=a%2Cb%3Ac.yaml,line=1,col=2,title=gwc x::50%25 off%0Anext"
