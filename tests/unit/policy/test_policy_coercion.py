"""Conditions judge a value in every form an upstream may read it in (docs/policies.md, "Values the
upstream reads differently"): pydantic's lax mode reads "yes" and 1 as true and "0" as 0, the MCP
SDK parses a string holding JSON. A deny applies if any reading triggers it; an allow holds only if
the value as sent does and no other reading fails.

Two servers, compiled once: ``d`` has one deny rule per tool and no allow rule, ``a`` one allow
rule per tool. Each case is (tool, arguments, effect).
"""
from __future__ import annotations

from typing import Any

import pytest

from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.policy.decide import MAX_READ, Principal, decide
from tests.support.helpers import compile_root, manifest, rule, write_registry

DENY_RULES = {
    "force": {"force": True},
    "replicas": {"replicas": 0},
    "schemas": {"schemas": ["finance"]},
    "nested_force": {"target.force": True},
    "nested_schemas": {"target.schemas": ["finance"]},
    "flags": {"flags": [True]},
    "rows": {"rows": {"min": 1000}},
    "branch": {"branch": {"pattern": "release/.*"}},
    "env_not_in": {"env": {"not_in": ["dev", "staging"]}},
    "env": {"env": "prod"},
}
ALLOW_RULES = {
    "force": {"force": False},
    "replicas": {"replicas": {"min": 1, "max": 10}},
    "schemas": {"schemas": {"not_in": ["secret"]}},
    "ticket": {"ticket": {"pattern": "[0-9]+"}},
    "mixed": {"v": {"not_in": [0, "x"]}},
    "env": {"env": {"not_in": ["prod"]}},
}
G = Principal("u", frozenset({"g"}))
LONG_JSON = "[" + '"public", ' * (MAX_READ // 10) + '"public"]'


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> BundlePayload:
    root = tmp_path_factory.mktemp("coercion")

    def server(name: str, rules: dict[str, dict], effect: str) -> tuple[dict, list[dict]]:
        tools = {tool: {"access": "write", "approval": "none"} for tool in rules}
        return (manifest(name, visibility="group:g", tools=tools),
                [rule(name, action="write", tool=tool, effect=effect, conditions=conditions)
                 for tool, conditions in rules.items()])
    (d, d_rules), (a, a_rules) = server("d", DENY_RULES, "deny"), server("a", ALLOW_RULES, "allow")
    write_registry(root, manifests={"d.yaml": d, "a.yaml": a},
                   policies={"team-a/rules.yaml": d_rules + a_rules})
    return compile_root(root)


def effect(payload: BundlePayload, server: str, tool: str, arguments: dict[str, Any]) -> str:
    return decide(payload, G, server, tool, arguments).effect


@pytest.mark.parametrize("value, expected", [
    *[(v, "deny") for v in ("true", "TRUE", " yes ", "on", "y", "t", "1", 1, 1.0, True)],
    *[(v, "allow") for v in ("false", "Off", "no", "n", "f", "0", 0, 0.0, False)],
    # no reading is a boolean: cannot be judged
    *[(v, "deny") for v in ("maybe", 2, "2", "1.0", "", None, "null", {}, [])],
])
def test_deny_on_a_boolean(payload: BundlePayload, value: Any, expected: str) -> None:
    assert effect(payload, "d", "force", {"force": value}) == expected


@pytest.mark.parametrize("value, expected", [
    *[(v, "deny") for v in (0, 0.0, "0", " 0 ", "0.0", "-0", "+0", "00", "0e3", "0_0")],
    *[(v, "allow") for v in (3, 3.0, "3", " 3 ", "3.0", "1e1", "1_000")],
    # no reading is a number (booleans are not numbers), or too long a number to read
    *[(v, "deny") for v in ("three", "", True, False, None, "null", "0x0", "1" * (MAX_READ + 1))],
])
def test_deny_on_a_number(payload: BundlePayload, value: Any, expected: str) -> None:
    assert effect(payload, "d", "replicas", {"replicas": value}) == expected


@pytest.mark.parametrize("value, expected", [
    ("finance", "deny"),
    (["public", "finance"], "deny"),
    ('["finance"]', "deny"),  # the SDK parses it into a list
    (' ["public", "finance"] ', "deny"),
    ('"finance"', "deny"),  # a JSON string
    (["public", '["finance"]'], "deny"),  # an element holding JSON is read as JSON too
    # what a JSON string parses into cannot be judged: an empty list, null, an object, numbers
    *[(v, "deny") for v in ("[]", "null", '{"name": "finance"}', "[5]", '[["public"]]', LONG_JSON)],
    (["public"], "allow"),
    ("public", "allow"),
    ('["public", "analytics"]', "allow"),
    ('["public"', "allow"),  # not JSON: the upstream gets the string
    ("x" * 10 * MAX_READ, "allow"),  # a long string that is neither JSON nor a number is a string
])
def test_deny_on_a_list_argument(payload: BundlePayload, value: Any, expected: str) -> None:
    assert effect(payload, "d", "schemas", {"schemas": value}) == expected


@pytest.mark.parametrize("tool, arguments, expected", [
    ("nested_force", {"target": {"force": "yes"}}, "deny"),
    ("nested_force", {"target": {"force": 1}}, "deny"),
    ("nested_force", {"target": {"force": "no"}}, "allow"),
    ("nested_force", {"target": '{"force": false}'}, "deny"),  # a path goes through objects only
    ("nested_schemas", {"target": {"schemas": '["public", "finance"]'}}, "deny"),
    ("nested_schemas", {"target": {"schemas": '["public"]'}}, "allow"),
    ("flags", {"flags": ["false", "on"]}, "deny"),  # list elements are read like values
    ("flags", {"flags": '["false", "on"]'}, "deny"),
    ("flags", {"flags": [0, "no", False]}, "allow"),
    ("flags", {"flags": [False, "maybe"]}, "deny"),
    ("rows", {"rows": "5000"}, "deny"),
    ("rows", {"rows": ["5", "5000"]}, "deny"),
    ("rows", {"rows": "1e4"}, "deny"),
    ("rows", {"rows": "inf"}, "deny"),
    ("rows", {"rows": "nan"}, "deny"),  # not comparable: not demonstrably below the minimum
    ("rows", {"rows": ["5", 10]}, "allow"),
    ("branch", {"branch": '"release/1"'}, "deny"),
    ("branch", {"branch": '["main", "release/2"]'}, "deny"),
    ("branch", {"branch": 5}, "deny"),  # no reading is a string
    ("branch", {"branch": "main"}, "allow"),
    ("env_not_in", {"env": '["dev"]'}, "deny"),  # read as a string, it is not dev
    ("env_not_in", {"env": 5}, "deny"),
    ("env_not_in", {"env": "dev"}, "allow"),
    ("env", {"env": 5}, "deny"),  # of another type than the rule's values: cannot be judged
    ("env", {"env": True}, "deny"),
    ("env", {"env": "dev"}, "allow"),
])
def test_deny_readings_elsewhere(payload: BundlePayload, tool: str, arguments: dict,
                                 expected: str) -> None:
    assert effect(payload, "d", tool, arguments) == expected


@pytest.mark.parametrize("tool, arguments, expected", [
    ("force", {"force": False}, "allow"),
    ("force", {"force": "false"}, "deny"),  # an allow grants the type it names, as sent
    ("force", {"force": 0}, "deny"),
    ("replicas", {"replicas": 1}, "allow"),  # also read as true: it decides nothing for a range
    ("replicas", {"replicas": "5"}, "deny"),
    ("replicas", {"replicas": True}, "deny"),
    ("schemas", {"schemas": "public"}, "allow"),
    ("schemas", {"schemas": '["public"]'}, "allow"),  # every reading holds
    ("schemas", {"schemas": '["secret"]'}, "deny"),  # the string is not secret, the list is
    ("schemas", {"schemas": '["public", "secret"]'}, "deny"),
    ("schemas", {"schemas": ["public", '["secret"]']}, "deny"),
    ("schemas", {"schemas": "[]"}, "deny"),
    ("schemas", {"schemas": '{"name": "public"}'}, "deny"),
    ("schemas", {"schemas": LONG_JSON}, "deny"),
    ("ticket", {"ticket": "12345"}, "allow"),  # also read as a number: it decides nothing here
    ("ticket", {"ticket": 12345}, "deny"),
    ("mixed", {"v": "0"}, "deny"),  # also read as 0, which the rule excludes
    ("mixed", {"v": "1"}, "allow"),
    ("mixed", {"v": 1}, "allow"),
    ("env", {"env": None}, "deny"),  # null cannot be judged, like a missing argument
    ("env", {"env": "null"}, "deny"),
    ("env", {"env": "dev"}, "allow"),
])
def test_allow_holds_only_if_every_reading_does(payload: BundlePayload, tool: str,
                                                 arguments: dict, expected: str) -> None:
    assert effect(payload, "a", tool, arguments) == expected
