"""Reading a bundle: verify the envelope, check the format version, validate the payload.

This is the only way bytes become a :class:`Bundle`; a refused bundle raises :class:`BundleError`
with a reason fit for a log line or a CLI message.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from runtime.bundle_format import KNOWN_FORMATS, BundlePayload
from runtime.dsse import VerificationError, key_id, open_envelope, verify_envelope
from runtime.keys import KeyFileError, load_public_key


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
    """Validate a payload straight from its bytes (pydantic's JSON parser: several times faster
    than json.loads + model_validate on a large bundle). On failure the format version is checked
    first, so an old runtime says it does not know a newer format rather than list field errors."""
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
