"""The tamper-evident audit trail: what a record says, how records are chained, signed and checked.

Every record carries ``prev``, the hash of the record before it, and ``hash``, SHA-256 over its own
canonical JSON (sorted keys, compact, without ``hash``) which includes ``prev``. Editing a record
changes its hash; deleting or reordering records breaks the next record's ``prev``. A file starts
with a ``start`` record whose ``prev`` is the last hash of the file before it (rotation, restarts),
or 64 zeros for the very first file of a trail, so a chain runs across files too. A hash chain has
no secret, so nodes also sign their chain's head now and then (``checkpoint`` records, a
:class:`Head`) with the gateway's key: a rewrite before the last checkpoint breaks a signature, and
a saved head (an anchor) shows when records were cut off the end.

What a record keeps of a call's arguments (bounded shapes and the values policy read) is
``gwc.runtime.audit.shape``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.envelope import jwk_kid, pae

GENESIS = "0" * 64

HEAD_PAYLOAD_TYPE = "application/vnd.gwc.audit-head+json"


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # a record's time: UTC, fixed width (27 characters)
_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text up to the "."


def utc_time(ts: float) -> str:
    """Fixed width, so comparing two as strings compares the times. The text of the second is
    kept (every call writes one, and strftime costs several microseconds); the microseconds are
    rounded as ``datetime.fromtimestamp`` rounds them."""
    global _second
    whole = math.floor(ts)
    micros = round((ts - whole) * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    second, text = _second
    if whole != second:
        text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, text)  # one tuple: a thread reading it sees both halves together
    return f"{text}.{micros:06d}Z"


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


def typed_record(line: bytes, type_: str) -> dict[str, Any] | None:
    """The record on ``line`` if it is one of type ``type_``; None for anything else, damage
    included (naming damage is verify's job, not a reader's that only looks for one type)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and record.get("type") == type_ else None


CHAIN_ID = re.compile(r"[0-9a-f]{16}")  # a chain's id: 16 hex digits its first start record chose


def chain_id(record: dict[str, Any] | None) -> str | None:
    """The chain a start record names; None for none (written before chains had ids)."""
    chain = record.get("chain") if record is not None else None
    return chain if isinstance(chain, str) and CHAIN_ID.fullmatch(chain) else None


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


class TrailFile(Protocol):
    """A file of a trail to check: a ``pathlib.Path``, or anything else that opens as a binary
    stream (an object in a store) and whose ``str`` names it in findings."""

    def open(self, mode: Literal["rb"]) -> BinaryIO: ...


@dataclass(frozen=True)
class Part:
    """What :func:`verify` saw of one file read to its end: its records, and its last checkpoint
    (the head it signs, and that checkpoint's place among the file's records, from 1; 0: none)."""

    records: int
    checkpoint: Head | None = None
    checkpoint_at: int = 0
    chained: bool = True  # its start record names its chain (files written before that do not)


@dataclass(frozen=True)
class Verification:
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
    parts: tuple[Part, ...] = ()  # per file read to its end, in order (fewer when one broke)
    chain: str | None = None  # the chain id the first start record names, if it names one

    @property
    def ok(self) -> bool:
        """The chain holds (nothing edited, removed, added or moved)."""
        return self.broken is None


def _lines(path: TrailFile) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line


def verify(paths: Sequence[TrailFile], keys: Mapping[str, Ed25519PublicKey] | None = None,
           anchors: Iterable[Head] = ()) -> Verification:
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
    chain: str | None = None
    offset: int | None = None  # the number of the record before the first one given
    first_prev = None
    records = checkpoints = signed = 0
    repairs: list[Break] = []
    parts: list[Part] = []

    def verdict(broken: Break | None = None, torn: Break | None = None) -> Verification:
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
        return Verification(records, len(paths), broken, first_prev == GENESIS, node, torn,
                       tuple(repairs), checkpoints, signed, last, truncated,
                       len(found), unplaced, tuple(parts), chain)

    def fail(path: TrailFile, line: int, reason: str) -> Verification:
        return verdict(Break(str(path), line, reason))

    for path in paths:
        top, before, last_head, last_at, chained = True, records, None, 0, True
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
            if top:
                chained = "chain" in record
            if prev is None:
                first_prev = record.get("prev")
                offset = 0 if first_prev == GENESIS else None
            elif record.get("prev") != prev:
                return fail(path, number, "the chain is broken here: a record before it was "
                                            "removed, added or moved")
            if kind == "start" and node is None:
                node, chain = record.get("node"), record.get("chain")
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
                last_head, last_at = head, records - before + 1
            if record["hash"] in wanted:
                found.add(record["hash"])
            prev, top = record["hash"], False
            records += 1
        parts.append(Part(records - before, last_head, last_at, chained))
    return verdict()


def _repaired(record: dict[str, Any]) -> str:
    return (f"repair: at restart, node {record.get('node')} cut a torn line of "
            f"{record.get('length')} bytes at offset {record.get('offset')} of "
            f"{record.get('file')} (sha256 {str(record.get('sha256'))[:16]}…)")
