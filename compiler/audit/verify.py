"""`gwc audit verify`: check each node's trail on its own, and tell tampering from a crash and
from a cut tail.

Files are grouped into trails by the node their start record names (a file without a readable
one stays with the files of its base path), each trail ordered as ``in_trail_order`` puts it, and
checked by ``gwc.runtime.audit.chain.verify``. Each trail gets one line on stdout, and each finding one line
on stderr. The exit code is the most severe across trails: 1 tampered (a record edited, removed,
added or moved; a checkpoint that does not hold), 4 truncated (an anchored head is missing from
the end), 3 crash (a torn final line, or a node's repair record of one), 0 intact. 2 is usage:
unreadable keys or anchors, or an anchor for a node no file belongs to.
"""
from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gwc.runtime.audit.chain import Head, Verification, typed_record, verify
from gwc.runtime.audit.writer import in_trail_order, trail_base
from gwc.runtime.bundle.envelope import jwk_kid
from gwc.runtime.bundle.keys import KeyFileError, load_public_key

EXIT_TAMPERED, EXIT_USAGE, EXIT_CRASH, EXIT_TRUNCATED = 1, 2, 3, 4
SEVERITY = (0, EXIT_CRASH, EXIT_TRUNCATED, EXIT_TAMPERED)  # least to most severe
TIMEOUT_S = 15.0
Echo = Callable[..., None]  # click.echo


class UsageError(Exception):
    """Keys or anchors that cannot be used; the message says which and why."""


def public_keys(pems: Iterable[str], jwks: Iterable[str]) -> dict[str, Ed25519PublicKey] | None:
    """The gateway keys given, by key id; None when none were (checkpoints go unchecked)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for pem in pems:
        try:
            key = load_public_key(pem)
        except KeyFileError as exc:
            raise UsageError(f"--key: {exc}") from None
        keys[jwk_kid(key)] = key
    for source in jwks:
        found = _jwks(source)
        if not found:
            raise UsageError(f"--jwks {source}: no Ed25519 key in it")
        keys.update((jwk_kid(key), key) for key in found)
    return keys or None


def _jwks(source: str) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWK Set in a file or at an http(s) URL (the node's own
    ``/.well-known/jwks.json``: fetch it over https, or keep a copy)."""
    try:
        if source.startswith(("https://", "http://")):
            with urllib.request.urlopen(source, timeout=TIMEOUT_S) as response:
                data = response.read()
        else:
            data = Path(source).read_bytes()
        return [Ed25519PublicKey.from_public_bytes(
                    base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4)))
                for jwk in json.loads(data)["keys"]
                if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"--jwks {source}: not a readable JWK Set ({exc})") from None


def anchors(paths: Iterable[str], keys: dict[str, Ed25519PublicKey] | None) -> list[Head]:
    """Saved head statements; with keys, each must be signed by one of them."""
    found = []
    for path in paths:
        try:
            head = Head.of(json.loads(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--anchor {path}: {exc}") from None
        key = keys.get(head.keyid) if keys is not None else None
        if keys is not None and (key is None or not head.signed_by(key)):
            raise UsageError(f"--anchor {path}: not signed by any of the keys given "
                             f"(keyid {head.keyid})")
        found.append(head)
    return found


def _node(path: Path) -> str | None:
    """The node the file's start record names, if its first line is one."""
    with path.open("rb") as fh:
        record = typed_record(fh.readline(), "start")
    return record["node"] if record is not None and isinstance(record.get("node"), str) else None


@dataclass(frozen=True)
class Trail:
    label: str  # the node, or the base path of files that name none
    node: str | None
    files: list[Path]


def trails(files: Iterable[Path]) -> list[Trail]:
    """Files grouped by the node that wrote them, each group in trail order. A file that names
    no node (emptied, damaged) goes with the other files of its base path, so verify sees it
    where it stands."""
    named = {path: _node(path) for path in files}
    by_base = {trail_base(path): node for path, node in named.items() if node is not None}
    groups: dict[tuple[str, str], list[Path]] = {}
    for path, node in named.items():
        node = node or by_base.get(trail_base(path))
        key = ("node", node) if node is not None else ("file", str(trail_base(path)))
        groups.setdefault(key, []).append(path)
    return [Trail(label, label if kind == "node" else None, in_trail_order(group))
            for (kind, label), group in sorted(groups.items())]


def check(files: list[Path], keys: dict[str, Ed25519PublicKey] | None, heads: list[Head],
          echo: Echo) -> int:
    """Verify every trail and report it; the exit code."""
    found = trails(files)
    nodes = {trail.node for trail in found}
    for head in heads:
        if head.node not in nodes:
            raise UsageError(f"--anchor for node {head.node}: none of the files given is its")
    worst = 0
    for trail in found:
        verdict = verify(trail.files, keys, [head for head in heads if head.node == trail.node])
        code = report(trail.label, verdict, keys is not None, echo)
        worst = max(worst, code, key=SEVERITY.index)
    return worst


def report(label: str, verdict: Verification, keyed: bool, echo: Echo) -> int:
    """One trail's findings (stderr) and its line (stdout); its exit code."""
    if verdict.broken is not None:
        echo(f"gwc: tampered: {verdict.broken} ({verdict.records} record(s) before it hold)",
             err=True)
        echo(f"tampered: {label}: chain broken after {verdict.records} record(s)")
        return EXIT_TAMPERED
    code = 0
    for repair in verdict.repairs:
        echo(f"gwc: crash: {repair}", err=True)
        code = EXIT_CRASH
    if verdict.torn is not None:
        echo(f"gwc: crash: {verdict.torn}; a restarted node cuts it and records a repair",
             err=True)
        code = EXIT_CRASH
    if verdict.truncated is not None:
        echo(f"gwc: truncated: {label}: {verdict.truncated}", err=True)
        code = EXIT_TRUNCATED
    where = ("from the start of the trail" if verdict.from_genesis
             else "a later segment: its first record links to one not given")
    chain = "chain intact before the torn line" if verdict.torn is not None else "chain intact"
    signed = ("no checkpoints" if not verdict.checkpoints
              else f"{verdict.checkpoints} checkpoint(s) signed by the gateway key" if keyed
              else f"{verdict.checkpoints} checkpoint(s) not checked (no --key or --jwks)")
    anchored = (f"; {verdict.anchored} anchored head(s) found" if verdict.anchored else "") + \
        (f"; {verdict.unplaced} anchor(s) before the given files, not checked"
         if verdict.unplaced else "")
    status = {0: "ok", EXIT_CRASH: "crash", EXIT_TRUNCATED: "truncated"}[code]
    echo(f"{status}: {label}: {verdict.records} records in {verdict.files} file(s), {chain}, "
         f"{where}; {signed}{anchored}")
    return code
