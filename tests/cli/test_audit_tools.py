"""`gwc audit query` and `gwc audit replay` on real trails: records made by the runtime's own
policy and audit helpers, written by the real AuditWriter, decided by real signed bundles.
Long because query and replay share the one realistic trail built here (every filter, every finding).
"""
from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gwc.compiler.audit import trail as audit_trail
from gwc.compiler.audit.query import Query, parse_when
from gwc.compiler.audit.replay import arguments_from, covered
from gwc.compiler.build.bundle import Built, build
from gwc.compiler.build.keys import generate_keypair
from gwc.runtime.audit.chain import GENESIS, seal
from gwc.runtime.audit.record import policy_fields, principal_fields
from gwc.runtime.audit.shape import arguments_record
from gwc.runtime.audit.writer import AuditWriter
from gwc.runtime.policy.decide import Principal, decide
from tests.support.helpers import gwc, load_ok, write_registry

TOOLS = {"status": {"access": "read"}, "rollback": {"access": "write", "approval": "none"}}
MANIFESTS = {
    "deploy.yaml": {"name": "deploy", "owner": "ops", "upstream": "https://deploy.internal/mcp",
                    "visibility": ["team:ops", "team:eng"], "tools": TOOLS},
    "wiki.yaml": {"name": "wiki", "owner": "docs", "upstream": "https://wiki.internal/mcp",
                  "visibility": "everyone", "tools": {"search": {"access": "read"},
                                                      "edit": {"access": "write",
                                                               "approval": "none"}}},
}
OPS_ALL = {"id": "ops-all", "subject": {"team": "ops"}, "resource": {"server": "deploy"},
           "action": "*"}
ENG_READ = {"id": "eng-read", "subject": {"team": "eng"}, "resource": {"server": "deploy"},
            "action": "read"}


def eng_rollback(envs: list[str]) -> dict[str, Any]:
    return {"id": "eng-rollback", "subject": {"team": "eng"},
            "resource": {"server": "deploy", "tool": "rollback"}, "action": "write",
            "conditions": {"env": envs}}


NO_CONTRACTOR_EDITS = {"id": "no-contractor-edits", "subject": {"group": "contractors"},
                       "resource": {"server": "wiki"}, "action": "write", "effect": "deny"}
# The proposal: eng loses reads, gains prod rollbacks; ops rollbacks now depend on an argument
# (region) that the recording bundle never read, so the trail cannot tell.
OPS_NO_US = {"id": "ops-no-us", "subject": {"team": "ops"},
             "resource": {"server": "deploy", "tool": "rollback"}, "action": "write",
             "effect": "deny", "conditions": {"region": ["us-east"]}}
RECORDING = {"ops/deploy.yaml": [OPS_ALL, ENG_READ, eng_rollback(["staging"])],
             "docs/wiki.yaml": [NO_CONTRACTOR_EDITS]}
PROPOSED = {"ops/deploy.yaml": [OPS_ALL, eng_rollback(["staging", "prod"]), OPS_NO_US],
            "docs/wiki.yaml": [NO_CONTRACTOR_EDITS]}

ALICE = Principal("alice", frozenset({"eng"}))
BOT_FOR_ALICE = Principal("bot", frozenset({"eng"}), "agent", "alice")
BOB = Principal("bob", frozenset({"ops"}))
CAROL = Principal("carol", frozenset({"contractors"}))
DAVE = Principal("dave")
# (request id, principal, server, tool, arguments, time): the calls of the trail.
CALLS = [
    ("r1", ALICE, "deploy", "status", {}, "2026-11-18T09:00:00.000000Z"),
    ("r2", ALICE, "deploy", "rollback", {"env": "staging", "id": 7}, "2026-11-19T10:00:00.000000Z"),
    ("r3", ALICE, "deploy", "rollback", {"env": "prod"}, "2026-11-19T23:59:59.999999Z"),
    ("r4", BOT_FOR_ALICE, "wiki", "search", {"q": "runbook"}, "2026-11-20T00:00:00.000000Z"),
    ("r5", BOB, "deploy", "rollback", {"env": "prod"}, "2026-11-20T08:00:00.000000Z"),
    ("r6", CAROL, "wiki", "edit", {"page": "home"}, "2026-11-21T08:00:00.000000Z"),
    ("r7", DAVE, "deploy", "status", {}, "2026-11-21T09:00:00.000000Z"),
    ("r8", ALICE, "deploy", "rollback", {"id": 9}, "2026-11-21T10:00:00.000000Z"),  # no env
]


