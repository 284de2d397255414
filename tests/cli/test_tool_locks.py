"""Lock files (registry/<server>.tools.json, issue 14) at build time: read as locks and not manifests,
every diagnostic with its exact position and code (docs/validation.md), policy conditions held
against the pinned input schemas, and what the bundle carries (and leaves out when nothing is
pinned)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gwc.compiler.build.compile import compile_data
from gwc.compiler.build.diagnostics import Diagnostic
from gwc.compiler.build.locks import lock_path, render_lock
from gwc.compiler.build.models import ToolDefinition
from gwc.compiler.build.registry import load_registry
from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.tool_definitions import DEFINITION_FIELDS, definition_digest
from tests.support.helpers import (
    GATEWAY,
    compile_root,
    diagnostics,
    gwc,
    load_ok,
    manifest,
    rule,
    unpin_all,
    write_registry,
)

# the definitions an upstream lists for the helper manifest's two tools
READ_IT: dict[str, Any] = {
    "description": "Read a record.",
    "inputSchema": {
        "type": "object",
        "properties": {
            "env": {"type": "string", "enum": ["dev", "prod"]},
            "limit": {"type": "integer", "minimum": 1},
            "dry_run": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "owner": {"anyOf": [{"$ref": "#/$defs/Person"}, {"type": "null"}]},
            "note": {"description": "anything goes"},
        },
        "required": ["env"],
        "$defs": {"Person": {"type": "object", "properties": {"age": {"type": "integer"}}}},
    },
    "annotations": {"readOnlyHint": True},
}
WRITE_IT: dict[str, Any] = {
    "title": "Write it",
    "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}},
    "outputSchema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
}
TOOLS = {"read_it": READ_IT, "write_it": WRITE_IT}
LOCK = "registry/svc.tools.json"
POLICY = "policies/team-a/p.yaml"


def registry(root: Path, tools: dict[str, Any] | None = TOOLS, *, gateway: dict[str, Any] = GATEWAY,
             policies: dict[str, Any] | None = None, **fields: Any) -> Path:
    """The helper registry (server svc: read_it, write_it) with its lock as `gwc pin` writes it."""
    write_registry(root, gateway=gateway, manifests={"svc.yaml": manifest(**fields)},
                   policies=policies)
    if tools is not None:
        lock_path(root, "svc").write_text(render_lock("svc", copy.deepcopy(tools)))
    return root


def with_tool(name: str, **changes: Any) -> dict[str, Any]:
    """TOOLS with one definition's fields replaced (None: removed)."""
    tools = copy.deepcopy(TOOLS)
    for field, value in changes.items():
        if value is None:
            del tools[name][field]
        else:
            tools[name][field] = value
    return tools


def line_of(root: Path, rel: str, needle: str, after: str = "") -> int:
    """The 1-based line of the first line containing ``needle`` (after the first containing
    ``after``): the lock's layout is `gwc pin`'s, so positions are read off the file itself."""
    lines = (root / rel).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines) if i >= start and needle in line) + 1


def only(root: Path, code: str) -> Diagnostic:
    found = [d for d in diagnostics(root) if d.code == code]
    assert len(found) == 1, diagnostics(root)
    return found[0]


def where(d: Diagnostic) -> tuple[str, int, str, str]:
    return d.file, d.line, d.severity, d.code


# --- the lock as a file -----------------------------------------------------------------------------

def test_a_lock_is_read_as_a_lock_not_a_manifest(tmp_path: Path) -> None:
    root = registry(tmp_path)
    assert diagnostics(root) == []
    loaded = load_ok(root)
    assert sorted(loaded.servers) == ["svc"]
    entry = loaded.servers["svc"]
    assert entry.lock is not None and entry.lock.rel == LOCK
    assert entry.pins == TOOLS
    assert loaded.files[LOCK] == lock_path(root, "svc").read_bytes()  # in the source digest


def test_the_lock_model_has_the_definition_fields() -> None:
    assert set(ToolDefinition.model_fields) == set(DEFINITION_FIELDS)


def test_lock_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    root = registry(tmp_path, tools=None)
    lock_path(root, "svc").write_text('{\n  "server": "svc",\n  "tools": {\n}\n')
    d = only(root, "syntax")
    assert (d.file, d.line, d.column) == (LOCK, 5, 1)


