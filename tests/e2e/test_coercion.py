"""Deny rules against values the upstream coerces, end to end: a real SDK upstream whose tool
shows what it ran (tests/support/coercion_upstream.py), a real gateway node, real SDK clients in both
protocol eras, on the server's endpoint and on the aggregate ``/mcp``. Each bypass below used to
run."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from mcp import Client

from gwc.runtime.audit.writer import trail
from tests.support.e2e import MODES, Node, connect, refusal, start_node, text_of, write_gateway
from tests.support.helpers import dump

HONEST = {"force": False, "replicas": 3, "schemas": ["public"]}
RAN_HONEST = "force=False replicas=3 schemas=['public']"
# (argument, value sent instead of the honest one, what the upstream runs, the deny rule it hits)
BYPASSES = [
    ("force", "true", "force=True", "no-force"),
    ("force", 1, "force=True", "no-force"),
    ("force", "on", "force=True", "no-force"),
    ("replicas", "0", "replicas=0", "no-zero-replicas"),
    ("schemas", '["finance"]', "schemas=['finance']", "no-finance"),
]
# Coerced too, but into what the rules allow: the upstream runs the honest call.
HONEST_SPELLINGS = [("force", "false"), ("force", 0), ("replicas", "3"), ("replicas", 3.0),
                    ("schemas", '["public"]')]


def write_fleet_registry(root: Path, jwks_uri: str, upstream: str) -> Path:
    """Server ``fleet`` (no allow rules: visible means granted) with one deny rule per argument."""
    write_gateway(root, jwks_uri)
    (root / "registry" / "fleet.yaml").write_text(dump({
        "name": "fleet", "owner": "eng", "upstream": upstream, "visibility": "team:eng",
        "tools": {"scale": {"access": "write", "approval": "none"}}}))
    (root / "policies" / "eng").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "eng" / "fleet.yaml").write_text(dump([
        {"id": rule, "subject": {"team": "eng"}, "resource": {"server": "fleet", "tool": "scale"},
         "action": "write", "effect": "deny", "conditions": conditions}
        for rule, conditions in (("no-force", {"force": True}),
                                 ("no-zero-replicas", {"replicas": 0}),
                                 ("no-finance", {"schemas": ["finance"]}))]))
    return root


@pytest.fixture
async def fleet(tmp_path, aiohttp_server, coercing_upstream, signing_key) -> Node:
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_fleet_registry(root, jwks, coercing_upstream))


async def run(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """What a call came to: the upstream's answer, or the gateway's refusal (a tool result with
    isError) and its rules."""
    result = await client.call_tool(tool, arguments)
    if not result.is_error:
        return text_of(result)
    data = refusal(result)
    return f"{data['reason']}: {','.join(data.get('rules', []))}"


async def test_the_upstream_really_runs_what_the_bypasses_ask(coercing_upstream) -> None:
    async with connect(coercing_upstream, "unused", "legacy") as client:
        for name, value, ran, _ in BYPASSES:
            assert ran in await run(client, "scale", {**HONEST, name: value})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aggregate", [False, True], ids=["server", "aggregate"])
async def test_coerced_values_cannot_slip_past_a_deny(fleet, mode, aggregate) -> None:
    url, tool = (fleet.url + "/mcp", "fleet__scale") if aggregate else (fleet.endpoint("fleet"),
                                                                         "scale")
    async with connect(url, fleet.idp.token("alice", ["eng"]), mode) as client:
        bypassed = {f"{name}={value!r}": await run(client, tool, {**HONEST, name: value})
                    for name, value, _, _ in BYPASSES}
        honest = {f"{name}={value!r}": await run(client, tool, {**HONEST, name: value})
                  for name, value in [*HONEST.items(), *HONEST_SPELLINGS]}
    assert bypassed == {f"{name}={value!r}": f"denied: {rule}" for name, value, _, rule in BYPASSES}
    assert honest == dict.fromkeys(honest, RAN_HONEST)


async def test_the_trail_records_the_refusal_with_the_value_as_sent(fleet) -> None:
    token = fleet.idp.token("alice", ["eng"])
    async with connect(fleet.endpoint("fleet"), token, "auto") as client:
        assert await run(client, "scale", {**HONEST, "force": "on"}) == "denied: no-force"
    [record] = [r for path in trail(fleet.audit_path) for r in map(orjson.loads,
                path.read_bytes().splitlines()) if r.get("type") == "call"]
    assert (record["decision"], record["policy"]["rules"], record["arguments"]["values"]) == (
        "deny", ["no-force"], {"force": "on", "replicas": 3, "schemas": ["public"]})