def base(bundle: Built, principal: Principal, type_: str, time: str, request_id: str) -> dict:
    return {"type": type_, "time": time, "request_id": request_id, "node": "node-1",
            "bundle": {"digest": bundle.digest, "serial": bundle.payload.serial},
            "principal": principal_fields(principal)}


def call_record(bundle: Built, request_id: str, principal: Principal, server: str, tool: str,
                arguments: dict, time: str) -> dict[str, Any]:
    """A tools/call record as the runtime writes it (runtime/mcp/endpoint.py; docs/governance.md)."""
    payload = bundle.payload
    decision = decide(payload, principal, server, tool, arguments)
    verdict = {"allow": "allow", "not_found": "not_found"}.get(
        decision.effect, "would_deny" if decision.mode == "shadow" else "deny")
    allowed = decision.effect == "allow"
    return {**base(bundle, principal, "call", time, request_id),
            "endpoint": server, "method": "tools/call", "server": server, "tool": tool,
            "access": decision.access,
            "arguments": arguments_record(payload, server, tool, arguments),
            "policy": policy_fields(decision),
            "decision": verdict, "approval": None, "bypass": None,
            "outcome": "forwarded" if allowed else "refused",
            "error": None if allowed else ("not_found" if verdict == "not_found" else "denied"),
            "upstream_status": 200 if allowed else None,
            "latency_ms": {"gateway": 1.25, "upstream": 10.5 if allowed else None}}


def trail_records(bundle: Built) -> list[dict[str, Any]]:
    records = [call_record(bundle, *call) for call in CALLS]
    listing = {**base(bundle, ALICE, "list", "2026-11-19T09:00:00.000000Z", "l1"),
               "endpoint": "", "method": "tools/list", "server": None, "tool": None,
               "access": None, "arguments": None, "policy": None, "decision": "allow",
               "approval": None, "bypass": None, "outcome": "forwarded", "error": None,
               "upstream_status": None, "latency_ms": {"gateway": 0.5, "upstream": None}}
    approval = {**base(bundle, BOB, "approval", "2026-11-21T11:00:00.000000Z", "a1"),
                "event": "approved", "approval": "ap-1", "server": "deploy", "tool": "rollback",
                "requester": {"subject": "alice", "kind": "human", "acting_for": None},
                "arguments_digest": "sha256:" + "0" * 64}
    return [*records[:2], listing, *records[2:], approval]


async def write_trail(path: Path, records: list[dict[str, Any]], **options: Any) -> None:
    writer = AuditWriter("node-1", path, **options)
    writer.start()
    try:
        for record in records:
            await writer.submit(record)
    finally:
        writer.close()


def build_bundle(root: Path, policies: dict, key, out: Path, serial: int) -> Built:
    write_registry(root, manifests=MANIFESTS, policies=policies)
    return build(load_ok(root), key, out, serial, f"rev{serial}")


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    """Two signed bundles (the recording one in out/, the proposed one in proposed/), their
    registries, and a trail of the recorded calls decided by the first."""
    _, pub_path, key = generate_keypair(tmp_path / "keys" / "ci")
    recording = build_bundle(tmp_path / "reg-a", RECORDING, key, tmp_path / "out", 1)
    proposed = build_bundle(tmp_path / "reg-b", PROPOSED, key, tmp_path / "proposed", 2)
    trail = tmp_path / "audit" / "audit.jsonl"
    asyncio.run(write_trail(trail, trail_records(recording)))
    return {"trail": trail, "pub": pub_path, "out": tmp_path / "out", "recording": recording,
            "proposed": proposed, "proposed_root": tmp_path / "reg-b", "tmp": tmp_path}