@pytest.mark.parametrize(("document", "needle", "message"), [
    ([], "[", "a lock file is an object with 'server' and 'tools', as `gwc pin` writes it"),
    ({"server": "svc"}, "{", "missing required field 'tools'"),
    ({"server": "svc", "tools": {"read_it": "Read."}}, '"read_it"',
     "the definition of tool 'read_it' is not an object"),
    ({"server": "svc", "tools": {}, "version": 2}, '"version"', "unknown field 'version'"),
    ({"server": 5, "tools": {}}, '"server"', "server: input should be a valid string (got 5)"),
])
def test_lock_form(tmp_path: Path, document: dict, needle: str, message: str) -> None:
    root = registry(tmp_path, tools=None)
    lock_path(root, "svc").write_text(json.dumps(document, indent=2))
    d = only(root, "schema")
    assert (d.file, d.line, d.message) == (LOCK, line_of(root, LOCK, needle), message)


@pytest.mark.parametrize(("changes", "needle", "message"), [
    ({"inputSchema": None}, '"read_it"', "missing required field 'inputSchema'"),
    ({"description": 5}, '"description": 5', "description: input should be a valid string (got 5)"),
    ({"annotations": "read only"}, '"annotations"',
     "annotations: input should be a valid dictionary (got 'read only')"),
    ({"icons": []}, '"icons"', "unknown field 'icons'"),
])
def test_definition_form(tmp_path: Path, changes: dict, needle: str, message: str) -> None:
    root = registry(tmp_path, with_tool("read_it", **changes))
    d = only(root, "schema")
    assert (d.file, d.line, d.message) == (LOCK, line_of(root, LOCK, needle), message)
    # one bad definition hides no other: write_it is still pinned
    assert list(load_registry(root).servers["svc"].pins) == ["write_it"]


@pytest.mark.parametrize("field", ["inputSchema", "outputSchema"])
def test_schemas_have_type_object_at_the_root(tmp_path: Path, field: str) -> None:
    root = registry(tmp_path, with_tool("write_it", **{field: {"type": "array"}}))
    d = only(root, "tool-schema")
    assert where(d) == (LOCK, line_of(root, LOCK, '"type": "array"', after='"write_it"'), "error",
                        "tool-schema")
    assert d.message.startswith(f'{field} must have type "object" at its root (MCP requires it)')


def test_a_schema_without_type_is_refused_at_the_schema(tmp_path: Path) -> None:
    root = registry(tmp_path, with_tool("write_it", inputSchema={"properties": {}}))
    d = only(root, "tool-schema")
    assert d.line == line_of(root, LOCK, '"inputSchema"', after='"write_it"')


def test_a_definition_with_errors_still_counts_as_pinned(tmp_path: Path) -> None:
    """Its own error is the one to fix: no not-pinned for it, and its conditions are not checked
    against a schema that is not one."""
    broken = {"type": "object", "properties": []}
    root = registry(tmp_path, with_tool("read_it", inputSchema=broken), pin="required",
                    policies={"team-a/p.yaml": [rule(tool="read_it", conditions={"env": "dev"})]})
    assert [(d.file, d.code) for d in diagnostics(root)] == [(LOCK, "tool-schema")]


def test_unsupported_dialect(tmp_path: Path) -> None:
    schema = {"$schema": "https://json-schema.org/draft/2019-09/schema", "type": "object"}
    root = registry(tmp_path, with_tool("write_it", inputSchema=schema))
    d = only(root, "tool-schema")
    assert where(d) == (LOCK, line_of(root, LOCK, "2019-09"), "error", "tool-schema")
    assert d.message == (
        'inputSchema uses $schema "https://json-schema.org/draft/2019-09/schema": only JSON Schema '
        "2020-12 (https://json-schema.org/draft/2020-12/schema) and JSON Schema draft-07 "
        "(http://json-schema.org/draft-07/schema) are supported (no $schema means 2020-12)")


def test_the_dialect_decides_what_is_valid(tmp_path: Path) -> None:
    """Array-form items is draft-07 only: without $schema (2020-12) it is refused, pointing into
    the schema."""
    tuple_items = {"type": "object", "properties": {"pair": {"type": "array", "items": [{"type": "string"}]}}}
    root = registry(tmp_path / "a", with_tool("write_it", inputSchema=tuple_items))
    d = only(root, "tool-schema")
    assert d.line == line_of(root, LOCK, '"items"', after='"pair"')
    assert d.message.startswith("inputSchema is not valid JSON Schema 2020-12: ")
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", **tuple_items}
    assert diagnostics(registry(tmp_path / "b", with_tool("write_it", inputSchema=draft7))) == []


