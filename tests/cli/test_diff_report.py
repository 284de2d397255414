"""`gwc diff` (gwc.compiler.build.diff) between registries and bundles, and `gwc codeowners`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from gwc.compiler.build.bundle import build
from gwc.compiler.build.diff import diff_payloads, render_markdown
from tests.support.helpers import compile_root, dump, gwc, load_ok, rule, unpin_tool


@pytest.fixture
def new_root(example_root: Path, tmp_path: Path) -> Path:
    """A second copy of the example registry, to change."""
    root = tmp_path / "new"
    shutil.copytree(example_root, root)
    return root


def edit_yaml(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(dump(data))


def add_rules(root: Path, rel: str, *rules: dict) -> None:
    path = root / "policies" / rel
    existing = yaml.safe_load(path.read_text()) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump((existing or []) + list(rules)))


def diff_roots(old: Path, new: Path) -> dict:
    return diff_payloads(compile_root(old, 1, "old"), compile_root(new, 2, "new"))


def access_of(d: dict, subject: str) -> dict:
    return next(a for a in d["access"] if a["subject"] == subject)


def test_no_change(example_root: Path, new_root: Path) -> None:
    d = diff_roots(example_root, new_root)
    assert d["changed"] is False
    assert d["access"] == d["tools_added"] == d["servers_added"] == []
    assert (d["old"], d["new"]) == ({"serial": 1, "revision": "old"}, {"serial": 2, "revision": "new"})
    assert "No change in servers, tools or access." in render_markdown(d)


def test_adding_a_server(example_root: Path, new_root: Path) -> None:
    (new_root / "registry" / "billing.yaml").write_text(dump({
        "name": "billing", "owner": "finance", "upstream": "https://billing.internal/mcp",
        "visibility": "team:finance", "pin": "optional",  # the example requires pins by default
        "tools": {"list_invoices": {"access": "read"}}}))
    d = diff_roots(example_root, new_root)
    assert d["changed"] and d["servers_added"] == ["billing"] and d["servers_removed"] == []
    assert d["tools_added"] == [{"server": "billing", "tool": "list_invoices", "access": "read",
                                 "mode": "enforce", "approval": False}]
    finance = access_of(d, "group:finance")
    assert finance["gains"] == [{"server": "billing", "tool": "list_invoices", "access": "read",
                                 "conditional": False}]
    md = render_markdown(d)
    assert "- added `billing`" in md and "- added `billing/list_invoices` (read)" in md
    assert "| `group:finance` | `billing/list_invoices` (read) |  |  |" in md


def test_removing_a_tool(example_root: Path, new_root: Path) -> None:
    edit_yaml(new_root / "registry" / "incidents.yaml",
              lambda m: m["tools"].pop("get_incident"))
    unpin_tool(new_root, "incidents", "get_incident")  # as gwc pin incidents would
    d = diff_roots(example_root, new_root)
    assert d["tools_removed"] == [{"server": "incidents", "tool": "get_incident", "access": "read",
                                   "mode": "enforce", "approval": False}]
    # visible to everyone: every subject loses it
    assert all(any(loss["tool"] == "get_incident" for loss in a["losses"]) for a in d["access"])
    assert "- removed `incidents/get_incident` (read)" in render_markdown(d)


def test_changing_a_tools_access_class(example_root: Path, new_root: Path) -> None:
    def to_write(m: dict) -> None:
        m["tools"]["get_status"] = {"access": "write", "approval": "required"}
    edit_yaml(new_root / "registry" / "deploy.yaml", to_write)
    d = diff_roots(example_root, new_root)
    assert {"server": "deploy", "tool": "get_status", "field": "access", "old": "read",
            "new": "write"} in d["tools_changed"]
    assert {"server": "deploy", "tool": "get_status", "field": "approval", "old": False,
            "new": True} in d["tools_changed"]
    # engineering's grant on deploy is read (and staging deploys): it loses the read it had
    eng = access_of(d, "group:engineering")
    assert eng["losses"] == [{"server": "deploy", "tool": "get_status", "access": "read",
                              "conditional": False}]
    assert "- `deploy/get_status`: access read → write" in render_markdown(d)


def test_group_gains_write_access_through_a_new_rule(example_root: Path, new_root: Path) -> None:
    add_rules(new_root, "data-platform/postgres-prod.yaml",
              rule("postgres-prod", id="pg-analytics-migrate", team="analytics", action="write",
                   tool="run_migration"))
    d = diff_roots(example_root, new_root)
    assert d["tools_added"] == d["tools_changed"] == d["servers_added"] == []
    assert d["access"] == [{"subject": "group:analytics", "gains": [
        {"server": "postgres-prod", "tool": "run_migration", "access": "write",
         "conditional": False}], "losses": [], "changes": []}]
    assert ("| `group:analytics` | `postgres-prod/run_migration` (write) |  |  |"
            in render_markdown(d))


def test_group_loses_access_through_a_new_deny(example_root: Path, new_root: Path) -> None:
    add_rules(new_root, "global/freeze.yaml",
              rule("*", id="freeze-engineering", group="engineering", action="*", effect="deny"))
    d = diff_roots(example_root, new_root)
    eng = access_of(d, "group:engineering")
    lost = {(loss["server"], loss["tool"]) for loss in eng["losses"]}
    assert lost == {("deploy", "list_services"), ("deploy", "get_status"), ("deploy", "deploy"),
                    ("incidents", "list_incidents"), ("incidents", "get_incident"),
                    ("incidents", "create_incident")}
    assert eng["gains"] == []
    assert next(loss for loss in eng["losses"] if loss["tool"] == "deploy")["conditional"] is True
    assert [a["subject"] for a in d["access"]] == ["group:engineering"]


def test_conditional_change_is_reported(example_root: Path, new_root: Path) -> None:
    def unconditional(rules: list) -> None:
        rules[1].pop("conditions")
    edit_yaml(new_root / "policies" / "platform" / "deploy.yaml", unconditional)
    d = diff_roots(example_root, new_root)
    assert access_of(d, "group:engineering")["changes"] == [
        {"server": "deploy", "tool": "deploy", "access": "write", "old": "conditional", "new": "allow"}]


def test_visibility_change(example_root: Path, new_root: Path) -> None:
    edit_yaml(new_root / "registry" / "zendesk.yaml", lambda m: m.update(visibility="team:support"))
    d = diff_roots(example_root, new_root)
    assert d["visibility_changed"] == [{"server": "zendesk", "old": ["group:success", "group:support"],
                                        "new": ["group:support"]}]
    assert {(loss["tool"]) for loss in access_of(d, "group:success")["losses"]} == {"get_ticket",
                                                                              "search_tickets"}


# --- the CLI, on folders and on bundles ----------------------------------------------------------------

def test_cli_diff_on_registry_folders(example_root: Path, new_root: Path) -> None:
    add_rules(new_root, "data-platform/postgres-prod.yaml",
              rule("postgres-prod", team="analytics", action="write", tool="run_migration"))
    md = gwc("diff", example_root, new_root)
    assert md.exit_code == 0, md.stderr
    assert md.stdout.startswith("### gwc access diff\n")
    assert "`group:analytics` | `postgres-prod/run_migration` (write)" in md.stdout
    js = gwc("diff", example_root, new_root, "--format", "json")
    doc = json.loads(js.stdout)
    assert doc["changed"] is True and doc["access"][0]["subject"] == "group:analytics"
    same = gwc("diff", example_root, example_root)
    assert same.exit_code == 0 and "No change in servers, tools or access." in same.stdout
    assert json.loads(gwc("diff", example_root, example_root, "--format", "json").stdout)[
        "changed"] is False


def test_cli_diff_refuses_an_invalid_registry(example_root: Path, new_root: Path) -> None:
    edit_yaml(new_root / "registry" / "deploy.yaml", lambda m: m.update(upstream="http://10.1.1.1/"))
    result = gwc("diff", example_root, new_root)
    assert result.exit_code == 1 and "registry/deploy.yaml:" in result.stderr


def test_cli_diff_on_bundles(example_root: Path, new_root: Path, signing_key, tmp_path: Path) -> None:
    (new_root / "registry" / "incidents.yaml").unlink()
    (new_root / "registry" / "incidents.tools.json").unlink()
    (new_root / "policies" / "sre" / "incidents.yaml").unlink()
    old = build(load_ok(example_root), signing_key[2], tmp_path / "b1", 1, "r1").path
    new = build(load_ok(new_root), signing_key[2], tmp_path / "b2", 2, "r2").path
    result = gwc("diff", old, new, "--trust", signing_key[1], "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["servers_removed"] == ["incidents"]
    assert (doc["old"], doc["new"]) == ({"serial": 1, "revision": "r1"}, {"serial": 2, "revision": "r2"})
    assert len(doc["tools_removed"]) == 3
    md = gwc("diff", old, new)  # unverified read is allowed for diffs
    assert md.exit_code == 0 and "- removed `incidents`" in md.stdout
    same = gwc("diff", old, old, "--trust", signing_key[1])
    assert "No change" in same.stdout


def test_cli_diff_with_trust_refuses_a_tampered_bundle(example_root: Path, signing_key,
                                                       tmp_path: Path) -> None:
    path = build(load_ok(example_root), signing_key[2], tmp_path / "b", 1, "r").path
    env = json.loads(path.read_bytes())
    env["signatures"][0]["keyid"] = "0" * 64
    path.write_text(json.dumps(env))
    result = gwc("diff", path, path, "--trust", signing_key[1])
    assert result.exit_code == 1 and "unknown key" in result.stderr


# --- codeowners ----------------------------------------------------------------------------------------

def test_codeowners(example_root: Path, snapshot) -> None:
    result = gwc("codeowners", example_root)
    assert result.exit_code == 0
    assert result.stdout == snapshot
    lines = result.stdout.splitlines()
    assert "/registry/postgres-prod.yaml @data-platform" in lines
    assert "/registry/postgres-prod.tools.json @data-platform" in lines  # what models are told
    assert "/policies/data-platform/ @data-platform" in lines
    assert lines.index("/policies/global/ @platform @security") < lines.index("/policies/sre/ @sre")


def test_codeowners_with_org(example_root: Path, snapshot) -> None:
    result = gwc("codeowners", example_root, "--org", "acme")
    assert result.exit_code == 0
    assert result.stdout == snapshot
    assert all(" @acme/" in line for line in result.stdout.splitlines()[1:])


def test_codeowners_refuses_an_invalid_registry(example_root: Path) -> None:
    (example_root / "gateway.yaml").unlink()
    assert gwc("codeowners", example_root).exit_code == 1


def test_owner_global_is_reserved(example_root: Path) -> None:
    (example_root / "registry" / "sneaky.yaml").write_text(dump({
        "name": "sneaky", "owner": "global", "upstream": "https://sneaky.internal/mcp",
        "visibility": "everyone", "tools": {"t": {"access": "read"}}}))
    assert gwc("validate", example_root).exit_code == 1