def request_ids(output: str) -> list[str]:
    return [orjson.loads(line)["request_id"] for line in output.splitlines()]


def query(world: dict[str, Any], *args: str):
    return gwc("audit", "query", world["trail"], "--format", "json", *args)


def rewrite(path: Path, change) -> None:
    """Apply ``change`` to the records of a trail file and seal the chain again: a forgery
    `gwc audit verify` cannot see."""
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    change(records)
    prev = GENESIS
    for record in records:
        prev = seal(record, prev)["hash"]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def replay(world: dict[str, Any], *args: str, trail: Path | None = None):
    return gwc("audit", "replay", trail or world["trail"], "--bundles", world["out"],
               "--trust", world["pub"], *args)


# --- query ---------------------------------------------------------------------------------------

def test_a_user_is_the_subject_the_human_an_agent_acts_for_or_an_approvals_requester(world) -> None:
    result = query(world, "--user", "alice")
    assert result.exit_code == 0, result.stderr
    assert request_ids(result.stdout) == ["r1", "r2", "l1", "r3", "r4", "r8", "a1"]
    assert f"7 record(s) matched, in 1 file(s) ({world['trail'].stat().st_size:,} bytes)" \
        in result.stderr
    assert request_ids(query(world, "--user", "bob").stdout) == ["r5", "a1"]
    assert request_ids(query(world, "--user", "bot").stdout) == ["r4"]


def test_json_lines_are_the_records_as_written(world) -> None:
    written = [line for line in world["trail"].read_bytes().splitlines()[1:]]
    assert query(world).stdout.encode().splitlines() == written  # start record left out


def test_server_tool_and_decision_filters_combine(world) -> None:
    assert request_ids(query(world, "--server", "deploy", "--decision", "deny").stdout) == \
        ["r3", "r8"]
    assert request_ids(query(world, "--tool", "rollback").stdout) == ["r2", "r3", "r5", "r8", "a1"]
    assert request_ids(query(world, "--decision", "deny", "--decision", "not_found").stdout) == \
        ["r3", "r6", "r7", "r8"]
    assert request_ids(query(world, "--server", "wiki", "--user", "alice").stdout) == ["r4"]
    assert query(world, "--server", "nope").stdout == ""


@pytest.mark.parametrize("window, expected", [
    (("--since", "2026-11-19", "--until", "2026-11-20"), ["r2", "l1", "r3"]),  # until excluded
    (("--since", "2026-11-20"), ["r4", "r5", "r6", "r7", "r8", "a1"]),  # since included
    (("--since", "2026-11-20T01:00+01:00", "--until", "2026-11-20T00:00:00.000001Z"), ["r4"]),
    (("--until", "2026-11-19T23:59:59.999999"), ["r1", "r2", "l1"]),
])
def test_time_window_boundaries(world, window, expected) -> None:
    assert request_ids(query(world, *window).stdout) == expected


def test_times_and_ages() -> None:
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert parse_when("7d", now) == "2026-11-14T12:00:00.000000Z"
    assert parse_when("12h", now) == "2026-11-21T00:00:00.000000Z"
    assert parse_when("30m", now) == "2026-11-21T11:30:00.000000Z"
    assert parse_when("2026-11-19") == "2026-11-19T00:00:00.000000Z"
    assert parse_when("2026-11-19T10:00-05:00") == "2026-11-19T15:00:00.000000Z"
    with pytest.raises(ValueError):
        parse_when("last thursday")


def test_a_bad_time_is_a_usage_error(world) -> None:
    result = query(world, "--since", "yesterday")
    assert result.exit_code == 2 and "is not a date" in result.stderr