def test_meta_schema_errors_point_at_the_offending_key(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "bool"}}}
    root = registry(tmp_path, with_tool("write_it", outputSchema=schema))
    d = only(root, "tool-schema")
    assert where(d) == (LOCK, line_of(root, LOCK, '"type": "bool"'), "error", "tool-schema")
    assert d.message.startswith('outputSchema is not valid JSON Schema 2020-12: "bool" is not valid')


def test_an_input_schema_nodes_cannot_compile(tmp_path: Path) -> None:
    """A pattern that is no regular expression passes the meta-schema, but a node would refuse the
    whole bundle."""
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "["}}}
    root = registry(tmp_path, with_tool("write_it", inputSchema=schema))
    d = only(root, "tool-schema")
    assert d.line == line_of(root, LOCK, '"inputSchema"', after='"write_it"')
    assert d.message.startswith("nodes cannot compile this inputSchema, and would refuse the bundle: ")


def test_references_stay_inside_the_schema(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {
        "a": {"$ref": "#/$defs/A"}, "b": {"$ref": "https://schemas.example/b.json"},
        "c": {"type": "object", "default": {"$ref": "https://not.a.reference/"}}},
        "$defs": {"A": {"type": "string"}}}
    root = registry(tmp_path, with_tool("write_it", inputSchema=schema))
    d = only(root, "remote-ref")
    assert where(d) == (LOCK, line_of(root, LOCK, "schemas.example"), "error", "remote-ref")
    assert d.message == ("inputSchema refers to 'https://schemas.example/b.json' outside itself: nodes "
                         "never fetch schemas, so a pinned schema may only use references inside it "
                         '("#/$defs/...")')


# --- locks and manifests ----------------------------------------------------------------------------

def test_a_lock_for_no_server(tmp_path: Path) -> None:
    root = registry(tmp_path)
    lock_path(root, "gone").write_text(render_lock("gone", {}))
    d = only(root, "lock-server")
    assert where(d) == ("registry/gone.tools.json", line_of(root, "registry/gone.tools.json", '"server"'),
                        "error", "lock-server")
    assert d.message.startswith("no server 'gone' in registry/ for this lock: delete it")


def test_a_lock_whose_server_is_not_its_file_name(tmp_path: Path) -> None:
    root = registry(tmp_path)
    (root / "registry/other.tools.json").write_text(render_lock("svc", {}))
    d = only(root, "lock-server")
    assert (d.file, d.line) == ("registry/other.tools.json", 3)
    assert d.message == ("this lock is for server 'svc' but its file is named after 'other': `gwc pin "
                         "svc` writes registry/svc.tools.json; move it there")


def test_a_pinned_tool_the_manifest_does_not_declare(tmp_path: Path) -> None:
    root = registry(tmp_path, {**TOOLS, "retired": WRITE_IT})
    d = only(root, "undeclared-pin")
    assert where(d) == (LOCK, line_of(root, LOCK, '"retired"'), "error", "undeclared-pin")
    assert d.message == ("tool 'retired' is pinned but server 'svc' does not declare it "
                         "(registry/svc.yaml): run `gwc pin svc` again or declare it")


def test_pin_required_by_the_manifest(tmp_path: Path) -> None:
    root = registry(tmp_path, {"read_it": READ_IT}, pin="required")
    d = only(root, "not-pinned")
    assert where(d) == ("registry/svc.yaml", line_of(root, "registry/svc.yaml", "write_it:"), "error",
                        "not-pinned")
    assert d.message == ("tool 'write_it' is not pinned and server 'svc' requires pins (pin: required "
                         "in its manifest): run `gwc pin svc` and commit registry/svc.tools.json")


def test_pin_required_by_the_gateway_without_a_lock(tmp_path: Path) -> None:
    gateway = {**GATEWAY, "tool_contracts": {"pin": "required"}}
    root = registry(tmp_path, None, gateway=gateway)
    found = [d for d in diagnostics(root) if d.code == "not-pinned"]
    assert [(d.line, d.message.split(" requires pins ")[1][:43]) for d in found] == [
        (line_of(root, "registry/svc.yaml", "read_it:"), "(gateway.yaml tool_contracts.pin: required)"),
        (line_of(root, "registry/svc.yaml", "write_it:"), "(gateway.yaml tool_contracts.pin: required)")]
    # the manifest's own setting wins
    assert diagnostics(registry(tmp_path / "b", None, gateway=gateway, pin="optional")) == []


