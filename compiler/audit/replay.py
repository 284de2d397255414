"""`gwc audit replay`: decide every recorded ``tools/call`` again, with the runtime's own code.

Under the bundle that made each decision (found by its digest), a replayed decision must equal the
recorded one: a difference means the trail or the runtime is wrong, and is reported. Under a
proposed bundle (``against``), the differences are the preview of a policy change on real traffic.

The trail keeps only the argument values the recording bundle's policy read (absent ones left
out), so a proposed bundle that reads another argument cannot always be decided: a path is known
when a path the recording bundle read is a prefix of it (its value, or its known absence, says
what lies below). A call whose decision hangs on an unknown path is "undeterminable", never
guessed.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from sys import intern
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gwc.compiler.audit.trail import user_label
from gwc.runtime.audit.record import policy_fields
from gwc.runtime.audit.shape import is_summary, policy_paths
from gwc.runtime.bundle.format import BundlePayload, Rule
from gwc.runtime.bundle.read import Bundle, BundleError, digest_of, load_bundle, read_unverified
from gwc.runtime.policy.decide import (
    Decision,
    Principal,
    condition_holds,
    decide,
    subject_matches,
    visible_server,
)

Path_ = tuple[str, ...]
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
if TYPE_CHECKING:
    from gwc.compiler.audit.trail import TrailFile

POLICY_FIELDS = ("effect", "reason", "rules", "mode", "approval_required")  # policy_fields' keys


def arguments_from(values: dict[str, Any], read: Iterable[Path_]) -> dict[str, Any]:
    """The arguments as far as the trail knows them: each read path that has a recorded value,
    set at its place. Longer paths first, so a shorter one's whole value wins (it holds them)."""
    arguments: dict[str, Any] = {}
    for path in sorted(read, key=len, reverse=True):
        key = ".".join(path)
        if key not in values:
            continue
        node = arguments
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = values[key]
    return arguments


def covered(path: Path_, read: Iterable[Path_]) -> bool:
    """Whether the trail knows a path: a read path is it or a prefix of it (its value, or its
    known absence, says what lies below)."""
    return any(path[:len(r)] == r for r in read)


def conditional_rules(payload: BundlePayload, principal: Principal, server: str, tool: str
                      ) -> list[Rule]:
    """The rules a decision for this principal can hang on an argument for: those on the tool
    whose subject is the principal's and which have conditions. Outside visibility, none."""
    found = visible_server(payload, principal, server)
    spec = found.tools.get(tool) if found is not None else None
    if spec is None:
        return []
    rules = (payload.rules[index] for index in (*spec.allow, *spec.deny))
    return [rule for rule in rules if rule.conditions and subject_matches(rule, principal)]


def unknown(rules: Iterable[Rule], arguments: dict[str, Any], read: list[Path_]) -> list[str]:
    """The unrecorded paths the decision still depends on, dotted. A rule that reads one does
    not make the call undeterminable when its recorded conditions settle it anyway: an allow rule
    with one that does not hold cannot grant, a deny rule with one that fails cannot apply (the
    runtime's own condition_holds judges). decide() without the unknown values is then exact."""
    missing: list[str] = []
    for rule in rules:
        unread = [c.path for c in rule.conditions if not covered(c.path, read)]
        if not unread:
            continue
        known = [c for c in rule.conditions if covered(c.path, read)]
        if rule.effect == "allow":
            settled = any(condition_holds(c, arguments) is not True for c in known)
        else:
            settled = any(condition_holds(c, arguments, every=False) is False for c in known)
        if not settled:
            missing.extend(d for d in (".".join(p) for p in unread) if d not in missing)
    return missing


def contradiction(record: dict[str, Any]) -> str | None:
    """Why a recorded decision cannot follow from the recorded policy, if it cannot."""
    policy, decision = record["policy"], record.get("decision")
    effect = policy.get("effect")
    if decision == "allow" and effect != "allow":
        return f"decision allow with policy effect {effect}"
    if decision == "would_deny" and (effect != "deny" or policy.get("mode") != "shadow"):
        return f"decision would_deny with policy effect {effect} in mode {policy.get('mode')}"
    if decision == "not_found" and effect != "not_found":
        return f"decision not_found with policy effect {effect}"
    return None