@pytest.mark.parametrize("line, outside", [
    ('{"type":"call","time":"EARLY","arguments":{}}', True),
    # A "time" inside the arguments, before the record's own: not judged on bytes.
    ('{"arguments":{"values":{"time":"EARLY"}},"time":"LATE","type":"call"}', False),
    # Sorted keys, as the runtime writes them: the record's own time after nested objects.
    ('{"arguments":{"values":{"time":"LATE"}},"time":"EARLY","type":"call"}', True),
    ('{"time":"LATE","arguments":{"values":{"time":"EARLY"}}}', False),
    ('{"a":{"x":1},"time":"LATE","b":{"time":"EARLY"}}', False),
])
def test_a_time_is_judged_on_bytes_only_where_it_is_the_records_own(line, outside) -> None:
    window = Query(since="2026-11-20T00:00:00.000000Z")
    raw = line.replace("EARLY", "2026-11-19T00:00:00.000000Z").replace(
        "LATE", "2026-11-21T00:00:00.000000Z").encode()
    assert window.prefilter()(raw) is not outside
    assert window.matches(orjson.loads(raw)) is not outside


def test_the_exact_test_is_the_last_word() -> None:
    at = "2026-11-20T00:00:00.000000Z"
    assert Query(since=at).matches({"type": "call", "time": at})
    assert not Query(until=at).matches({"type": "call", "time": at})
    assert Query(until=at).matches({"type": "call", "time": "2026-11-19T18:59:59-05:00"})
    assert not Query(until=at).matches({"type": "call", "time": "2026-11-19T19:00:00-05:00"})
    # "alice" only as an argument value passes the prefilter; the exact test rejects it.
    mention = orjson.loads(b'{"type":"call","principal":{"subject":"bob"},'
                           b'"arguments":{"values":{"owner":"alice"}}}')
    assert Query(users=frozenset({"alice"})).prefilter()(orjson.dumps(mention))
    assert not Query(users=frozenset({"alice"})).matches(mention)
    # Non-ASCII names are found as orjson writes them and as an escaping writer would.
    escaped = b'{"type":"call","principal":{"subject":"j\\u00f6rg"}}'
    assert Query(users=frozenset({"jörg"})).prefilter()(escaped)
    assert Query(users=frozenset({"jörg"})).matches(orjson.loads(escaped))


def test_table_rows_are_aligned_and_name_the_agent_and_its_human(world) -> None:
    result = gwc("audit", "query", world["trail"], "--user", "alice", "--since", "2026-11-20")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "USER", "SERVER", "TOOL", "ACCESS", "DECISION",
                                "OUTCOME", "ERROR", "LATENCY"]
    assert lines[1].split() == ["2026-11-20T00:00:00.000000Z", "bot→alice", "wiki", "search",
                                "read", "allow", "forwarded", "-", "1.2+10.5ms"]
    assert lines[3].split()[1:6] == ["bob", "deploy", "rollback", "-", "approval:approved"]
    assert len({line.index(lines[0].split()[2]) for line in lines[:1]}) == 1
    column = lines[0].index("SERVER")
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines)


@pytest.mark.parametrize("bad, filters", [
    (b'{"type":"call","time":"2026-11-2\n', ()),  # cut short by a crash
    (b'{"type":"call","principal":{"subject":"alice"},oops}\n', ("--user", "alice")),
])
def test_a_corrupt_line_is_an_error_naming_file_and_line(world, bad, filters) -> None:
    lines = world["trail"].read_bytes().splitlines(keepends=True)
    world["trail"].write_bytes(b"".join([*lines[:3], bad, *lines[3:]]))
    result = query(world, *filters)
    assert result.exit_code == 1
    assert f"{world['trail']}:4: not a JSON record" in result.stderr
    assert "gwc audit verify" in result.stderr
    assert query(world, "--user", "bob").exit_code == 0  # a line no query needs is not read


