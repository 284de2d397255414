"""Access semantics (DESIGN.md, "Access semantics"), one rule at a time, on compiled payloads.

Each test compiles a tiny registry (server ``svc`` owned by team-a) and asks
gwc.runtime.policy.decide.decide or entitlement; nothing here reads the rules directly, so the
compiler's indexes are tested too. Long because it is one short test per rule of the semantics, in
the order DESIGN.md gives them; split, the order would be lost.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.policy.decide import Entitlement, Principal, decide, entitlement_on, visible_server
from tests.support.helpers import GATEWAY, compile_root, manifest, rule, write_registry


def entitlement(payload: BundlePayload, principal: Principal, server: str, tool: str
                ) -> Entitlement | None:
    """What the principal may do with the tool, as every list and report asks it."""
    return entitlement_on(payload, visible_server(payload, principal, server), principal, tool)


TOOLS = {
    "query": {"access": "read"},
    "drop": {"access": "write", "approval": "none"},
    "migrate": {"access": "write", "approval": "required"},
}


def compiled(root: Path, rules: list[dict] | None = None, *, visibility: Any = "group:g, group:h",
             tools: dict | None = None, gateway: dict | None = None, **fields: Any) -> BundlePayload:
    policies = {"team-a/rules.yaml": rules} if rules else {}
    write_registry(root, gateway=gateway or GATEWAY, manifests={"svc.yaml": manifest(
        visibility=visibility, tools=tools or TOOLS, **fields)}, policies=policies)
    return compile_root(root)


def member(*groups: str, subject: str = "u1") -> Principal:
    return Principal(subject, frozenset(groups))


G, H, OUTSIDER = member("g"), member("h"), member("other")


def effect(payload: BundlePayload, who: Principal, tool: str = "query", args: Any = None,
           server: str = "svc") -> str:
    return decide(payload, who, server, tool, args if args is not None else {}).effect


# --- 1. visibility is a hard wall -----------------------------------------------------------------

def test_invisible_server_answers_exactly_like_a_missing_one(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(group="other", action="*")], visibility="group:g")
    invisible = decide(p, OUTSIDER, "svc", "query", {})
    missing = decide(p, OUTSIDER, "no-such-server", "query", {})
    assert invisible.effect == "not_found"
    assert invisible == missing  # same effect, reason, everything: no existence oracle
    assert entitlement(p, OUTSIDER, "svc", "query") is None


def test_invisible_even_with_an_allow_rule_for_the_caller(tmp_path: Path) -> None:
    # The rule names a group outside visibility: the wall wins over the grant.
    p = compiled(tmp_path, [rule(group="other", action="*")], visibility="group:g")
    assert effect(p, OUTSIDER) == "not_found"


def test_undeclared_tool_is_not_found(tmp_path: Path) -> None:
    p = compiled(tmp_path)
    d = decide(p, G, "svc", "shell_exec", {})
    assert (d.effect, d.reason) == ("not_found", "unknown_tool")
    assert entitlement(p, G, "svc", "shell_exec") is None


def test_visibility_kinds(tmp_path: Path) -> None:
    p = compiled(tmp_path, visibility="team:team-a, user:alice, agent:bot")
    assert effect(p, member("team-a")) == "allow"  # team: is an IdP group
    assert effect(p, Principal("alice")) == "allow"
    assert effect(p, Principal("bot", kind="agent")) == "allow"
    assert effect(p, Principal("bot")) == "not_found"  # a human named 'bot' is not the agent
    assert effect(p, Principal("mallory", frozenset({"alice", "bot"}))) == "not_found"


def test_everyone_sees_an_everyone_server(tmp_path: Path) -> None:
    p = compiled(tmp_path, visibility="everyone")
    assert effect(p, Principal("anyone")) == "allow"
    assert effect(p, Principal("a-bot", kind="agent")) == "allow"


# --- 2. deny overrides allow ------------------------------------------------------------------------

def test_deny_overrides_allow(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(id="all", action="*"),
                            rule(id="no-writes", action="write", effect="deny")])
    d = decide(p, G, "svc", "drop", {})
    assert (d.effect, d.reason, d.rule_ids) == ("deny", "deny_rule", ("no-writes",))
    assert effect(p, G, "query") == "allow"
    assert entitlement(p, G, "svc", "drop") is None
    assert entitlement(p, G, "svc", "query") == "allow"


def test_deny_overrides_a_visibility_grant(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(id="d", action="write", tool="drop", effect="deny")])
    assert effect(p, G, "drop") == "deny"
    assert effect(p, G, "migrate") == "allow"  # other tools still granted by visibility
    assert effect(p, H, "drop") == "allow"  # the deny is g's only


def test_global_star_deny_applies_to_every_server(tmp_path: Path) -> None:
    write_registry(tmp_path, manifests={
        "svc.yaml": manifest(visibility="group:contractors", tools=TOOLS),
        "other.yaml": manifest("other", "team-b", visibility="everyone", tools=TOOLS)},
        policies={"global/c.yaml": [rule("*", id="ro", group="contractors", action="write",
                                         effect="deny")]})
    p = compile_root(tmp_path)
    c = member("contractors")
    for server in ("svc", "other"):
        assert effect(p, c, "query", server=server) == "allow"
        d = decide(p, c, server, "drop", {})
        assert (d.effect, d.rule_ids) == ("deny", ("ro",))


# --- 3. grants -------------------------------------------------------------------------------------

def test_without_allow_rules_visibility_grants_every_declared_tool(tmp_path: Path) -> None:
    p = compiled(tmp_path)
    for tool in TOOLS:
        d = decide(p, H, "svc", tool, {})
        assert (d.effect, d.reason) == ("allow", "visibility")


def test_deny_rules_alone_do_not_restrict_a_server(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(group="h", action="write", effect="deny")])
    assert not p.servers["svc"].restricted
    assert effect(p, G, "drop") == "allow"


def test_once_an_allow_rule_names_the_server_only_allow_rules_grant(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(id="g-read", action="read")])
    assert p.servers["svc"].restricted
    d = decide(p, G, "svc", "query", {})
    assert (d.effect, d.reason, d.rule_ids) == ("allow", "rule", ("g-read",))
    no = decide(p, G, "svc", "drop", {})  # g has no write grant
    assert (no.effect, no.reason) == ("deny", "no_grant")
    assert effect(p, H, "query") == "deny"  # visible to h, but no rule grants h anything
    assert entitlement(p, H, "svc", "query") is None


def test_allow_rule_for_one_tool_restricts_the_whole_server(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(action="write", tool="migrate")])
    assert effect(p, G, "migrate") == "allow"
    assert effect(p, G, "query") == "deny"
    assert effect(p, G, "drop") == "deny"


def test_team_and_group_subjects_both_match_the_idp_group(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(team="g", action="read"), rule(group="h", action="write")])
    assert effect(p, G, "query") == "allow" and effect(p, G, "drop") == "deny"
    assert effect(p, H, "drop") == "allow" and effect(p, H, "query") == "deny"


def test_user_subject_matches_the_token_subject(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(user="alice", action="*")], visibility="group:g")
    assert effect(p, member("g", subject="alice")) == "allow"
    assert effect(p, member("g", subject="bob")) == "deny"
    assert effect(p, member("g", "alice", subject="bob")) == "deny"  # a group named alice is not alice


def test_agent_subject_matches_only_agents(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(agent="bot", action="*")], visibility="everyone")
    assert effect(p, Principal("bot", kind="agent")) == "allow"
    assert effect(p, Principal("bot")) == "deny"  # a human whose subject happens to be 'bot'
    assert effect(p, Principal("bot", frozenset({"bot"}))) == "deny"
    assert effect(p, Principal("other-bot", kind="agent")) == "deny"


def test_agent_deny_does_not_hit_a_human_with_the_same_subject(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(agent="bot", action="write", effect="deny")], visibility="everyone")
    assert effect(p, Principal("bot", kind="agent"), "drop") == "deny"
    assert effect(p, Principal("bot"), "drop") == "allow"


def test_grants_are_a_union_over_rules(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(id="a", action="read"), rule(id="b", group="h", action="write")])
    both = member("g", "h")
    assert effect(p, both, "query") == effect(p, both, "drop") == "allow"


# --- 4. action = access class; approvals ----------------------------------------------------------------

@pytest.mark.parametrize("action, read, write", [
    ("read", "allow", "deny"), ("write", "deny", "allow"), ("*", "allow", "allow"),
    (["read", "write"], "allow", "allow"),
])
def test_action_is_the_tools_access_class(tmp_path: Path, action: Any, read: str, write: str) -> None:
    p = compiled(tmp_path, [rule(action=action)])
    assert (effect(p, G, "query"), effect(p, G, "drop"), effect(p, G, "migrate")) == (read, write, write)
    d = decide(p, G, "svc", "query", {})
    assert d.access == "read" and decide(p, G, "svc", "drop", {}).access == "write"


def test_approval_required_is_reported_for_approval_tools(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(action="*")])
    assert decide(p, G, "svc", "migrate", {}).approval_required is True
    assert decide(p, G, "svc", "drop", {}).approval_required is False
    open_p = compiled(tmp_path / "open")
    assert decide(open_p, G, "svc", "migrate", {}).approval_required is True  # visibility grant too
    # Denials report it too: in shadow mode a denied call still goes through, and must wait.
    denied = compiled(tmp_path / "denied", [rule(action="read")])
    d = decide(denied, G, "svc", "migrate", {})
    assert (d.effect, d.approval_required) == ("deny", True)


def test_approvers_default_to_the_owner_team(tmp_path: Path) -> None:
    tools = {**TOOLS, "special": {"access": "write", "approval": "required",
                                  "approvers": ["user:boss"]}}
    p = compiled(tmp_path, tools=tools)
    assert p.servers["svc"].tools["migrate"].approval.approvers.groups == ("team-a",)
    assert p.servers["svc"].tools["special"].approval.approvers.users == ("boss",)
    assert p.servers["svc"].tools["drop"].approval is None


# --- 5. argument conditions -------------------------------------------------------------------------

def cond_payload(root: Path, conditions: dict, action: str = "read") -> BundlePayload:
    return compiled(root, [rule(action=action, conditions=conditions)])


@pytest.mark.parametrize("args, expected", [
    ({"schema": "public"}, "allow"),
    ({"schema": "analytics"}, "allow"),
    ({"schema": "secret"}, "deny"),
    ({"schema": ["public", "analytics"]}, "allow"),  # a list argument: every element
    ({"schema": ["public", "secret"]}, "deny"),
    ({}, "deny"),  # a missing argument fails an allow rule
    ({"schema": None}, "deny"),
    ({"schema": {"name": "public"}}, "deny"),  # an object cannot be judged: no grant
    ({"other": "public"}, "deny"),
])
def test_list_condition_means_one_of(tmp_path: Path, args: dict, expected: str) -> None:
    p = cond_payload(tmp_path, {"schema": ["public", "analytics"]})
    assert effect(p, G, "query", args) == expected


def test_scalar_condition_is_shorthand_for_a_one_element_list(tmp_path: Path) -> None:
    p = cond_payload(tmp_path, {"env": "staging"})
    assert effect(p, G, "query", {"env": "staging"}) == "allow"
    assert effect(p, G, "query", {"env": "prod"}) == "deny"


def test_all_conditions_of_a_rule_must_hold(tmp_path: Path) -> None:
    p = cond_payload(tmp_path, {"env": ["dev"], "region": ["eu"]})
    assert effect(p, G, "query", {"env": "dev", "region": "eu"}) == "allow"
    assert effect(p, G, "query", {"env": "dev", "region": "us"}) == "deny"
    assert effect(p, G, "query", {"env": "dev"}) == "deny"


@pytest.mark.parametrize("args, expected", [
    ({"target": {"env": "staging"}}, "allow"),
    ({"target": {"env": "prod"}}, "deny"),
    ({"target": {"cluster": "a"}}, "deny"),
    ({"target": "staging"}, "deny"),
    ({"target.env": "staging"}, "deny"),  # a dotted path is nesting, not a literal key
    ({}, "deny"),
])
def test_nested_dotted_path(tmp_path: Path, args: dict, expected: str) -> None:
    p = cond_payload(tmp_path, {"target.env": ["staging"]})
    assert effect(p, G, "query", args) == expected


@pytest.mark.parametrize("ops, args, expected", [
    ({"pattern": "[a-z_]+"}, "users", "allow"),
    ({"pattern": "[a-z_]+"}, "users; drop", "deny"),
    ({"pattern": "user"}, "users", "deny"),  # the whole value must match
    ({"pattern": "[a-z]+"}, 5, "deny"),  # not a string: cannot be judged
    ({"pattern": "[a-z]+"}, ["abc", "def"], "allow"),
    ({"pattern": "[a-z]+"}, ["abc", "DEF"], "deny"),
    ({"min": 1, "max": 100}, 1, "allow"),
    ({"min": 1, "max": 100}, 100, "allow"),
    ({"min": 1, "max": 100}, 50.5, "allow"),
    ({"min": 1, "max": 100}, 0, "deny"),
    ({"min": 1, "max": 100}, 101, "deny"),
    ({"min": 1, "max": 100}, "50", "deny"),  # a numeric string is not a number
    ({"min": 1, "max": 100}, True, "deny"),  # booleans are not numbers
    ({"max": 10}, -5, "allow"),
    ({"not_in": ["prod", "billing"]}, "dev", "allow"),
    ({"not_in": ["prod", "billing"]}, "prod", "deny"),
    ({"not_in": ["prod"]}, ["dev", "prod"], "deny"),
    ({"in": ["a", "b"], "not_in": ["b"]}, "b", "deny"),  # all operators apply
])
def test_operators(tmp_path: Path, ops: dict, args: Any, expected: str) -> None:
    p = cond_payload(tmp_path, {"v": ops})
    assert effect(p, G, "query", {"v": args}) == expected


@pytest.mark.parametrize("allowed, value, expected", [
    ([1], True, "deny"),  # True == 1 in Python; not here
    ([0], False, "deny"),
    ([True], 1, "deny"),
    ([True], True, "allow"),
    ([1], 1, "allow"),
    ([1], 1.0, "allow"),  # JSON does not tell 1 from 1.0
    (["1"], 1, "deny"),
])
def test_booleans_are_not_numbers(tmp_path: Path, allowed: list, value: Any, expected: str) -> None:
    p = cond_payload(tmp_path, {"v": allowed})
    assert effect(p, G, "query", {"v": value}) == expected


def test_non_dict_arguments_fail_allow_conditions(tmp_path: Path) -> None:
    p = cond_payload(tmp_path, {"v": ["x"]})
    assert effect(p, G, "query", ["x"]) == "deny"
    assert decide(p, G, "svc", "query", None).effect == "deny"


@pytest.mark.parametrize("args, expected", [
    ({"env": "prod"}, "deny"),
    ({"env": "dev"}, "allow"),
    ({}, "deny"),  # what cannot be judged is denied
    ({"env": {"name": "dev"}}, "deny"),
    ({"env": ["dev", "test"]}, "allow"),
])
def test_deny_with_argument_condition(tmp_path: Path, args: dict, expected: str) -> None:
    p = compiled(tmp_path, [rule(id="no-prod", action="write", effect="deny",
                                 conditions={"env": ["prod"]})])
    assert effect(p, G, "drop", args) == expected
    assert effect(p, H, "drop", args) == "allow"  # the deny is g's only
    assert entitlement(p, G, "svc", "drop") == "conditional"


@pytest.mark.parametrize("conditions, args", [
    ({"env": ["prod"]}, {"env": ["dev", "prod"]}),
    ({"env": {"not_in": ["dev"]}}, {"env": ["dev", "prod"]}),
    ({"rows": {"min": 1000}}, {"rows": [5, 5000]}),
])
def test_deny_applies_when_any_list_element_triggers_it(tmp_path: Path, conditions: dict,
                                                       args: dict) -> None:
    p = compiled(tmp_path, [rule(action="write", effect="deny", conditions=conditions)])
    assert effect(p, G, "drop", args) == "deny"


def test_deny_with_operator_condition_on_missing_argument(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(action="read", effect="deny", conditions={"rows": {"min": 1000}})])
    assert effect(p, G, "query", {"rows": 10}) == "allow"
    assert effect(p, G, "query", {"rows": 5000}) == "deny"
    assert effect(p, G, "query", {}) == "deny"
    assert effect(p, G, "query", {"rows": "many"}) == "deny"


def test_empty_list_argument_does_not_satisfy_an_allow_condition(tmp_path: Path) -> None:
    p = cond_payload(tmp_path, {"schema": ["public"]})
    assert effect(p, G, "query", {"schema": []}) == "deny"


# --- 6. rate limits from the granting rule -----------------------------------------------------------

def test_rate_limit_from_the_granting_rule(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(action="read", conditions={"rate_limit_per_minute": 30})])
    assert decide(p, G, "svc", "query", {}).rate_limit_per_minute == 30


def test_most_generous_granting_rule_sets_the_rate_limit(tmp_path: Path) -> None:
    p = compiled(tmp_path, [
        rule(id="slow", action="read", conditions={"rate_limit_per_minute": 30}),
        rule(id="fast", group="h", action="read", conditions={"rate_limit_per_minute": 90}),
        rule(id="free", group="k", action="read"),
        rule(id="cond", group="c", action="read",
             conditions={"schema": ["public"], "rate_limit_per_minute": 500})])
    d = decide(p, member("g", "h"), "svc", "query", {})
    assert (d.rate_limit_per_minute, set(d.rule_ids)) == (90, {"slow", "fast"})
    assert d.rate_limit_rule == "fast"  # its budget is the one a call spends
    assert decide(p, member("g", "k"), "svc", "query", {}).rate_limit_per_minute is None
    # a rule that does not grant (its condition fails) does not lend its limit
    assert decide(p, member("g", "c"), "svc", "query", {}).rate_limit_per_minute == 30
    assert decide(p, member("g", "c"), "svc", "query",
                  {"schema": "public"}).rate_limit_per_minute == 500


def test_visibility_grant_has_no_rule_rate_limit(tmp_path: Path) -> None:
    assert decide(compiled(tmp_path), G, "svc", "query", {}).rate_limit_per_minute is None


def test_server_and_tool_limits_are_compiled(tmp_path: Path) -> None:
    tools = {**TOOLS, "query": {"access": "read", "limits": {"per_user_rpm": 5}}}
    p = compiled(tmp_path, tools=tools, limits={"per_user_rpm": 60, "upstream_rpm": 600})
    server = p.servers["svc"]
    assert (server.limits.per_user_rpm, server.limits.upstream_rpm) == (60, 600)
    assert server.tools["query"].limits.per_user_rpm == 5
    assert server.tools["drop"].limits.per_user_rpm is None


# --- 7. mode ----------------------------------------------------------------------------------------

def modes(p: BundlePayload) -> dict[str, str]:
    return {name: tool.mode for name, tool in p.servers["svc"].tools.items()}


def test_mode_defaults_to_the_gateway_default(tmp_path: Path) -> None:
    assert set(modes(compiled(tmp_path / "a")).values()) == {"enforce"}
    shadow_gw = {**GATEWAY, "default_mode": "shadow"}
    assert set(modes(compiled(tmp_path / "b", gateway=shadow_gw)).values()) == {"shadow"}


def test_server_mode_per_access_class(tmp_path: Path) -> None:
    p = compiled(tmp_path, mode={"write": "shadow"})
    assert modes(p) == {"query": "enforce", "drop": "shadow", "migrate": "shadow"}
    assert decide(p, G, "svc", "drop", {}).mode == "shadow"


def test_server_mode_shorthand_applies_to_both_classes(tmp_path: Path) -> None:
    p = compiled(tmp_path, mode="shadow")
    assert set(modes(p).values()) == {"shadow"}


def test_tool_mode_beats_server_and_gateway(tmp_path: Path) -> None:
    tools = {**TOOLS, "drop": {"access": "write", "approval": "none", "mode": "enforce"},
             "query": {"access": "read", "mode": "shadow"}}
    p = compiled(tmp_path, tools=tools, mode={"write": "shadow"},
                 gateway={**GATEWAY, "default_mode": "enforce"})
    assert modes(p) == {"query": "shadow", "drop": "enforce", "migrate": "shadow"}


def test_server_read_mode_over_shadow_gateway_default(tmp_path: Path) -> None:
    p = compiled(tmp_path, mode={"read": "enforce"}, gateway={**GATEWAY, "default_mode": "shadow"})
    assert modes(p) == {"query": "enforce", "drop": "shadow", "migrate": "shadow"}


def test_shadow_mode_still_reports_the_real_decision(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(action="read")], mode="shadow")
    d = decide(p, G, "svc", "drop", {})
    assert (d.effect, d.mode) == ("deny", "shadow")  # evaluated and logged, the runtime won't block


# --- entitlement (reports and diffs) ------------------------------------------------------------------

def test_entitlement_levels(tmp_path: Path) -> None:
    p = compiled(tmp_path, [
        rule(action="read"),
        rule(action="write", tool="drop", conditions={"table": ["tmp"]}),
        rule(group="h", action="*"), rule(group="h", action="write", tool="migrate", effect="deny")])
    assert entitlement(p, G, "svc", "query") == "allow"
    assert entitlement(p, G, "svc", "drop") == "conditional"
    assert entitlement(p, G, "svc", "migrate") is None
    assert entitlement(p, H, "svc", "migrate") is None
    assert entitlement(p, H, "svc", "drop") == "allow"
    assert entitlement(p, OUTSIDER, "svc", "query") is None


def test_unconditional_rule_beats_conditional_one_in_entitlement(tmp_path: Path) -> None:
    p = compiled(tmp_path, [rule(action="read", conditions={"schema": ["public"]}),
                            rule(action="read")])
    assert entitlement(p, G, "svc", "query") == "allow"


# --- the example registry ------------------------------------------------------------------------------

def test_example_registry_decisions(example_root: Path) -> None:
    p = compile_root(example_root)
    sre, analytics = member("sre"), member("analytics")
    d = decide(p, sre, "postgres-prod", "run_migration", {})
    assert (d.effect, d.approval_required, d.rule_ids) == ("allow", True, ("pg-sre-all",))
    assert decide(p, analytics, "postgres-prod", "run_migration", {}).effect == "deny"
    assert decide(p, analytics, "postgres-prod", "query", {"schemas": ["public"]}).effect == "allow"
    assert decide(p, analytics, "postgres-prod", "query",
                  {"schemas": ["public", "analytics"]}).effect == "deny"
    assert decide(p, member("data-platform"), "postgres-prod", "query",
                  {"schemas": ["public", "analytics"]}).rate_limit_per_minute == 60
    eng = member("engineering")
    assert decide(p, eng, "deploy", "deploy", {"env": "staging"}).effect == "allow"
    assert decide(p, eng, "deploy", "deploy", {"env": "production"}).effect == "deny"
    assert decide(p, member("engineering", "contractors"), "deploy", "deploy",
                  {"env": "staging"}).rule_ids == ("global-contractors-read-only",)
    assert decide(p, member("support"), "postgres-prod", "query", {}).effect == "not_found"
    assert decide(p, Principal("triage-bot", kind="agent"), "incidents", "create_incident",
                  {}).effect == "deny"
    assert decide(p, Principal("someone"), "incidents", "create_incident", {}).effect == "allow"
    assert decide(p, member("support"), "zendesk", "update_ticket", {}).mode == "shadow"


def test_a_decision_takes_its_fields_in_order_and_stays_frozen() -> None:
    import dataclasses

    from gwc.runtime.policy.decide import Decision
    full = Decision("allow", "rule", ("r",), "read", "shadow", 30, True, "r")
    assert dataclasses.astuple(full) == ("allow", "rule", ("r",), "read", "shadow", 30, True, "r")
    assert full == Decision(effect="allow", reason="rule", rule_ids=("r",), access="read",
                            mode="shadow", rate_limit_per_minute=30, approval_required=True,
                            rate_limit_rule="r")
    assert dataclasses.astuple(Decision("deny", "no_grant")) == (
        "deny", "no_grant", (), None, None, None, False, None)
    assert hash(full) == hash(dataclasses.replace(full))
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.effect = "deny"  # type: ignore[misc]