def describe(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The fields that differ, ``field old→new``."""
    def show(value: Any) -> str:
        return (",".join(value) or "-") if isinstance(value, list) else str(value)
    return "; ".join(f"{name} {show(old.get(name))}→{show(new.get(name))}"
                     for name in POLICY_FIELDS if old.get(name) != new.get(name))


def change_label(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The kind of a change, for counting: the effect's move first, else what else moved."""
    if old.get("effect") != new.get("effect"):
        return f"{old.get('effect')}→{new.get('effect')}"
    if old.get("mode") != new.get("mode"):
        return f"{old.get('effect')}, mode {old.get('mode')}→{new.get('mode')}"
    if old.get("approval_required") != new.get("approval_required"):
        return f"{old.get('effect')}, approval " + \
            ("now required" if new.get("approval_required") else "no longer required")
    return f"{old.get('effect')}, other rules"


class Shelf:
    """Bundles by digest from a folder of ``<hex>.json`` files (or a build output folder with
    ``bundles/`` in it), each read once. A bundle is used only if its bytes hash to the digest
    the record names and, unless ``trusted`` is None, its signature is by a trusted key."""

    def __init__(self, folder: Path, trusted: dict[str, Ed25519PublicKey] | None) -> None:
        self._folders = [folder, folder / "bundles"]
        self._trusted = trusted
        self._loaded: dict[str, Bundle | str] = {}

    def get(self, digest: Any) -> Bundle | str:
        """The bundle, or why there is none."""
        key = str(digest)
        if key not in self._loaded:
            self._loaded[key] = self._load(key)
        return self._loaded[key]

    def _load(self, digest: str) -> Bundle | str:
        hex_ = digest.removeprefix("sha256:")
        if not _DIGEST.fullmatch(digest):  # also: never a path out of the folder
            return f"the record names no bundle digest ({digest!r})"
        for folder in self._folders:
            path = folder / f"{hex_}.json"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                return f"cannot read {path}: {exc.strerror or exc}"
            if digest_of(data) != digest:
                return f"{path} does not hash to its name: not the bundle recorded"
            try:
                return read_unverified(data) if self._trusted is None \
                    else load_bundle(data, self._trusted)
            except BundleError as exc:
                return f"{path} refused: {exc}"
        return f"bundle {digest} is not in {self._folders[0]}"


@dataclass(frozen=True, slots=True)
class Finding:
    """One call worth reporting. kind: difference (replay disagrees with the record),
    unreplayable (its bundle is missing or refused, the record is malformed, or a value policy
    read was summarised in the trail), change (the
    proposed bundle decides otherwise), undeterminable (it reads an argument not recorded)."""

    kind: str
    file: str
    line: int
    time: str | None
    request_id: str | None
    user: str
    server: str | None
    tool: str | None
    recorded: dict[str, Any] | None
    replayed: dict[str, Any] | None
    detail: str
    label: str = ""  # the kind of change, for counting (see change_label)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Totals:
    calls: int = 0  # tools/call records read
    evaluated: int = 0
    same: int = 0
    skipped: int = 0  # policy null (a /mcp name that resolved to nothing): nothing to compare
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, other: Totals) -> None:
        self.calls += other.calls
        self.evaluated += other.evaluated
        self.same += other.same
        self.skipped += other.skipped
        for kind, count in other.by_kind.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0) + count

    def as_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "evaluated": self.evaluated, "same": self.same,
                "skipped": self.skipped, **self.by_kind}


CACHE_SIZE = 100_000  # decisions (and principals) kept; forgotten all at once when full


def _finding(kind: str, path: TrailFile, number: int, record: dict[str, Any],
             replayed: dict[str, Any] | None, detail: str, label: str = "") -> Finding:
    return Finding(kind, str(path), number, record.get("time"), record.get("request_id"),
                   user_label(record.get("principal")), record.get("server"), record.get("tool"),
                   record.get("policy"), replayed, detail, label)