# --- replay under the recording bundles -----------------------------------------------------------

def test_replay_of_an_honest_trail_finds_no_difference(world) -> None:
    result = replay(world)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("replayed 8 tools/call record(s) in 1 file(s): 8 same, "
                                    "0 different, 0 unreplayable")
    bundles_only = gwc("audit", "replay", world["trail"], "--bundles", world["out"] / "bundles",
                       "--trust", world["pub"], "--user", "alice", "--format", "json")
    assert bundles_only.exit_code == 0
    assert orjson.loads(bundles_only.stdout) == {"kind": "summary", "calls": 5, "evaluated": 5,
                                                 "same": 5, "skipped": 0}


def test_replay_finds_a_forged_decision_that_verify_cannot(world) -> None:
    def forge(records: list[dict]) -> None:
        r3 = next(r for r in records if r.get("request_id") == "r3")
        r3["policy"].update(effect="allow", reason="rule", rules=["eng-rollback"])
        r3["decision"], r3["outcome"] = "allow", "forwarded"
        next(r for r in records if r.get("request_id") == "r2")["policy"]["rules"] = ["ops-all"]
    rewrite(world["trail"], forge)
    assert gwc("audit", "verify", world["trail"]).exit_code == 0
    result = replay(world)
    assert result.exit_code == 1
    assert "6 same, 2 different" in result.stdout
    assert "allow, other rules" in result.stdout and "rules ops-all→eng-rollback" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"{world['trail']}:5"))
    assert row.split()[:6] == [f"{world['trail']}:5", "2026-11-19T23:59:59.999999Z", "r3",
                               "alice", "deploy", "rollback"]
    assert "effect allow→deny; reason rule→no_grant; rules eng-rollback→-" in row


def test_replay_finds_a_decision_its_policy_cannot_give(world) -> None:
    def forge(records: list[dict]) -> None:
        next(r for r in records if r.get("request_id") == "r6")["decision"] = "allow"
    rewrite(world["trail"], forge)
    result = replay(world, "--format", "json")
    assert result.exit_code == 1
    findings = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(f["kind"], f["request_id"], f["detail"]) for f in findings[:-1]] == [
        ("difference", "r6", "decision allow with policy effect deny")]


def test_a_value_too_large_to_record_is_unreplayable_not_a_difference(world) -> None:
    # Policy allowed the list (every element is staging); the trail keeps only its summary, and
    # replaying the summary as if it were the list would report a difference that is not one.
    call = call_record(world["recording"], "r9", ALICE, "deploy", "rollback",
                       {"env": ["staging"] * 2000}, "2026-11-22T10:00:00.000000Z")
    assert call["decision"] == "allow"
    assert call["arguments"]["values"] == {"env": {"…": "size>1024"}}
    trail = world["tmp"] / "large" / "audit.jsonl"
    asyncio.run(write_trail(trail, [call]))
    result = replay(world, "--format", "json", trail=trail)
    assert result.exit_code == 1
    findings = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(f["kind"], f["request_id"], f["detail"]) for f in findings[:-1]] == [
        ("unreplayable", "r9", "argument env was too large or too deep to record")]


def test_a_call_whose_bundle_is_missing_is_unreplayable_not_a_crash(world) -> None:
    other = world["tmp"] / "other"
    shutil.copytree(world["out"], other)
    (other / "bundles" / f"{world['recording'].digest.removeprefix('sha256:')}.json").unlink()
    result = gwc("audit", "replay", world["trail"], "--bundles", other, "--trust", world["pub"],
                 "--server", "wiki")
    assert result.exit_code == 1
    assert "0 same, 0 different, 2 unreplayable" in result.stdout
    assert f"bundle {world['recording'].digest} is not in {other}" in result.stdout
    assert result.stdout.count(f"{world['trail']}:") == 2


