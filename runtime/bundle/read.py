"""Reading a bundle: verify the envelope, check the format version, validate the payload.

This is the only way bytes become a :class:`Bundle`; a refused bundle raises :class:`BundleError`
with a reason fit for a log line or a CLI message.
"""
from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from gwc.runtime.bundle.envelope import VerificationError, key_id, open_envelope, verify_envelope
from gwc.runtime.bundle.format import KNOWN_FORMATS, BundlePayload, Rule, Server
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
    """Load trusted public keys (several, for rotation) keyed by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            key = load_public_key(path)
        except KeyFileError as exc:
            raise BundleError(str(exc)) from None
        keys[key_id(key)] = key
    return keys


def parse_payload(payload: bytes) -> BundlePayload:
    """Validate a payload: in steps (see :func:`validate_in_steps`), else, for the verdict and the
    message, in one go from its bytes. On failure the format version is checked first, so an old
    runtime says it does not know a newer format rather than list field errors."""
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
        fmt = doc.get("format") if isinstance(doc, dict) else None
        if fmt not in KNOWN_FORMATS:
            raise BundleError(f"unknown bundle format {fmt!r} "
                              f"(this gwc reads {', '.join(KNOWN_FORMATS)})") from None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"malformed payload: {where}: {first['msg']} "
                          f"({exc.error_count()} problem(s))") from None


@dataclass(frozen=True, slots=True)
class _Pieces:
    """The servers and rules of the payload validated last, keyed by the exact bytes of their
    JSON (orjson's, so equal bytes mean equal JSON values, key order included). Forgotten when
    that payload is freed (a refused bundle, say), so they never outlive it."""

    servers: dict[bytes, Server]
    rules: dict[bytes, Rule]
    owner: weakref.ref[BundlePayload] | None = None


_NO_PIECES = _Pieces({}, {})
_last_pieces = _NO_PIECES


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
    global _last_pieces
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("servers"), dict) \
            or not isinstance(doc.get("rules", []), list):
        return None
    servers, rules = doc["servers"], doc.get("rules", [])
    last, servers_by_json, rules_by_json = _last_pieces, {}, {}
    try:
        # In place, so each raw JSON value is freed as soon as it is validated, not all at once.
        for name in servers:
            key = orjson.dumps(servers[name])
            server = last.servers.get(key)
            if server is None:
                server = Server.model_validate(servers[name])
            servers[name] = servers_by_json[key] = server
        for i, raw in enumerate(rules):
            key = orjson.dumps(raw)
            rule = last.rules.get(key)
            if rule is None:
                rule = Rule.model_validate(raw)
            rules[i] = rules_by_json[key] = rule
        # Validated instances are taken as they are: this step checks the rest and the indexes.
        payload_model = BundlePayload.model_validate(doc)
    except ValidationError:
        return None
    _last_pieces = _Pieces(servers_by_json, rules_by_json,
                           weakref.ref(payload_model, _forget_pieces))
    return payload_model


def load_bundle(data: bytes, trusted: dict[str, Ed25519PublicKey]) -> Bundle:
    """Verify ``data`` against ``trusted`` keys and parse it. Raises :class:`BundleError`."""
    try:
        env = verify_envelope(data, trusted)
    except VerificationError as exc:
        raise BundleError(str(exc)) from None
    return Bundle(payload=parse_payload(env.payload), digest=digest_of(data), keyid=env.keyid)


def read_unverified(data: bytes) -> Bundle:
    """Parse a bundle without checking its signature: for ``gwc inspect``/``diff`` only, never serving."""
    try:
        _, payload, _ = open_envelope(data)
    except VerificationError as exc:
        raise BundleError(str(exc)) from None
    return Bundle(payload=parse_payload(payload), digest=digest_of(data), keyid=None)


def read_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror or exc}") from None
