"""The fast paths of bundle loading (bench/hotswap.py) decide exactly as the plain path does.

- Stepped validation (one server, one rule at a time, unchanged ones reused), of a payload as one
  JSON document or as lines, accepts only what ``BundlePayload.model_validate_json`` accepts of
  the document, and builds the same models.
- The poller's check pauses the collector and puts it back as it was, freezes only accepted
  bundles, frees replaced bundles at its next round and logs how long an activation took.
"""
from __future__ import annotations

import copy
import gc
import json
import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import gwc.runtime.bundle.read as bundle_module
from gwc.compiler.build.bundle import build
from gwc.compiler.build.compile import payload_bytes
from gwc.compiler.build.registry import load_registry
from gwc.runtime.bundle import layout
from gwc.runtime.bundle.envelope import BUNDLE_LINES_TYPE, BUNDLE_PAYLOAD_TYPE
from gwc.runtime.bundle.format import BundlePayload, Server
from gwc.runtime.bundle.poller import BundlePoller, check_quietly, release_piecewise
from gwc.runtime.bundle.read import (
    BundleError,
    parse_payload,
    trusted_keys,
    validate_in_steps,
    validate_lines_in_steps,
)
from gwc.runtime.bundle.source import FileSource
from gwc.runtime.bundle.store import BundleStore
from gwc.runtime.metrics import Metrics

Doc = dict[str, Any]