def test_bundles_must_be_signed_by_a_trusted_key_unless_told_not_to(world) -> None:
    assert gwc("audit", "replay", world["trail"], "--bundles", world["out"]).exit_code == 2
    _, stranger, _ = generate_keypair(world["tmp"] / "keys" / "stranger")
    refused = gwc("audit", "replay", world["trail"], "--bundles", world["out"], "--trust", stranger)
    assert refused.exit_code == 1 and "8 unreplayable" in refused.stdout
    assert "refused" in refused.stdout
    unverified = gwc("audit", "replay", world["trail"], "--bundles", world["out"], "--no-verify")
    assert unverified.exit_code == 0


def test_a_bundle_file_that_is_not_its_digest_is_not_used(world) -> None:
    addressed = world["out"] / "bundles" / f"{world['recording'].digest.removeprefix('sha256:')}.json"
    addressed.write_bytes(world["proposed"].envelope)  # signed by the same key, other content
    result = replay(world)
    assert result.exit_code == 1 and "does not hash to its name" in result.stdout


# --- preview under a proposed bundle --------------------------------------------------------------

@pytest.mark.parametrize("proposal", ["bundle", "registry"])
def test_a_proposed_bundle_reports_exactly_the_changed_calls(world, proposal) -> None:
    against = world["proposed"].path if proposal == "bundle" else world["proposed_root"]
    result = replay(world, "--against", against, "--format", "json")
    findings = [orjson.loads(line) for line in result.stdout.splitlines()]
    summary = findings.pop()
    assert summary == {"kind": "summary", "calls": 8, "evaluated": 7, "same": 5, "skipped": 0,
                       "change": 2, "undeterminable": 1}
    assert [(f["kind"], f["request_id"], f["label"]) for f in findings] == [
        ("change", "r1", "allow→deny"), ("change", "r3", "deny→allow"),
        ("undeterminable", "r5", "")]
    assert findings[2]["detail"] == "argument region was not recorded"
    # r8 had no env: recorded as read and absent, so still decided (deny), not undeterminable.
    assert result.exit_code == 1  # incomplete preview: one call could not be decided


def test_the_preview_table_counts_per_server_tool_and_change(world) -> None:
    result = replay(world, "--against", world["proposed"].path)
    out = result.stdout
    assert out.startswith("previewed 8 tools/call record(s) in 1 file(s) under "
                          f"{world['proposed'].path}: 5 unchanged, 2 changed, 1 undeterminable")
    assert "Changes under the proposed bundle (2):" in out
    counts = [line.split() for line in out.splitlines() if line.startswith("1 ")]
    assert ["1", "deploy", "status", "allow→deny"] in counts
    assert ["1", "deploy", "rollback", "deny→allow"] in counts
    assert ["1", "deploy", "rollback", "argument", "region", "was", "not", "recorded"] in counts


def test_a_complete_preview_exits_zero(world) -> None:
    result = replay(world, "--against", world["proposed"].path, "--user", "alice")
    assert result.exit_code == 0, result.stdout
    assert "2 changed, 0 undeterminable" in result.stdout


def test_a_condition_the_trail_cannot_judge_counts_only_where_the_rest_of_its_rule_holds(
        world) -> None:
    ticket = {**eng_rollback(["staging"]), "conditions": {"env": ["staging"],
                                                          "ticket": {"pattern": "CHG-.*"}}}
    dev_in_us = {**OPS_NO_US, "conditions": {"env": ["dev"], "region": ["us-east"]}}
    root = write_registry(world["tmp"] / "reg-c", manifests=MANIFESTS, policies={
        "ops/deploy.yaml": [OPS_ALL, ENG_READ, ticket, dev_in_us],
        "docs/wiki.yaml": [NO_CONTRACTOR_EDITS]})
    result = replay(world, "--against", root, "--format", "json")
    findings = [orjson.loads(line) for line in result.stdout.splitlines()]
    # r2 (env staging): only the ticket can decide. r3 (prod) and r8 (no env) fail env, which the
    # trail knows, whatever the ticket; bob's r5 (prod) cannot meet the deny's env: [dev].
    assert [(f["kind"], f["request_id"], f["detail"]) for f in findings[:-1]] == [
        ("undeterminable", "r2", "argument ticket was not recorded")]
    assert findings[-1]["same"] == 7 and result.exit_code == 1