class Replay:
    """Replays the records it is given (already selected: tools/call records) and yields what
    is worth reporting; ``totals`` counts everything as it goes.

    Identical calls (same bundle, principal, tool and recorded values: an agent polling, say)
    are decided once; decide() costs about as much as parsing the record."""

    def __init__(self, shelf: Shelf, proposed: BundlePayload | None = None) -> None:
        self.shelf, self.proposed = shelf, proposed
        self.totals = Totals()
        self._decisions: dict[tuple[Any, ...], dict[str, Any] | list[str]] = {}
        self._principals: dict[tuple[Any, ...], tuple[int, Principal]] = {}
        self._outcomes: dict[Decision, dict[str, Any]] = {}
        self._read: dict[tuple[str, str, str], list[Path_]] = {}
        self._rules: dict[tuple[int, str, str], list[Rule]] = {}

    def run(self, records: Iterable[tuple[TrailFile, int, dict[str, Any]]]) -> Iterator[Finding]:
        totals = self.totals
        for path, number, record in records:
            totals.calls += 1
            if "policy" in record and record["policy"] is None:
                totals.skipped += 1
                continue
            finding = self._one(path, number, record)
            if finding is None:
                totals.same += 1
            else:
                totals.by_kind[finding.kind] = totals.by_kind.get(finding.kind, 0) + 1
                yield finding

    def _one(self, path: TrailFile, number: int, record: dict[str, Any]) -> Finding | None:
        try:
            who = record["principal"]
            server, tool, policy = record["server"], record["tool"], record["policy"]
            values, digest = record["arguments"]["values"], record["bundle"]["digest"]
            if not (isinstance(server, str) and isinstance(tool, str) and isinstance(policy, dict)
                    and isinstance(values, dict) and isinstance(digest, str)):
                raise TypeError
            person, principal = self._principal(
                (who["subject"], who.get("kind") or "human", tuple(who.get("groups") or ()),
                 who.get("acting_for")))
            # The digest interned and the values as text (orjson's bytes keep a large buffer
            # each): a full cache holds little more than the distinct values themselves.
            key = (intern(digest), person, server, tool,
                   orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode())
        except (KeyError, TypeError):
            return _finding("unreplayable", path, number, record, None, "malformed call record: "
                            "principal, server, tool, policy, arguments.values or bundle missing")
        summarised = [name for name, value in values.items() if is_summary(value)]
        if summarised:  # the trail holds {"…": why}, not what policy judged
            return _finding("unreplayable", path, number, record, None, "argument " + ", ".join(
                summarised) + " was too large or too deep to record")
        outcome = self._decisions.get(key)
        if outcome is None:
            recording = self.shelf.get(digest)
            if self.proposed is None and isinstance(recording, str):
                return _finding("unreplayable", path, number, record, None, recording)
            outcome = self._decide(recording, person, principal, server, tool, values)
            if len(self._decisions) >= CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = outcome
        if isinstance(outcome, list):
            return _finding("undeterminable", path, number, record, None,
                            "argument " + ", ".join(outcome) + " was not recorded")
        self.totals.evaluated += 1
        if any(policy.get(name) != outcome[name] for name in POLICY_FIELDS):
            recorded = {name: policy.get(name) for name in POLICY_FIELDS}
            return _finding("change" if self.proposed is not None else "difference", path,
                            number, record, outcome, describe(recorded, outcome),
                            change_label(recorded, outcome))
        if self.proposed is None:
            why = contradiction(record)
            if why is not None:
                return _finding("difference", path, number, record, outcome, why,
                                "decision contradicts policy")
        return None

    def _principal(self, person: tuple[Any, ...]) -> tuple[int, Principal]:
        """A number for the principal (a small cache key) and the principal, built once."""
        known = self._principals.get(person)
        if known is None:
            if len(self._principals) >= CACHE_SIZE:  # their numbers are in the other caches
                self._principals.clear()
                self._decisions.clear()
                self._rules.clear()
            subject, kind, groups, acting_for = person
            known = self._principals[person] = (
                len(self._principals), Principal(subject, frozenset(groups), kind, acting_for))
        return known

    def _outcome(self, decision: Decision) -> dict[str, Any]:
        """One shared dict per distinct decision, not one per call."""
        outcome = self._outcomes.get(decision)
        if outcome is None:
            outcome = self._outcomes[decision] = policy_fields(decision)
        return outcome

    def _decide(self, recording: Bundle | str, person: int, principal: Principal, server: str,
                tool: str, values: dict[str, Any]) -> dict[str, Any] | list[str]:
        """The replayed decision, or (under a proposed bundle) the unknown paths it needs."""
        if isinstance(recording, str):  # preview without the recording bundle: absence unknown
            read = [tuple(k.split(".")) for k in values]
        else:
            cache_key = (recording.digest, server, tool)
            if cache_key not in self._read:
                self._read[cache_key] = policy_paths(recording.payload, server, tool)
            read = self._read[cache_key]
        arguments = arguments_from(values, read)
        if self.proposed is None:
            assert not isinstance(recording, str)
            return self._outcome(decide(recording.payload, principal, server, tool, arguments))
        rules = self._rules.get((person, server, tool))
        if rules is None:
            if len(self._rules) >= CACHE_SIZE:
                self._rules.clear()
            rules = self._rules[person, server, tool] = conditional_rules(
                self.proposed, principal, server, tool)
        missing = unknown(rules, arguments, read)
        if missing:
            return missing
        return self._outcome(decide(self.proposed, principal, server, tool, arguments))
