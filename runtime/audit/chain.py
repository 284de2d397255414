"""The tamper-evident audit trail: what a record says, how records are chained, signed and checked.

Every record carries ``prev``, the hash of the record before it, and ``hash``, SHA-256 over its own
canonical JSON (sorted keys, compact, without ``hash``) which includes ``prev``. Editing a record
changes its hash; deleting or reordering records breaks the next record's ``prev``. A file starts
with a ``start`` record whose ``prev`` is the last hash of the file before it (rotation, restarts),
or 64 zeros for the very first file of a trail, so a chain runs across files too. A hash chain has
no secret, so nodes also sign their chain's head now and then (``checkpoint`` records, a
:class:`Head`) with the gateway's key: a rewrite before the last checkpoint breaks a signature, and
a saved head (an anchor) shows when records were cut off the end.

Argument values are kept only where policy reads them (the paths of the conditions of the rules
that can apply to the tool); of every other argument the record keeps the shape: its keys and the
JSON type of each value, nested. Both are bounded whatever a caller sends (``MAX_*`` below) and
built without recursion, in time linear in the arguments' size, so hostile input never costs a
record: the parts beyond a bound are summarised as ``{"…": "why"}``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from operator import length_hint
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.envelope import jwk_kid, pae
from gwc.runtime.bundle.format import BundlePayload

GENESIS = "0" * 64
_MISSING = object()

# What a record keeps of a call's arguments, at most (docs/audit.md, "Bounds").
MAX_DEPTH = 8  # levels of objects and lists; a deeper one is {"…": "depth>8"}
MAX_KEYS = 64  # keys kept per object; the rest are counted: {"…": "+N keys"}
MAX_KEY_CHARS = 64  # characters kept of a key (a longer one ends in "…")
MAX_KINDS = 16  # distinct kinds kept per list; items of other kinds are counted
MAX_SHAPE_SIZE = 4096  # a whole shape: characters of its keys, plus one per type or summary
MAX_VISITS = 10_000  # values a shape looks at one by one (a long list of one scalar type is free)
MAX_VALUE_SIZE = 1024  # a recorded value: characters of its strings and keys, plus one per value
CUT = "…"  # the key of a summary; a caller's own key "…" is left out of shapes (and counted)
HEAD_PAYLOAD_TYPE = "application/vnd.gwc.audit-head+json"


def utc_time(ts: float) -> str:
    """Fixed width (27 characters), so comparing two as strings compares the times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class UnencodableRecord(ValueError):
    """A record that is not JSON (a value orjson cannot write); it fails alone, at submit."""


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
    line, record["hash"] = _line(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
    return line


def encode(record: dict[str, Any], placeholder: str) -> bytes:
    """The record's canonical JSON with ``placeholder`` as its ``prev``: made once, by the caller,
    so a record that cannot be encoded fails alone; :func:`link` puts the real ``prev`` in. The
    placeholder must be one no caller can guess, or an argument value could stand in its place."""
    try:
        return orjson.dumps({**record, "prev": placeholder}, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise UnencodableRecord(f"the audit record cannot be encoded as JSON: {exc}") from None


def link(body: bytes, placeholder: bytes, prev: str) -> tuple[bytes, str]:
    """(JSONL line, hash) of an encoded record chained after ``prev``: the same bytes
    :func:`sealed_line` gives for the record (``prev`` is as long as the placeholder, and keys
    are sorted, so nothing else moves)."""
    return _line(body.replace(placeholder, prev.encode(), 1))


def _line(body: bytes) -> tuple[bytes, str]:
    digest = hashlib.sha256(body).hexdigest()
    return b"%s,\"hash\":\"%s\"}\n" % (body[:-1], digest.encode()), digest


# -- what a record keeps of arguments --------------------------------------------------------------

_LEAF = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_DONE = object()


def _leaf(value: Any) -> str:
    return _LEAF.get(type(value), "null")


def _canonical_kind(kind: Any) -> str | bytes:
    """A hashable stand-in for a kind, so a list's kinds are deduplicated in linear time."""
    return kind if isinstance(kind, str) else orjson.dumps(kind, option=orjson.OPT_SORT_KEYS)


class _Frame:
    """An object or list being shaped within ``budget``: its share of ``MAX_SHAPE_SIZE``, one
    of it kept for its own summary."""

    __slots__ = ("budget", "depth", "size")

    def __init__(self, depth: int, budget: int) -> None:
        self.depth, self.budget, self.size = depth, budget, 1

    def room(self) -> int:
        """The budget of a child about to be shaped: what this frame has left."""
        return self.budget - 1 - self.size

    def fits(self, size: int) -> bool:
        return self.size + size <= self.budget - 1


class _Object(_Frame):
    """An object being shaped: its keys in order while they fit, the others counted."""

    __slots__ = ("full", "items", "key", "out", "total")

    def __init__(self, value: dict[str, Any], depth: int, budget: int) -> None:
        super().__init__(depth, budget)
        self.total, self.items = len(value), iter(value.items())
        self.out: dict[str, Any] = {}
        self.key, self.full = "", False

    def next(self) -> Any:
        """The next value to shape (its key noted), or ``_DONE``."""
        for key, item in self.items:
            if self.full or len(self.out) == MAX_KEYS:
                break
            if len(key) > MAX_KEY_CHARS:
                key = key[:MAX_KEY_CHARS] + CUT
            if key != CUT and key not in self.out:
                self.key = key
                return item
        return _DONE

    def room(self) -> int:
        return super().room() - len(self.key)

    def take(self, kind: Any, size: int) -> None:
        size += len(self.key)
        if self.fits(size):
            self.out[self.key] = kind
            self.size += size
        else:
            self.full = True

    def stop(self) -> None:
        self.full = True

    def kind(self) -> tuple[Any, int]:
        if len(self.out) < self.total:
            self.out[CUT] = f"+{self.total - len(self.out)} keys"
            self.size += 1
        return self.out, self.size


class _List(_Frame):
    """A list being shaped: the distinct kinds of its items while they fit; from the first that
    does not, the items left are counted, not looked at."""

    __slots__ = ("items", "more", "out", "seen")

    def __init__(self, value: list[Any], depth: int, budget: int) -> None:
        super().__init__(depth, budget)
        self.items = iter(value)
        self.out: list[Any] = []
        self.seen: set[str | bytes] = set()
        self.more = 0

    def next(self) -> Any:
        """The next item whose kind is not known yet, or ``_DONE``. Scalars of a kind already
        kept are passed over here, in one tight loop: the common long list costs little."""
        seen = self.seen
        for item in self.items:
            if _LEAF.get(type(item)) not in seen:
                return item
        return _DONE

    def take(self, kind: Any, size: int) -> None:
        key = _canonical_kind(kind)
        if key in self.seen:
            return
        if len(self.out) < MAX_KINDS and self.fits(size):
            self.seen.add(key)
            self.out.append(kind)
            self.size += size
        else:
            self.more = 1
            self.stop()

    def stop(self) -> None:
        self.more += length_hint(self.items)
        self.items = iter(())

    def kind(self) -> tuple[Any, int]:
        if self.more:
            self.out.append({CUT: f"+{self.more} more items"})
            self.size += 1
        return self.out, self.size


def shape(value: Any) -> Any:
    """The JSON type of a value, nested: objects keep their keys, arrays the distinct types they
    hold. Bounded by ``MAX_*``: deeper levels, further keys and kinds, and whatever would make
    the whole larger or take longer are summarised; each object or list is shaped within what
    its parent has left. Depth first with a stack of its own (no recursion); no value is looked
    at twice, and list kinds are told apart by their canonical bytes (a set, not a search)."""
    if not isinstance(value, (dict, list)):
        return _leaf(value)
    stack: list[_Object | _List] = [_frame(value, 1, MAX_SHAPE_SIZE)]
    visits = 0
    while True:
        frame = stack[-1]
        if visits == MAX_VISITS:  # enough looked at: every open object and list ends here
            for open_frame in stack:
                open_frame.stop()
            visits += 1
        item = frame.next()
        visits += item is not _DONE
        if item is _DONE:
            kind, size = stack.pop().kind()
            if not stack:
                return kind
            stack[-1].take(kind, size)
        elif not isinstance(item, (dict, list)):
            frame.take(_leaf(item), 1)
        elif frame.depth == MAX_DEPTH:
            frame.take({CUT: f"depth>{MAX_DEPTH}"}, 1)
        else:
            stack.append(_frame(item, frame.depth + 1, frame.room()))


def _frame(value: dict[str, Any] | list[Any], depth: int, budget: int) -> _Object | _List:
    if isinstance(value, dict):
        return _Object(value, depth, budget)
    return _List(value, depth, budget)


def recorded(value: Any) -> Any:
    """A value policy read, as the trail keeps it: itself while it is small and shallow enough,
    else ``{"…": "depth>8"}`` or ``{"…": "size>1024"}``. Looks at no more of the value than the
    bound allows, whatever its size."""
    size, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        size += 1 + (len(node) if isinstance(node, (str, dict, list)) else 0)
        if size > MAX_VALUE_SIZE:
            return {CUT: f"size>{MAX_VALUE_SIZE}"}
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                return {CUT: f"depth>{MAX_DEPTH}"}
            if isinstance(node, dict):
                size += sum(map(len, node))
                node = node.values()
            stack.extend((item, depth + 1) for item in node)
    return value


def typed_record(line: bytes, type_: str) -> dict[str, Any] | None:
    """The record on ``line`` if it is one of type ``type_``; None for anything else, damage
    included (naming damage is verify's job, not a reader's that only looks for one type)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and record.get("type") == type_ else None


def is_summary(value: Any) -> bool:
    """A recorded value the trail summarised (or a caller's value that looks like one)."""
    return isinstance(value, dict) and len(value) == 1 and CUT in value


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
    """The values policy read, by dotted path (each bounded by :func:`recorded`); a missing one
    is left out."""
    out = {}
    for path in paths:
        value: Any = arguments
        for part in path:
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is _MISSING:
                break
        if value is not _MISSING:
            out[".".join(path)] = recorded(value)
    return out


def arguments_record(payload: BundlePayload, server: str, tool: str,
                     arguments: Any) -> dict[str, Any]:
    """What a record keeps of a call's arguments: their shape, and the values policy read."""
    return {"shape": shape(arguments),
            "values": policy_values(policy_paths(payload, server, tool), arguments)}


# -- signed heads ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Head:
    """A node's signed statement that record number ``seq`` of its trail (counted from the
    trail's first record) has hash ``head``. A ``checkpoint`` record holds one; ``GET
    /v1/audit/head`` serves the latest; ``gwc audit verify --anchor`` reads a saved one."""

    node: str
    seq: int
    head: str
    time: str
    keyid: str
    sig: str = ""

    @classmethod
    def sign(cls, key: Ed25519PrivateKey, node: str, seq: int, head: str) -> Head:
        unsigned = cls(node, seq, head, utc_time(time.time()), jwk_kid(key.public_key()))
        signature = base64.urlsafe_b64encode(key.sign(unsigned.statement()))
        return replace(unsigned, sig=signature.rstrip(b"=").decode())

    @classmethod
    def of(cls, data: Any) -> Head:
        """The head in a checkpoint record or a saved statement; ValueError if there is none."""
        try:
            head = cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            raise ValueError("not a signed audit head (node, seq, head, time, keyid, "
                             "sig)") from None
        if not (isinstance(head.seq, int) and all(isinstance(v, str) for v in (
                head.node, head.head, head.time, head.keyid, head.sig))):
            raise ValueError("not a signed audit head: a field has the wrong type")
        return head

    def statement(self) -> bytes:
        """What is signed: DSSE's pre-authentication encoding of the canonical fields, so the
        signature cannot be taken for one over anything else the gateway key signs."""
        return pae(HEAD_PAYLOAD_TYPE, canonical_json(
            {"node": self.node, "seq": self.seq, "head": self.head, "time": self.time,
             "keyid": self.keyid}))

    def signed_by(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(base64.urlsafe_b64decode(self.sig + "=" * (-len(self.sig) % 4)),
                       self.statement())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    def fields(self) -> dict[str, Any]:
        return asdict(self)


# -- checking a trail ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Break:
    """Where a chain stops holding, and why (``line`` 0: no one line is to blame)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else \
            f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class Verdict:
    """What one pass over a trail found. ``broken`` is tampering; ``torn`` and ``repairs`` are
    crashes; ``truncated`` says an anchored head is missing from the end."""

    records: int
    files: int
    broken: Break | None
    from_genesis: bool  # the trail starts at its very first record (not a later segment)
    node: str | None = None  # as the first start record names it
    torn: Break | None = None  # the final line, cut short by a crash while writing
    repairs: tuple[Break, ...] = ()  # torn lines a restarted node cut, as it recorded them
    checkpoints: int = 0
    signed: int = 0  # checkpoints whose signature was checked (keys were given)
    last_seq: int | None = None  # the number of the last record, when the trail says
    truncated: str | None = None
    anchored: int = 0  # anchors found in the trail
    unplaced: int = 0  # anchors before the given files: not checked

    @property
    def ok(self) -> bool:
        """The chain holds (nothing edited, removed, added or moved)."""
        return self.broken is None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line


def verify(paths: list[Path], keys: Mapping[str, Ed25519PublicKey] | None = None,
           anchors: Iterable[Head] = ()) -> Verdict:
    """Check a trail given as its files in order (oldest first): every hash, every link, a start
    record at the top of every file, and every checkpoint: that it signs the record before it,
    that its count agrees with the records given, and (with ``keys``, by key id) its signature.
    The first record's own ``prev`` is taken as given, so a later segment of a trail can be
    checked too; ``from_genesis`` says whether it was the start. A last line without its newline
    is a torn write (a crash), not a break. Each of ``anchors`` must be in the trail, or the
    trail must end before it (``truncated``) or begin after it (``unplaced``)."""
    wanted = {anchor.head: anchor for anchor in anchors}
    found: set[str] = set()
    prev: str | None = None
    node: str | None = None
    offset: int | None = None  # the number of the record before the first one given
    first_prev = None
    records = checkpoints = signed = 0
    repairs: list[Break] = []

    def verdict(broken: Break | None = None, torn: Break | None = None) -> Verdict:
        last = None if offset is None else offset + records
        truncated, unplaced = None, 0
        for anchor in wanted.values():
            if anchor.head in found or broken is not None:
                continue
            if last is None:
                truncated = (f"the anchored head (record {anchor.seq} of {anchor.time}) is not in "
                             "the given files, and they hold no checkpoint to place it by: give "
                             "the whole trail")
            elif anchor.seq > last:
                truncated = (f"the trail ends at record {last}, before the anchored head (record "
                             f"{anchor.seq} of {anchor.time}): records were cut from its end")
            elif offset is not None and anchor.seq <= offset:
                unplaced += 1
            else:
                broken = Break(str(paths[-1]), 0, f"record {anchor.seq} is not the anchored "
                               f"head {anchor.head[:16]}…: the trail was rewritten after it "
                               "was anchored")
        return Verdict(records, len(paths), broken, first_prev == GENESIS, node, torn,
                       tuple(repairs), checkpoints, signed, last, truncated,
                       len(found), unplaced)

    def fail(path: Path, line: int, reason: str) -> Verdict:
        return verdict(Break(str(path), line, reason))

    for path in paths:
        top = True
        for number, line in _lines(path):
            if path is paths[-1] and not line.endswith(b"\n"):
                return verdict(torn=Break(str(path), number, f"torn final line: {len(line)} "
                                          "bytes without a newline, a write cut short by a crash"))
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                return fail(path, number, "not a JSON record")
            if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
                return fail(path, number, "not an audit record")
            if record_hash(record) != record["hash"]:
                return fail(path, number, "the record was altered: its hash does not match it")
            kind = record.get("type")
            if top and kind != "start":
                return fail(path, number, "the file does not begin with its start record")
            if prev is None:
                first_prev = record.get("prev")
                offset = 0 if first_prev == GENESIS else None
            elif record.get("prev") != prev:
                return fail(path, number, "the chain is broken here: a record before it was "
                                            "removed, added or moved")
            if kind == "start" and node is None:
                node = record.get("node")
            elif kind == "repair":
                repairs.append(Break(str(path), number, _repaired(record)))
            elif kind == "checkpoint":
                try:
                    head = Head.of(record)
                except ValueError as exc:
                    return fail(path, number, f"a malformed checkpoint: {exc}")
                if head.head != prev:
                    return fail(path, number, "the checkpoint does not sign the record before it")
                if offset is None:
                    offset = head.seq - records
                elif head.seq != offset + records:
                    return fail(path, number, f"the checkpoint counts {head.seq} records up to "
                                  f"here, the trail {offset + records}: records were removed or "
                                  "added before it")
                if keys is not None:
                    key = keys.get(head.keyid)
                    if key is None:
                        return fail(path, number, f"the checkpoint is signed by key "
                                      f"{head.keyid}, which is not one of the keys given")
                    if not head.signed_by(key):
                        return fail(path, number, "the checkpoint's signature does not verify: "
                                      "it was forged or altered")
                    signed += 1
                checkpoints += 1
            if record["hash"] in wanted:
                found.add(record["hash"])
            prev, top = record["hash"], False
            records += 1
    return verdict()


def _repaired(record: dict[str, Any]) -> str:
    return (f"repair: at restart, node {record.get('node')} cut a torn line of "
            f"{record.get('length')} bytes at offset {record.get('offset')} of "
            f"{record.get('file')} (sha256 {str(record.get('sha256'))[:16]}…)")
