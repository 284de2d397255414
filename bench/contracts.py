"""What tool contracts cost a node (issue 14): checking a call's arguments against the pinned input
schema, per call, and compiling the validators when a bundle is read.

Per call, the node runs ``Contracts.refusal`` for a pinned tool: a drift look-up and
``argument_error`` (jsonschema-rs ``is_valid``; the error walk only for arguments that fail).
Measured in one process for three schemas: the SDK's schema of a three-argument function, a wider
one (ten properties, a nested object, an enum list, a ``$defs`` reference, a pattern), and the
MCP conformance suite's JSON Schema 2020-12 tool. For scale, the same loop times the policy
decision (``decide_on``) of a call with an argument condition. Medians of several runs; each run
times a bounded number of calls.

    python bench/contracts.py [--runs 5] [--calls 20000]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gwc.compiler.build.compile import compile_data
from gwc.compiler.build.registry import load_registry
from gwc.runtime.bundle.format import BundlePayload, PinnedTool, Server
from gwc.runtime.bundle.tool_definitions import argument_error, definition_digest
from gwc.runtime.mcp.contracts import Contracts
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal, decide_on, visible_server
from gwc.runtime.upstream.catalog import UpstreamCatalog

SMALL = {"type": "object", "properties": {
    "service": {"title": "Service", "type": "string"},
    "replicas": {"title": "Replicas", "type": "integer"},
    "force": {"default": False, "title": "Force", "type": "boolean"}},
    "required": ["service", "replicas"], "title": "deployArguments"}
WIDE = {"type": "object", "additionalProperties": False, "required": ["query", "schemas"],
        "$defs": {"Window": {"type": "object", "properties": {
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"}}, "required": ["start"]}},
        "properties": {
            "query": {"type": "string", "maxLength": 10_000},
            "schemas": {"type": "array", "items": {"enum": ["public", "analytics", "finance"]},
                        "minItems": 1, "uniqueItems": True},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
            "dry_run": {"type": "boolean"},
            "format": {"enum": ["json", "csv"]},
            "window": {"$ref": "#/$defs/Window"},
            "ticket": {"type": "string", "pattern": "^[A-Z]+-[0-9]+$"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "owner": {"type": ["string", "null"]}}}
CONFORMANCE = {  # the suite's json_schema_2020_12_tool
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "$defs": {"address": {"type": "object", "properties": {
        "street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False}
CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (name, schema, valid arguments, invalid arguments)
    ("sdk function, 3 args", SMALL, {"service": "web", "replicas": 3},
     {"service": "web", "replicas": "3"}),
    ("wide, 10 props + $ref", WIDE, {
        "query": "select 1", "schemas": ["public", "analytics"], "limit": 100, "dry_run": True,
        "format": "csv", "window": {"start": "2026-12-07T10:00:00Z"}, "ticket": "OPS-12",
        "labels": {"team": "data"}, "owner": None},
     {"query": "select 1", "schemas": ['["finance"]']}),
    ("conformance 2020-12", CONFORMANCE, {"name": "n", "address": {"street": "s", "city": "c"}},
     {"name": "n", "extra": 1}),
]


def per_call_us(work: Callable[[], object], calls: int, runs: int) -> tuple[float, float, float]:
    """(median, min, max) microseconds per call over ``runs`` runs of ``calls`` calls."""
    figures = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(calls):
            work()
        figures.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(figures), min(figures), max(figures)


def policy_case(calls: int, runs: int) -> tuple[float, float, float]:
    """decide_on for a granted call whose rule has an argument condition."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "registry").mkdir()
        (root / "policies" / "data").mkdir(parents=True)
        (root / "gateway.yaml").write_text(
            "identity: {issuer: 'https://idp.example', audience: gwc, "
            "jwks_uri: 'https://idp.example/jwks.json'}\n")
        (root / "registry" / "pg.yaml").write_text(
            "name: pg\nowner: data\nupstream: https://pg.example/mcp\nvisibility: team:data\n"
            "tools: {query: {access: read}}\n")
        (root / "policies" / "data" / "pg.yaml").write_text(
            "- subject: {team: data}\n  resource: {server: pg}\n  action: read\n"
            "  conditions: {schemas: [public, analytics]}\n")
        payload = BundlePayload.model_validate(compile_data(load_registry(root), 1, "bench"))
    principal = Principal(subject="alice", kind="user", groups=frozenset({"data"}))
    server = visible_server(payload, principal, "pg")
    arguments = {"query": "select 1", "schemas": ["public"]}
    return per_call_us(lambda: decide_on(payload, server, principal, "query", arguments),
                       calls, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    calls, runs = min(args.calls, 1_000_000), min(args.runs, 50)
    print(f"us per call, median of {runs} runs of {calls:,} calls (min-max)")
    print(f"{'case':28} {'valid args':>20} {'invalid args':>20} {'compile':>12} "
          f"{'refusal() valid':>18}")
    metrics = Metrics()  # refusal() uses no catalog fetch, trail or loop: none is running
    contracts = Contracts(UpstreamCatalog(None, metrics), None, metrics, lambda: None)  # type: ignore[arg-type]
    for case in CASES:
        print(measure_case(contracts, *case, calls, runs))
    decided = policy_case(calls, runs)
    print(f"{'policy decide_on (scale)':28} {_cell(decided):>20}")


def measure_case(contracts: Contracts, name: str, schema: dict[str, Any], valid: dict[str, Any],
                 invalid: dict[str, Any], calls: int, runs: int) -> str:
    """One table row: checking valid and invalid arguments, compiling, and refusal() in full."""
    definition = {"description": name, "inputSchema": schema}
    pinned = PinnedTool(definition=definition, digest=definition_digest(definition))
    assert argument_error(pinned.validator, valid) is None, name
    assert argument_error(pinned.validator, invalid) is not None, name
    ok = per_call_us(lambda: argument_error(pinned.validator, valid), calls, runs)
    bad = per_call_us(lambda: argument_error(pinned.validator, invalid), calls // 10, runs)
    build = per_call_us(lambda: PinnedTool(definition=definition, digest="sha256:x"),
                        calls // 20, runs)
    server = _server_with(pinned)
    full = per_call_us(lambda: contracts.refusal("s", server, "t", pinned, valid), calls, runs)
    return f"{name:28} {_cell(ok):>20} {_cell(bad):>20} {build[0]:>10.1f}us {_cell(full):>18}"


def _server_with(pinned: PinnedTool) -> Server:
    return Server.model_validate({
        "owner": "o", "upstream": "https://u.example/mcp", "source": "s", "timeout_ms": 1000,
        "max_concurrency": 1, "upstream_auth": {"type": "gateway_jwt"},
        "tools": {"t": {"access": "read", "mode": "enforce", "timeout_ms": 1000,
                        "pinned": pinned.model_dump()}}})


def _cell(figure: tuple[float, float, float]) -> str:
    return f"{figure[0]:.2f} ({figure[1]:.2f}-{figure[2]:.2f})"


if __name__ == "__main__":
    main()
