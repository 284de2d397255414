"""The JSON Schemas shipped for editors: in step with the models, valid, and agreeing with the examples."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from gwc.compiler.build import jsonschemas
from gwc.compiler.build.locks import is_lock
from tests.support.helpers import gwc, manifest, rule
from tests.support.repo import REPO

NAMES = ["manifest.schema.json", "policy.schema.json", "gateway.schema.json"]


def schema(name: str) -> dict:
    return json.loads((jsonschemas.SCHEMA_DIR / name).read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(name))


def load(path: Path):
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def test_committed_schemas_match_the_models() -> None:
    generated = jsonschemas.generate()
    assert sorted(generated) == sorted(NAMES)
    committed = {p.name for p in jsonschemas.SCHEMA_DIR.glob("*.json")}
    assert committed == set(NAMES)
    for name, text in generated.items():
        assert (jsonschemas.SCHEMA_DIR / name).read_text() == text, (
            f"{name} is stale: run `gwc schema` and commit the result")


def test_gwc_schema_writes_the_same_files(tmp_path: Path) -> None:
    result = gwc("schema", "--out", tmp_path)
    assert result.exit_code == 0
    for name in NAMES:
        assert (tmp_path / name).read_text() == (jsonschemas.SCHEMA_DIR / name).read_text()


@pytest.mark.parametrize("name", NAMES)
def test_each_schema_is_valid_draft_2020_12(name: str) -> None:
    doc = schema(name)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == f"https://gwc.dev/schemas/{name}"
    jsonschema.Draft202012Validator.check_schema(doc)


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "registry").iterdir() if not is_lock(p)),
                         ids=lambda p: p.name)
def test_example_manifests_validate(path: Path) -> None:
    assert list(validator("manifest.schema.json").iter_errors(load(path))) == []


@pytest.mark.parametrize("path", sorted((REPO / "policies").rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(REPO / "policies")))
def test_example_policies_validate(path: Path) -> None:
    assert list(validator("policy.schema.json").iter_errors(load(path))) == []


def test_example_gateway_validates() -> None:
    assert list(validator("gateway.schema.json").iter_errors(load(REPO / "gateway.yaml"))) == []


def test_design_md_forms_validate() -> None:
    """The two input forms DESIGN.md says must validate as-is."""
    m = {"name": "data-catalog", "owner": "data-platform", "upstream": "https://catalog.internal/mcp",
         "visibility": "team:data-platform, team:analytics",
         "tools": {"search_tables": {"access": "read"},
                   "request_export": {"access": "write", "approval": "required"}},
         "limits": {"per_user_rpm": 60}}
    assert list(validator("manifest.schema.json").iter_errors(m)) == []
    p = [{"subject": {"group": "data-platform"}, "resource": {"server": "postgres-prod"},
          "action": "read",
          "conditions": {"schemas": ["public", "analytics"], "rate_limit_per_minute": 60}}]
    assert list(validator("policy.schema.json").iter_errors(p)) == []


def test_manifest_with_access_execute_fails() -> None:
    m = manifest(tools={"run": {"access": "execute"}})
    errors = list(validator("manifest.schema.json").iter_errors(m))
    assert errors and any("execute" in e.message for e in errors)
    assert any(list(e.absolute_path)[-3:] == ["tools", "run", "access"] for e in errors)


@pytest.mark.parametrize("change", [
    {"ownr": "x"},  # unknown field
    {"name": "Bad_Name"},
    {"timeout_ms": 50},
    {"visibility": 5},
])
def test_manifest_schema_refuses_what_the_compiler_refuses(change: dict) -> None:
    assert not validator("manifest.schema.json").is_valid(manifest(**change))


def test_policy_schema_refuses_bad_rules() -> None:
    v = validator("policy.schema.json")
    assert v.is_valid([rule(conditions={"env": ["dev"], "rows": {"max": 5}})])
    assert not v.is_valid([rule(action="execute")])
    assert not v.is_valid([rule(effect="maybe")])
    assert not v.is_valid(rule())  # a file is a list
    bad = rule()
    bad["resource"]["servr"] = "x"
    assert not v.is_valid([bad])
