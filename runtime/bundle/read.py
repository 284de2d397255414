"""Reading a bundle: verify the envelope, check the format version, validate the payload.

This is the only way bytes become a :class:`Bundle`; a refused bundle raises :class:`BundleError`
with a reason fit for a log line or a CLI message.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from gwc.runtime.bundle import layout
from gwc.runtime.bundle.envelope import (
    BUNDLE_LINES_TYPE,
    BUNDLE_PAYLOAD_TYPE,
    VerificationError,
    key_id,
    open_envelope,
    verify_envelope,
)
from gwc.runtime.bundle.format import (
    KNOWN_FORMATS,
    BundlePayload,
    Condition,
    Rule,
    Server,
    Subject,
    Tool,
)
from gwc.runtime.bundle.keys import KeyFileError, load_public_key


class BundleError(Exception):
    """The bundle was refused; the message says why."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle: its payload plus where it came from."""

    payload: BundlePayload
    digest: str  # "sha256:<hex>" of the envelope bytes, the bundle's content address
    keyid: str | None  # the trusted key that signed it; None when read unverified for inspection

    @property
    def serial(self) -> int:
        return self.payload.serial


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def trusted_keys(paths: list[str] | tuple[str, ...]) -> dict[str, Ed25519PublicKey]:
    """Load trusted public keys (several, for rotation) keyed by key id. A folder stands for
    every ``*.pub`` file in it, as a mounted Kubernetes ConfigMap of keys is: a rotation then
    adds a file, without a new list of paths."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        for file in _key_files(Path(path)):
            try:
                key = load_public_key(file)
            except KeyFileError as exc:
                raise BundleError(str(exc)) from None
            keys[key_id(key)] = key
    return keys


def _key_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    found = sorted(file for file in path.iterdir() if file.suffix == ".pub" and file.is_file())
    if not found:
        raise BundleError(f"{path} is a folder with no *.pub key file in it")
    return found


def parse_payload(payload: bytes, payload_type: str = BUNDLE_PAYLOAD_TYPE) -> BundlePayload:
    """Validate a payload in the encoding ``payload_type`` names (``gwc.runtime.bundle.layout``):
    in steps (see :func:`validate_in_steps`), else, for the verdict and the message, as one
    JSON document in one go. On failure the format version is checked first, so an old runtime
    says it does not know a newer format rather than list field errors."""
    if payload_type == BUNDLE_LINES_TYPE:
        return _parse_lines(payload)
    stepped = validate_in_steps(payload)
    if stepped is not None:
        return stepped
    try:
        return BundlePayload.model_validate_json(payload)
    except ValidationError as exc:
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            raise BundleError("malformed payload: not JSON") from None
        _check_format(doc.get("format") if isinstance(doc, dict) else None)
        raise _refusal(exc) from None


def _check_format(fmt: object) -> None:
    if fmt not in KNOWN_FORMATS:
        raise BundleError(f"unknown bundle format {fmt!r} (this gwc reads {', '.join(KNOWN_FORMATS)})")


def _refusal(exc: ValidationError) -> BundleError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return BundleError(f"malformed payload: {where}: {first['msg']} ({exc.error_count()} problem(s))")


def _parse_lines(payload: bytes) -> BundlePayload:
    """A lines payload: its layout, then its format, then in steps, else whole (as the one JSON
    document it encodes, each line taken as it is, so verdicts and messages are those of that
    document's)."""
    try:
        lines = layout.split(payload)
    except layout.LayoutError as exc:
        raise BundleError(f"malformed payload: {exc}") from None
    _check_format(lines.header.get("format"))
    stepped = validate_lines_in_steps(lines)
    if stepped is not None:
        return stepped
    for where, line in (*zip((f"servers.{n}" for n in lines.names), lines.servers, strict=True),
                        *((f"rules.{i}", line) for i, line in enumerate(lines.rules))):
        try:  # each line one JSON value, so that the document is the one the lines mean
            orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                json.loads(line)  # what orjson refuses and JSON allows: integers beyond 64 bits
            except (UnicodeDecodeError, ValueError):
                raise BundleError(f"malformed payload: {where}: not JSON") from None
    try:
        return BundlePayload.model_validate_json(layout.as_document_json(lines))
    except ValidationError as exc:
        raise _refusal(exc) from None


@dataclass(frozen=True, slots=True)
class _Pieces:
    """The servers and rules of the payload validated last, and parts of them (a server's tools,
    each tool, a rule's subject and conditions), keyed by the exact bytes of their JSON (a line
    of a lines payload, or orjson's serialization: equal bytes mean equal JSON values, key order
    included). Forgotten when that payload is freed (a refused bundle, say), so they never
    outlive it."""

    servers: dict[bytes, Server] = field(default_factory=dict)
    rules: dict[bytes, Rule] = field(default_factory=dict)
    # model (or "tools": a server with those tools) -> JSON -> instance: no tuple keys,
    # which would be tens of thousands more objects for the collector to scan before a bundle
    # is frozen
    parts: dict[object, dict[bytes, Any]] = field(default_factory=dict)
    owner: weakref.ref[BundlePayload] | None = None


_NO_PIECES = _Pieces()
_last_pieces = _NO_PIECES


def _remember(pieces: _Pieces, payload: BundlePayload) -> None:
    global _last_pieces
    _last_pieces = dataclasses.replace(pieces, owner=weakref.ref(payload, _forget_pieces))


def _part(kind: object, key: bytes, last: _Pieces, pieces: _Pieces) -> Any:
    found = pieces.parts.setdefault(kind, {}).get(key)
    return last.parts.get(kind, {}).get(key) if found is None else found


def _model_part(model: type[Tool] | type[Subject] | type[Condition], raw: Any, last: _Pieces,
                pieces: _Pieces) -> Any:
    """``model`` validated from ``raw`` (parsed JSON), or the instance validated before from the
    same JSON (in this payload or the last one). Only objects: anything else is left for the
    enclosing model to refuse."""
    if not isinstance(raw, dict):
        return raw
    key = orjson.dumps(raw)
    found = _part(model, key, last, pieces)
    if found is None:
        found = model.model_validate(raw)
    pieces.parts[model][key] = found
    return found


def _server(raw: Any, last: _Pieces, pieces: _Pieces) -> Server:
    """A server validated from its parsed JSON, its tools reused when their JSON is one validated
    before (in this payload or the last one), all of them at once or each: a change to a server
    seldom changes its tools, and most tools of a bundle repeat (12,000 distinct among 40,000
    in bench's)."""
    tools = raw.get("tools") if isinstance(raw, dict) else None
    if not isinstance(tools, dict):
        return Server.model_validate(raw)
    key = orjson.dumps(tools)
    known: Server | None = _part("tools", key, last, pieces)
    if known is not None:
        raw["tools"] = known.tools
    else:
        for name, value in tools.items():  # in place: no key is added or removed
            tools[name] = _model_part(Tool, value, last, pieces)
    server = Server.model_validate(raw)
    if known is not None:  # the same tools name the same rules: 20 tools' ranges not compared again
        server.share_rule_index_range(known)
    pieces.parts["tools"][key] = server  # this payload's own: pieces never outlive it
    return server


def _rule(line: bytes, raw: Any, last: _Pieces, pieces: _Pieces) -> Rule:
    """A rule, validated from ``raw`` (its parsed JSON, or None to parse ``line``) unless its
    JSON is one validated last; its subject and conditions reused as a server's tools are."""
    rule = last.rules.get(line)
    if rule is None:
        raw = orjson.loads(line) if raw is None else raw
        if isinstance(raw, dict):
            if "subject" in raw:
                raw["subject"] = _model_part(Subject, raw["subject"], last, pieces)
            if isinstance(raw.get("conditions"), list):
                raw["conditions"] = [_model_part(Condition, c, last, pieces)
                                     for c in raw["conditions"]]
        rule = Rule.model_validate(raw)
    pieces.rules[line] = rule
    return rule


def _forget_pieces(owner: weakref.ref[BundlePayload]) -> None:
    global _last_pieces
    if _last_pieces.owner is owner:
        _last_pieces = _NO_PIECES


def validate_in_steps(payload: bytes) -> BundlePayload | None:
    """The payload validated against the same models one server and one rule at a time, or None
    when anything is off (the caller then validates it whole, which decides and explains).

    - One pydantic-core call never releases the GIL: validating a 2,000-server payload in one
      ``model_validate_json`` call (0.3 s) stalls a node's event loop for all of it, even from a
      worker thread. Between two steps here the interpreter can switch threads, so requests go
      on being served while a new bundle loads; only the JSON parse (orjson, about 0.1 s for
      8 MB) holds the GIL in one piece. The values come from JSON, so python-mode validation
      sees the types JSON-mode validation would (tests/unit/bundle/test_bundle_speed_paths.py compares).
    - A server or rule whose JSON is byte-for-byte one of the payload validated last is not
      validated again: validation is a pure function of that JSON, and the models are frozen,
      so the earlier instance is the result. A bundle change touches a few servers; the others
      cost a serialization each (about 15 us) instead of a validation (about 100 us). Keeping
      the keys costs memory: about the payload's size (8 MB for 2,000 servers).
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("servers"), dict) \
            or not isinstance(doc.get("rules", []), list):
        return None
    servers, rules = doc["servers"], doc.get("rules", [])
    last, pieces = _last_pieces, _Pieces()
    try:
        # In place, so each raw JSON value is freed as soon as it is validated, not all at once.
        for name in servers:
            key = orjson.dumps(servers[name])
            server = last.servers.get(key)
            if server is None:
                server = _server(servers[name], last, pieces)
            servers[name] = pieces.servers[key] = server
        for i, raw in enumerate(rules):
            rules[i] = _rule(orjson.dumps(raw), raw, last, pieces)
        # Validated instances are taken as they are: this step checks the rest and the indexes.
        payload_model = BundlePayload.model_validate(doc)
    except ValidationError:
        return None
    _remember(pieces, payload_model)
    return payload_model


def validate_lines_in_steps(lines: layout.Lines) -> BundlePayload | None:
    """:func:`validate_in_steps` for a lines payload, or None when anything is off.

    No big parse at all: a server or rule whose line is byte-for-byte one validated last is
    taken as it was, found by its bytes; the others are parsed (orjson, a few microseconds
    each) and validated one at a time, their tools reused as in :func:`validate_in_steps`.
    Between two pieces the interpreter can switch threads."""
    last, pieces = _last_pieces, _Pieces()
    servers: dict[str, Server] = {}
    try:
        for name, line in zip(lines.names, lines.servers, strict=True):
            server = last.servers.get(line)
            if server is None:
                server = _server(orjson.loads(line), last, pieces)
            servers[name] = pieces.servers[line] = server
        rules = tuple(_rule(line, None, last, pieces) for line in lines.rules)
        payload_model = BundlePayload.model_validate(
            {**lines.header, "servers": servers, "rules": rules})
    except (ValidationError, orjson.JSONDecodeError):
        return None
    _remember(pieces, payload_model)
    return payload_model


def load_bundle(data: bytes, trusted: dict[str, Ed25519PublicKey],
                digest: str | None = None) -> Bundle:
    """Verify ``data`` against ``trusted`` keys and parse it. Raises :class:`BundleError`.
    ``digest``: ``digest_of(data)`` when the caller has it already."""
    try:
        env = verify_envelope(data, trusted)
    except VerificationError as exc:
        raise BundleError(str(exc)) from None
    return Bundle(payload=parse_payload(env.payload, env.payload_type),
                  digest=digest or digest_of(data), keyid=env.keyid)


def read_unverified(data: bytes) -> Bundle:
    """Parse a bundle without checking its signature: for ``gwc inspect``/``diff`` only, never serving."""
    try:
        payload_type, payload, _ = open_envelope(data)
    except VerificationError as exc:
        raise BundleError(str(exc)) from None
    return Bundle(payload=parse_payload(payload, payload_type), digest=digest_of(data), keyid=None)


def read_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror or exc}") from None