@pytest.fixture
def collector():
    """Whatever a test does to the collector is undone afterwards."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def _server(d: Doc) -> Doc:
    return d["servers"]["data-catalog"]


def _tool(d: Doc) -> Doc:
    return _server(d)["tools"]["request_export"]


def _condition(d: Doc) -> Doc:
    return d["rules"][0]["conditions"][0]


def _set(get: Callable[[Doc], Any], key: str, value: Any) -> Callable[[Doc], None]:
    return lambda d: get(d).__setitem__(key, value)


def _top(d: Doc) -> Doc:
    return d


MUTATIONS = {
    "unchanged": lambda d: None,
    "serial-bool": _set(_top, "serial", True),
    "serial-str": _set(_top, "serial", "7"),
    "serial-float-integral": _set(_top, "serial", 7.0),
    "serial-float": _set(_top, "serial", 7.5),
    "serial-negative": _set(_top, "serial", -1),
    "serial-beyond-64-bit": _set(_top, "serial", 2 ** 70),
    "format-unknown": _set(_top, "format", "gwc.bundle/v2"),
    "servers-list": lambda d: d.__setitem__("servers", list(d["servers"].values())),
    "rules-object": _set(_top, "rules", {}),
    "rules-missing": lambda d: d.pop("rules"),
    "server-null": lambda d: d["servers"].__setitem__("data-catalog", None),
    "server-extra-field": _set(_server, "bogus", 1),
    "description-int": _set(_server, "description", 5),
    "description-unicode": _set(_server, "description", "ünïcødé \u2028 \U0001f600"),
    "restricted-int": _set(_server, "restricted", 1),
    "restricted-str": _set(_server, "restricted", "yes"),
    "visibility-groups-str": _set(lambda d: _server(d)["visibility"], "groups", "analytics"),
    "visibility-groups-object": _set(lambda d: _server(d)["visibility"], "groups", {"a": 1}),
    "tools-list": lambda d: _server(d).__setitem__("tools", list(_server(d)["tools"].values())),
    "tool-access-case": _set(_tool, "access", "WRITE"),
    "tool-timeout-str": _set(_tool, "timeout_ms", "30000"),
    "tool-timeout-float": _set(_tool, "timeout_ms", 30000.0),
    "tool-timeout-bool": _set(_tool, "timeout_ms", True),
    "tool-index-out-of-range": _set(_tool, "deny", [999]),
    "tool-index-negative": _set(_tool, "deny", [-1]),
    "tool-index-str": _set(_tool, "deny", ["0"]),
    "scheme-null": _set(lambda d: _server(d)["upstream_auth"], "scheme", None),
    "condition-in-str": _set(_condition, "in", "public"),
    "condition-in-mixed": _set(_condition, "in", [1, True, "x", 1.5, None]),
    "condition-in-nested": _set(_condition, "in", [[1]]),
    "condition-min-str": _set(_condition, "min", "3"),
    "rule-actions-str": _set(lambda d: d["rules"][0], "actions", "read"),
    "rule-subject-team": _set(lambda d: d["rules"][0]["subject"], "kind", "team"),
    "jwks-list": _set(lambda d: d["gateway"]["identity"], "jwks", []),
}


def _whole(payload: bytes) -> BundlePayload | None:
    try:
        return BundlePayload.model_validate_json(payload)
    except ValidationError:
        return None


def _same(a: BundlePayload, b: BundlePayload) -> bool:
    return (a.model_dump() == b.model_dump()
            and a.model_dump(exclude_unset=True, by_alias=True)
            == b.model_dump(exclude_unset=True, by_alias=True))


def _lines(d: Doc) -> bytes:
    """``d`` as a lines payload, its values written by the standard library (any integer)."""
    header = {k: v for k, v in d.items() if k not in ("servers", "rules")}
    header |= {"servers": list(d["servers"]), "rules": len(d["rules"])}
    return b"".join(json.dumps(part, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                    for part in (header, *d["servers"].values(), *d["rules"]))


# A lines payload has a line per server and per rule: servers that are no object or rules that are
# no list cannot be written as one.
NOT_LINES = {"servers-list", "rules-object", "rules-missing"}


@pytest.mark.parametrize("mutate, lines", [
    *((mutate, False) for mutate in MUTATIONS),
    *((mutate, True) for mutate in MUTATIONS if mutate not in NOT_LINES)],
    ids=lambda v: v if isinstance(v, str) else ("lines" if v else "document"))
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_stepped_validation_decides_as_whole_validation(doc, mutate, warm, lines):
    mutate = MUTATIONS[mutate]
    if warm:  # the unchanged pieces then come from the memo of the payload validated last
        assert (parse_payload(_lines(doc), BUNDLE_LINES_TYPE) if lines
                else parse_payload(payload_bytes(doc))) is not None
    mutated = copy.deepcopy(doc)
    mutate(mutated)
    payload = json.dumps(mutated, ensure_ascii=False).encode()  # (orjson: no big ints)
    whole = _whole(payload)
    if lines:
        assert isinstance(mutated["servers"], dict) and isinstance(mutated.get("rules"), list)
        payload, payload_type = _lines(mutated), BUNDLE_LINES_TYPE
        stepped = validate_lines_in_steps(layout.split(payload))
    else:
        payload_type, stepped = BUNDLE_PAYLOAD_TYPE, validate_in_steps(payload)
    if stepped is not None:  # may step aside (None) but never accept what whole refuses
        assert whole is not None and _same(stepped, whole)
    if whole is None:
        with pytest.raises(BundleError):
            parse_payload(payload, payload_type)
    else:
        assert _same(parse_payload(payload, payload_type), whole)


def test_unchanged_servers_and_rules_are_reused_changed_ones_validated(doc):
    first = validate_in_steps(payload_bytes(doc))
    second_doc = copy.deepcopy(doc)
    second_doc["serial"] = 2
    _server(second_doc)["description"] = "changed"
    second_doc["rules"][1]["rate_limit_per_minute"] = 31
    second = validate_in_steps(payload_bytes(second_doc))
    assert first is not None and second is not None
    assert [n for n, s in second.servers.items() if s is not first.servers[n]] == ["data-catalog"]
    assert [i for i, r in enumerate(second.rules) if r is not first.rules[i]] == [1]
    assert second.servers["data-catalog"].description == "changed"
    assert second.rules[1].rate_limit_per_minute == 31

    # Reuse needs the same bytes, not just an equal value: 30000.0 is validated afresh.
    third_doc = copy.deepcopy(second_doc)
    _tool(third_doc)["timeout_ms"] = 30000.0
    third = validate_in_steps(payload_bytes(third_doc))
    assert third is not None and third.servers["data-catalog"] is not second.servers["data-catalog"]
    assert third.servers["data-catalog"] == second.servers["data-catalog"]


@pytest.mark.parametrize("encoding", ["json", "lines"])
def test_a_changed_servers_unchanged_tools_are_reused(doc, encoding):
    first = parse_payload(layout.encode(doc, encoding), layout.ENCODINGS[encoding])
    changed = copy.deepcopy(doc)
    _server(changed)["description"] = "changed"
    _tool(changed)["timeout_ms"] = 1234
    second = parse_payload(layout.encode(changed, encoding), layout.ENCODINGS[encoding])
    old, new = first.servers["data-catalog"], second.servers["data-catalog"]
    assert new is not old and new.description == "changed"
    assert [n for n, t in new.tools.items() if t is not old.tools[n]] == ["request_export"]
    assert new.tools["request_export"].timeout_ms == 1234
    assert new.tools["request_export"] == old.tools["request_export"].model_copy(
        update={"timeout_ms": 1234})


@pytest.mark.parametrize("encoding", ["json", "lines"])
def test_a_changed_server_with_reused_tools_takes_their_rule_index_range(doc, encoding):
    first = parse_payload(layout.encode(doc, encoding), layout.ENCODINGS[encoding])
    _server(doc)["description"] = "changed"  # its tools unchanged: reused with their range
    second = parse_payload(layout.encode(doc, encoding), layout.ENCODINGS[encoding])
    old, new = first.servers["data-catalog"], second.servers["data-catalog"]
    assert new is not old and new.rule_index_range is old.rule_index_range
    assert new.rule_index_range == Server.rule_index_range.func(new)  # what computing it gives
    assert new == Server.model_validate_json(new.model_dump_json(by_alias=True))
    doc["rules"] = doc["rules"][:5]  # request_export names rule 5: a shared range is checked too
    with pytest.raises(BundleError, match="rule index 5 out of range"):
        parse_payload(layout.encode(doc, encoding), layout.ENCODINGS[encoding])


@pytest.mark.parametrize("encoding", ["json", "lines"])
def test_a_changed_rules_subject_and_conditions_are_reused(doc, encoding):
    first = parse_payload(layout.encode(doc, encoding), layout.ENCODINGS[encoding])
    changed = copy.deepcopy(doc)
    changed["rules"][0]["id"] = "renamed"
    second = parse_payload(layout.encode(changed, encoding), layout.ENCODINGS[encoding])
    old, new = first.rules[0], second.rules[0]
    assert new is not old and new.id == "renamed" and old.conditions
    assert new.subject is old.subject
    assert all(a is b for a, b in zip(new.conditions, old.conditions, strict=True))


def test_lines_reuse_unchanged_servers_and_rules_by_their_bytes(doc):
    first = parse_payload(layout.encode(doc), BUNDLE_LINES_TYPE)
    changed = copy.deepcopy(doc)
    changed["serial"] = 2
    changed["servers"]["deploy"]["description"] = "changed"
    changed["rules"][3]["source"] = "elsewhere:1"
    second = parse_payload(layout.encode(changed), BUNDLE_LINES_TYPE)
    assert [n for n, s in second.servers.items() if s is not first.servers[n]] == ["deploy"]
    assert [i for i, r in enumerate(second.rules) if r is not first.rules[i]] == [3]
    assert second == BundlePayload.model_validate(changed)
    assert second == parse_payload(layout.encode(changed, "json"))  # either encoding, one model


def test_a_reused_server_is_checked_against_the_new_rules(doc):
    assert validate_in_steps(payload_bytes(doc)) is not None
    doc["rules"] = doc["rules"][:5]  # data-catalog's request_export names rule 5
    with pytest.raises(BundleError, match="rule index 5 out of range"):
        parse_payload(payload_bytes(doc))


def test_the_memo_goes_with_the_payload_it_came_from(doc):
    first = validate_in_steps(payload_bytes(doc))
    assert bundle_module._last_pieces.owner() is first
    del first  # a refused bundle, say: its pieces are not kept alive for the next one
    assert bundle_module._last_pieces is bundle_module._NO_PIECES


def test_malformed_payload_is_refused_with_the_whole_validation_message(doc):
    _tool(doc)["deny"] = [999]
    with pytest.raises(BundleError, match="rule index 999 out of range"):
        parse_payload(payload_bytes(doc))
    with pytest.raises(BundleError, match="malformed payload: not JSON"):
        parse_payload(b"{not json")


@pytest.fixture
def bundles(example_root: Path, signing_key, tmp_path: Path) -> Callable[[int], bytes]:
    registry = load_registry(example_root)
    return lambda serial: build(registry, signing_key[2], tmp_path / f"out-{serial}", serial,
                                "r").envelope


@pytest.mark.parametrize("enabled", [True, False])
def test_check_quietly_restores_the_collector_and_freezes_only_accepted_bundles(
        bundles, signing_key, collector, enabled):
    (gc.enable if enabled else gc.disable)()
    store = BundleStore(trusted_keys([str(signing_key[1])]))
    gc.unfreeze()
    bundle = check_quietly(store, bundles(1))
    assert bundle is not None and gc.isenabled() == enabled
    assert gc.get_freeze_count() > 0  # the accepted bundle is out of the collector's way

    store.activate(bundle)
    assert check_quietly(store, bundles(1)) is None  # the active bytes: not even parsed
    gc.unfreeze()
    with pytest.raises(BundleError, match="rollback"):
        check_quietly(store, bundles(0))
    assert gc.isenabled() == enabled and gc.get_freeze_count() == 0


class _Sentinel:
    pass


class _BusyStore(BundleStore):
    """A store whose check, like a node serving requests meanwhile, leaves cyclic garbage."""

    def check(self, data: bytes, digest: str | None = None):
        cycle: list[object] = [_Sentinel()]
        cycle.append(cycle)
        self.garbage = weakref.ref(cycle[0])
        del cycle
        return super().check(data, digest)


def test_garbage_made_during_a_check_is_not_frozen_with_the_bundle(bundles, signing_key, collector):
    store = _BusyStore(trusted_keys([str(signing_key[1])]))
    gc.unfreeze()
    assert check_quietly(store, bundles(1)) is not None and gc.get_freeze_count() > 0
    assert store.garbage() is None  # collected before the freeze, not kept for good


async def test_poller_frees_the_replaced_bundle_at_its_next_round_and_times_activations(
        bundles, signing_key, tmp_path, collector, caplog):
    path = tmp_path / "bundle.json"
    path.write_bytes(bundles(1))
    store = BundleStore(trusted_keys([str(signing_key[1])]))
    poller = BundlePoller(FileSource(path), store, Metrics(), 30)
    with caplog.at_level(logging.INFO, logger="gwc.bundle"):
        assert await poller.poll_once() == "activated"
        first = store.active
        path.write_bytes(bundles(2))
        assert await poller.poll_once() == "activated"
    assert poller._retired == [first]  # kept until requests that started under it are done
    assert await poller.poll_once() == "unchanged"
    assert poller._retired == [] and store.active.serial == 2
    assert first.payload.servers and first.payload.rules  # a held bundle is never taken apart
    activated = [r for r in caplog.records if r.getMessage() == "bundle activated"]
    assert [r.serial for r in activated] == [1, 2]
    assert all(0 <= r.check_s <= r.activation_s for r in activated)


def test_release_piecewise_empties_the_list_and_leaves_held_bundles_intact(bundles, signing_key):
    store = BundleStore(trusted_keys([str(signing_key[1])]))
    held = store.check(bundles(1))
    retired = [held]
    release_piecewise(retired)
    assert retired == [] and len(held.payload.servers) == 5 and held.payload.rules


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
async def test_at_debug_level_an_activation_logs_the_event_loops_longest_stall(
        bundles, signing_key, tmp_path, collector, caplog, level):
    path = tmp_path / "bundle.json"
    path.write_bytes(bundles(1))
    poller = BundlePoller(FileSource(path), BundleStore(trusted_keys([str(signing_key[1])])),
                          Metrics(), 30)
    with caplog.at_level(level, logger="gwc.bundle"):
        assert await poller.poll_once() == "activated"
    [activated] = [r for r in caplog.records if r.getMessage() == "bundle activated"]
    if level == logging.DEBUG:
        assert 0 <= activated.loop_stall_ms < activated.activation_s * 1000 + 1
    else:
        assert not hasattr(activated, "loop_stall_ms")