def test_a_preview_without_the_recording_bundle_knows_only_the_recorded_values(world) -> None:
    empty = world["tmp"] / "no-bundles"
    empty.mkdir()
    result = gwc("audit", "replay", world["trail"], "--bundles", empty, "--trust", world["pub"],
                 "--against", world["proposed"].path, "--user", "alice", "--format", "json")
    findings = [orjson.loads(line) for line in result.stdout.splitlines()]
    # r8 sent no env: with the recording bundle that is a known absence; without it, unknown.
    assert [(f["kind"], f["request_id"]) for f in findings[:-1]] == [
        ("change", "r1"), ("change", "r3"), ("undeterminable", "r8")]
    assert findings[2]["detail"] == "argument env was not recorded" and result.exit_code == 1


def test_paths_known_from_the_trail() -> None:
    read = [("env",), ("target",), ("a", "b")]
    paths = [("env",), ("target", "region"), ("a", "b", "c"), ("a",), ("ticket",)]
    assert [p for p in paths if not covered(p, read)] == [("a",), ("ticket",)]
    assert arguments_from({"env": "prod", "target": {"region": "eu"}, "a.b": 3}, read) == \
        {"env": "prod", "target": {"region": "eu"}, "a": {"b": 3}}
    assert arguments_from({"a": {"b": 1, "c": 2}, "a.b": 1}, [("a",), ("a", "b")]) == \
        {"a": {"b": 1, "c": 2}}


def test_a_rotated_trail_is_read_in_order_and_replayed_side_by_side(world) -> None:
    rotated = world["tmp"] / "rotated" / "audit.jsonl"
    writer_records = trail_records(world["recording"])
    asyncio.run(write_trail(rotated, writer_records, max_bytes=2048))
    files = sorted(rotated.parent.iterdir(), reverse=True)  # any order on the command line
    assert len(files) > 3
    everything = gwc("audit", "query", *files, "--format", "json")
    assert request_ids(everything.stdout) == [r["request_id"] for r in writer_records]
    args = ["audit", "replay", *files, "--bundles", world["out"], "--trust", world["pub"],
            "--against", world["proposed"].path, "--format", "json"]
    one, two = gwc(*args, "--jobs", "1"), gwc(*args, "--jobs", "2")
    assert one.stdout == two.stdout and one.exit_code == two.exit_code == 1
    assert [orjson.loads(line).get("request_id") for line in two.stdout.splitlines()] == \
        ["r1", "r3", "r5", None]


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_lines_cut_from_blocks_are_the_lines_of_the_file(tmp_path, monkeypatch, block) -> None:
    monkeypatch.setattr(audit_trail, "BLOCK", block)
    lines = [b'{"n":1,"who":"alice"}', b"", b'{"n":2,"who":"bob","pad":"' + b"x" * 150 + b'"}',
             b"   ", b'{"n":3,"who":"alice"}\r', b'{"n":4,"who":"carol"}', b'{"n":5,"who":"alice"}']
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(lines))  # the last line has no newline
    expected = [(path, i, line.rstrip()) for i, line in enumerate(lines, 1) if line.strip()]
    assert list(audit_trail.TrailReader().lines([path, path])) == expected * 2
    wanted = [entry for entry in expected if b"alice" in entry[2] or b"carol" in entry[2]]
    anchored = audit_trail.TrailReader((b'"alice"', b'"carol"'))
    assert list(anchored.lines([path, path])) == wanted * 2
    unnumbered = audit_trail.TrailReader((b'"alice"', b'"carol"'), numbered=False)
    for _, number, line in unnumbered.lines([path]):
        assert number == 0 and (path, unnumbered.number_of_last(), line) in wanted
