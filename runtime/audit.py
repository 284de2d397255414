"""The tamper-evident audit trail: what a record says, how records are chained, how a chain is
checked.

Every record carries ``prev``, the hash of the record before it, and ``hash``, SHA-256 over its own
canonical JSON (sorted keys, compact, without ``hash``) which includes ``prev``. Editing a record
changes its hash; deleting or reordering records breaks the next record's ``prev``. A file starts
with a ``start`` record whose ``prev`` is the last hash of the file before it (rotation, restarts),
or 64 zeros for the very first file of a trail, so a chain runs across files too.

Argument values are kept only where policy reads them (the paths of the conditions of the rules
that can apply to the tool); of every other argument the record keeps the shape: its keys and the
JSON type of each value, nested.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from runtime.bundle_format import BundlePayload

GENESIS = "0" * 64
_MISSING = object()


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON, ``hash`` itself left out."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def seal(record: dict[str, Any], prev: str) -> dict[str, Any]:
    """The record chained after ``prev``: with ``prev`` and its own ``hash`` set."""
    sealed_line(record, prev)
    return record


def sealed_line(record: dict[str, Any], prev: str) -> bytes:
    """Seal the record and give its JSONL line, serialised once: the canonical bytes that are
    hashed are the line, with ``hash`` appended last."""
    record.pop("hash", None)
    record["prev"] = prev
    body = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    record["hash"] = digest = hashlib.sha256(body).hexdigest()
    return b"%s,\"hash\":\"%s\"}\n" % (body[:-1], digest.encode())


def shape(value: Any) -> Any:
    """The JSON type of a value, nested: objects keep their keys, arrays the types they hold."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        kinds: list[Any] = []
        for item in value:
            kind = shape(item)
            if kind not in kinds:
                kinds.append(kind)
        return kinds
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null"


def policy_paths(payload: BundlePayload, server: str, tool: str) -> list[tuple[str, ...]]:
    """The argument paths the conditions of the rules that can apply to a tool read."""
    spec = payload.servers[server].tools.get(tool) if server in payload.servers else None
    if spec is None:
        return []
    paths: list[tuple[str, ...]] = []
    for index in (*spec.allow, *spec.deny):
        for condition in payload.rules[index].conditions:
            if condition.path not in paths:
                paths.append(condition.path)
    return paths


def policy_values(paths: Iterable[tuple[str, ...]], arguments: Any) -> dict[str, Any]:
    """The values policy read, by dotted path; a missing one is left out."""
    out = {}
    for path in paths:
        value: Any = arguments
        for part in path:
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is _MISSING:
                break
        if value is not _MISSING:
            out[".".join(path)] = value
    return out


def arguments_record(payload: BundlePayload, server: str, tool: str,
                     arguments: Any) -> dict[str, Any]:
    """What a record keeps of a call's arguments: their shape, and the values policy read."""
    return {"shape": shape(arguments),
            "values": policy_values(policy_paths(payload, server, tool), arguments)}


@dataclass(frozen=True)
class Break:
    """Where a chain stops holding, and why."""

    file: str
    line: int
    reason: str


@dataclass(frozen=True)
class Verdict:
    records: int
    files: int
    broken: Break | None
    from_genesis: bool  # the trail starts at its very first record (not a later segment)

    @property
    def ok(self) -> bool:
        return self.broken is None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line


def verify(paths: list[Path]) -> Verdict:
    """Check a trail given as its files in order (oldest first): every hash, every link, a start
    record at the top of every file. The first record's own ``prev`` is taken as given, so a
    later segment of a trail can be checked too; ``from_genesis`` says whether it was the start."""
    prev: str | None = None
    first_prev = None
    records = 0

    def broken(path: Path, line: int, reason: str) -> Verdict:
        return Verdict(records, len(paths), Break(str(path), line, reason), first_prev == GENESIS)

    for path in paths:
        top = True
        for number, line in _lines(path):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                return broken(path, number, "not a JSON record")
            if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
                return broken(path, number, "not an audit record")
            if record_hash(record) != record["hash"]:
                return broken(path, number, "the record was altered: its hash does not match it")
            if top and record.get("type") != "start":
                return broken(path, number, "the file does not begin with its start record")
            if prev is None:
                first_prev = record.get("prev")
            elif record.get("prev") != prev:
                return broken(path, number, "the chain is broken here: a record before it was "
                                            "removed, added or moved")
            prev, top = record["hash"], False
            records += 1
    return Verdict(records, len(paths), None, first_prev == GENESIS)