def test_pins_are_optional_by_default(tmp_path: Path) -> None:
    assert diagnostics(registry(tmp_path, {"read_it": READ_IT})) == []


def test_gwc_validate_prints_lock_diagnostics(tmp_path: Path) -> None:
    root = registry(tmp_path, {**TOOLS, "retired": WRITE_IT})
    result = gwc("validate", root)
    assert result.exit_code == 1
    line = line_of(root, LOCK, '"retired"')
    assert f"{LOCK}:{line}:5: error: tool 'retired' is pinned" in result.stdout


# --- policy conditions against the pinned schemas ---------------------------------------------------

def policy_registry(root: Path, *rules: dict[str, Any]) -> Path:
    return registry(root, policies={"team-a/p.yaml": list(rules)})


def condition_diagnostics(root: Path) -> list[Diagnostic]:
    return [d for d in diagnostics(root) if d.code in ("unknown-argument", "argument-type")]


def test_conditions_that_fit_the_schema_are_clean(tmp_path: Path) -> None:
    root = policy_registry(tmp_path, rule(tool="read_it", conditions={
        "env": ["dev", "prod"], "limit": {"min": 1, "max": 10}, "dry_run": False,
        "tags": {"in": ["a"], "pattern": "[a-z]+"},  # a list argument: each element is checked
        "owner.age": {"max": 90},  # through anyOf and a $ref into $defs
        "note": [1, "x", True]}))  # no type: anything
    assert diagnostics(root) == []


def test_an_argument_the_named_tool_does_not_take_is_an_error(tmp_path: Path) -> None:
    root = policy_registry(tmp_path, rule(tool="read_it", conditions={"environment": "dev"}))
    d = only(root, "unknown-argument")
    assert where(d) == (POLICY, line_of(root, POLICY, "environment:"), "error", "unknown-argument")
    assert d.message == ("argument 'environment' is not in the pinned input schema of tool 'read_it' "
                         "(registry/svc.tools.json): the condition never holds for that tool; fix "
                         "the argument path, or run `gwc pin svc` if the tool changed")


def test_an_argument_some_tools_of_the_server_lack_is_a_warning(tmp_path: Path) -> None:
    """A rule for the whole server: the condition may be meant for its other tools."""
    root = policy_registry(tmp_path, rule(action="*", conditions={"id": {"pattern": "[0-9]+"}}),
                           rule(action="*", effect="deny", conditions={"env": "prod"}))
    allow, deny = condition_diagnostics(root)
    assert where(allow) == (POLICY, line_of(root, POLICY, "id:"), "warning", "unknown-argument")
    assert allow.message == (
        "argument 'id' is not in the pinned input schema of tool 'read_it' (registry/svc.tools.json): "
        "the condition never holds for that tool, so this rule never grants that tool (list the "
        "tools it is meant for in resource.tool)")
    assert where(deny) == (POLICY, line_of(root, POLICY, "env:"), "warning", "unknown-argument")
    assert "tool 'write_it'" in deny.message and "a deny rule counts a missing argument as a match" \
        in deny.message


def test_a_path_reads_through_objects_only(tmp_path: Path) -> None:
    """tags is a list: `tags.name` never reaches a value at the node (argument_at)."""
    root = policy_registry(tmp_path, rule(tool="read_it", conditions={"tags.name": "x",
                                                                      "owner.name": "x"}))
    assert sorted(d.message.split("'")[1] for d in condition_diagnostics(root)) == ["owner.name",
                                                                                     "tags.name"]


@pytest.mark.parametrize(("condition", "loc_needle", "start"), [
    ({"limit": {"in": [1, "2"]}}, "- '2'", 'in value "2" never matches argument \'limit\''),
    ({"limit": True}, "limit: true", "in value true never matches argument 'limit'"),  # bool is no int
    ({"dry_run": {"not_in": ["true"]}}, "- 'true'",
     'not_in value "true" never matches argument \'dry_run\''),
    ({"dry_run": [1]}, "- 1", "in value 1 never matches argument 'dry_run'"),
    ({"env": ["dev", "staging"]}, "- staging", 'in value "staging" never matches argument \'env\''),
    ({"tags": [3]}, "- 3", "in value 3 never matches argument 'tags'"),  # the items' type
    ({"owner.age": ["40"]}, "- '40'", 'in value "40" never matches argument \'owner.age\''),
    ({"limit": {"pattern": "[0-9]+"}}, "pattern:", "pattern never applies to argument 'limit'"),
    ({"env": {"min": 1}}, "min: 1", "min never applies to argument 'env'"),
    ({"dry_run": {"max": 1}}, "max: 1", "max never applies to argument 'dry_run'"),
])
def test_values_and_operators_must_fit_the_argument(tmp_path: Path, condition: dict, loc_needle: str,
                                                    start: str) -> None:
    root = policy_registry(tmp_path, rule(tool="read_it", conditions=condition))
    d = only(root, "argument-type")
    assert where(d) == (POLICY, line_of(root, POLICY, loc_needle, after="conditions:"), "error",
                        "argument-type")
    assert d.message.startswith(start + " of tool 'read_it': the pinned input schema "
                                        "(registry/svc.tools.json) ")


def test_a_value_misfit_names_the_schema(tmp_path: Path) -> None:
    root = policy_registry(tmp_path, rule(tool="read_it", conditions={"limit": "5"}))
    assert only(root, "argument-type").message == (
        "in value \"5\" never matches argument 'limit' of tool 'read_it': the pinned input schema "
        "(registry/svc.tools.json) does not allow it (its schema: {\"minimum\": 1, \"type\": "
        "\"integer\"})")


def test_only_the_tools_a_rule_applies_to_are_checked(tmp_path: Path) -> None:
    """A read rule never applies to write_it, and an unpinned tool has nothing to check."""
    root = policy_registry(tmp_path, rule(action="read", conditions={"env": "dev"}))
    assert condition_diagnostics(root) == []
    unpinned = registry(tmp_path / "b", {"read_it": READ_IT},
                        policies={"team-a/p.yaml": [rule(action="write", conditions={"x": 1})]})
    assert condition_diagnostics(unpinned) == []


# --- the bundle -------------------------------------------------------------------------------------

def test_the_bundle_carries_the_pins_and_their_digests(tmp_path: Path) -> None:
    payload = compile_root(registry(tmp_path))
    for name, definition in TOOLS.items():
        pinned = payload.servers["svc"].tools[name].pinned
        assert pinned is not None
        assert pinned.definition == definition and pinned.digest == definition_digest(definition)
    # the node's own validator, compiled when the bundle is read
    validator = payload.servers["svc"].tools["read_it"].pinned.validator  # type: ignore[union-attr]
    assert validator.is_valid({"env": "dev"}) and not validator.is_valid({"env": "staging"})


def test_drift_and_recheck_are_resolved(tmp_path: Path) -> None:
    gateway = {**GATEWAY, "tool_contracts": {"drift": "report", "recheck_s": 30}}
    payload = compile_root(registry(tmp_path / "a", gateway=gateway))
    assert payload.servers["svc"].drift == "report" and payload.gateway.drift_recheck_s == 30
    payload = compile_root(registry(tmp_path / "b", gateway=gateway, drift="refuse"))
    assert payload.servers["svc"].drift == "refuse"  # the manifest's own setting wins


def test_recheck_bounds(tmp_path: Path) -> None:
    root = registry(tmp_path, gateway={**GATEWAY, "tool_contracts": {"recheck_s": 5}})
    d = only(root, "schema")
    assert (d.file, d.message) == ("gateway.yaml", "recheck_s 5 is out of bounds (expected >= 10)")


def without_digest(root: Path) -> bytes:
    data = compile_data(load_ok(root), 1, "r")
    del data["source_digest"]
    return canonical_json(data)


def test_an_unpinned_registry_compiles_as_before(tmp_path: Path, example_root: Path) -> None:
    """Defaults are left out: no pinned, drift or drift_recheck_s unless set, so a registry that
    pins nothing builds to the bytes it did before tool contracts (the example registry, its
    locks taken out here, pins every tool; its exact payload is a snapshot in test_compile.py)."""
    data = compile_data(load_ok(unpin_all(example_root)), 1, "r")
    text = canonical_json(data).decode()
    assert '"pinned"' not in text and '"drift' not in text
    plain = registry(tmp_path / "plain", None)
    spelled = registry(tmp_path / "spelled", None, drift="refuse", pin="optional", gateway={
        **GATEWAY, "tool_contracts": {"pin": "optional", "drift": "refuse", "recheck_s": 60}})
    assert without_digest(plain) == without_digest(spelled)
    assert '"drift' not in without_digest(plain).decode()
