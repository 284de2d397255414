"""`gwc audit verify`: check each node's trail on its own, and tell tampering from a crash and
from a cut tail.

Files are grouped into trails by the node their start record names (a file without a readable
one stays with the files of its base path), each trail ordered as ``in_trail_order`` puts it, and
checked by ``gwc.runtime.audit.chain.verify``. Each trail gets one line on stdout, and each finding one line
on stderr. The exit code is the most severe across trails: 1 tampered (a record edited, removed,
added or moved; a checkpoint that does not hold), 4 truncated (an anchored head is missing from
the end), 3 crash (a torn final line, or a node's repair record of one), 0 intact. 2 is usage:
unreadable keys or anchors, or an anchor for a node no file belongs to.

Shipped files read back from a store (``s3://bucket/prefix``, ``gwc.compiler.audit.store``) are
checked per (node, chain) the same way, object by object, plus what only a store can show: a gap
in the record numbers between two objects (records removed: tampered), an object holding another
count of records than its key says, a head object that is not its file's last checkpoint, and a
file without its head object or a head object without its file.
"""
from __future__ import annotations

import base64
import itertools
import json
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gwc.runtime.audit.chain import Head, Verification, typed_record, verify
from gwc.runtime.audit.writer import in_trail_order, trail_base
from gwc.runtime.bundle.envelope import jwk_kid
from gwc.runtime.bundle.keys import KeyFileError, load_public_key

if TYPE_CHECKING:
    from gwc.compiler.audit.store import Chain, Shipped, StoreObject

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
        if keys is not None and not _signed(head, keys):
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


def worse(a: int, b: int) -> int:
    return max(a, b, key=SEVERITY.index)


def check(files: list[Path], keys: dict[str, Ed25519PublicKey] | None, heads: list[Head],
          echo: Echo, stored: Sequence[Chain] = ()) -> int:
    """Verify every trail (files, and chains read from a store) and report it; the exit code.
    An anchor of a node with several chains in a store applies to the chain that holds its
    signed head (by its hash), or to the newest one when none does (the chain a node starts when
    it loses its disk replaces the old one)."""
    found = trails(files)
    nodes = {trail.node for trail in found} | {chain.node for chain in stored}
    for head in heads:
        if head.node not in nodes:
            raise UsageError(f"--anchor for node {head.node}: none of the files given is its")
    worst = 0
    for trail in found:
        verdict = verify(trail.files, keys, [head for head in heads if head.node == trail.node])
        worst = worse(worst, report(trail.label, verdict, keys is not None, echo))
    newest: dict[str, Chain] = {}
    for chain in stored:
        if chain.node not in newest or chain.newest > newest[chain.node].newest:
            newest[chain.node] = chain
    placed: dict[int, list[Head]] = {id(chain): [] for chain in stored}
    for head in heads:
        mine = [chain for chain in stored if chain.node == head.node]
        if not mine:
            continue
        holder = mine[0] if len(mine) == 1 else \
            next((chain for chain in mine if _holds(chain, head)), newest[head.node])
        placed[id(holder)].append(head)
    for chain in stored:
        worst = worse(worst, check_chain(chain, keys, placed[id(chain)], echo))
    return worst


def _holds(chain: Chain, head: Head) -> bool:
    """Whether the chain's objects hold the anchored head: its record, by its hash. A node with
    several chains in a store has each anchor matched to the chain that holds it, not by date;
    one that none holds goes to the newest chain, whose check then reports it."""
    for segment in _segments(chain.files):
        if segment[0].object.first <= head.seq <= segment[-1].object.last:
            objects = [shipped.trail for shipped in segment if shipped.trail is not None]
            try:
                if verify(objects, None, [head]).anchored:
                    return True
            except OSError:
                return False  # unreadable: the chain's own check names it
    return False


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
    signed = _signed_text(verdict.checkpoints, keyed)
    anchored = (f"; {verdict.anchored} anchored head(s) found" if verdict.anchored else "") + \
        (f"; {verdict.unplaced} anchor(s) before the given files, not checked"
         if verdict.unplaced else "")
    status = {0: "ok", EXIT_CRASH: "crash", EXIT_TRUNCATED: "truncated"}[code]
    echo(f"{status}: {label}: {verdict.records} records in {verdict.files} file(s), {chain}, "
         f"{where}; {signed}{anchored}")
    return code


# -- shipped files, read back from a store -------------------------------------------------------

@dataclass
class _Findings:
    """What a chain's check found: (exit code, message) in the order found."""

    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, code: int, message: str) -> None:
        self.items.append((code, message))

    def note(self, message: str) -> None:
        """Something to say that is no finding (exit 0)."""
        self.items.append((0, message))

    @property
    def worst(self) -> int:
        code = 0
        for found, _ in self.items:
            code = worse(code, found)
        return code

    def echo(self, echo: Echo) -> None:
        for code, message in self.items:
            echo(f"gwc: {_KIND.get(code, 'note')}: {message}", err=True)


_KIND = {EXIT_TAMPERED: "tampered", EXIT_CRASH: "crash", EXIT_TRUNCATED: "truncated"}
HEAD_MAX_BYTES = 4096  # a head object is a few hundred bytes; a larger one is not read


def _stored_head(obj: StoreObject) -> Head | str:
    """The head a head object holds, or why it holds none (too large to be one, not JSON, not a
    signed head): never an exception for what the object holds."""
    if obj.size > HEAD_MAX_BYTES:
        return (f"{obj.size} bytes: not a head object (one is a few hundred bytes, at most "
                f"{HEAD_MAX_BYTES}); not read")
    data = obj.read_bytes()
    if len(data) > HEAD_MAX_BYTES:
        return f"{len(data)} bytes read: not a head object (at most {HEAD_MAX_BYTES}); not parsed"
    try:
        return Head.of(orjson.loads(data))
    except orjson.JSONDecodeError as exc:
        return f"not a JSON head ({exc})"
    except ValueError as exc:
        return f"not a signed audit head ({exc})"


def _segments(files: list[Shipped]) -> list[list[Shipped]]:
    """The shipped files that have their trail object, cut where record numbers are missing
    between two of them (an overlap stays within a segment: the chain check names it)."""
    out: list[list[Shipped]] = []
    for shipped in files:
        if shipped.trail is None:
            continue
        if out and shipped.object.first <= out[-1][-1].object.last + 1:
            out[-1].append(shipped)
        else:
            out.append([shipped])
    return out


def check_chain(chain: Chain, keys: dict[str, Ed25519PublicKey] | None, anchors: list[Head],
                echo: Echo) -> int:
    """Verify one chain read from a store, and report it (findings on stderr, one line on stdout);
    its exit code. Each run of objects without a gap is checked by ``chain.verify`` as one
    trail, so the records after a gap are checked too."""
    findings = _Findings()
    for message in chain.findings:  # the listing's: other versions of keys, aliases of keys
        findings.add(EXIT_TAMPERED, message)
    for message in chain.notes:  # delete markers
        findings.note(message)
    segments = _segments(chain.files)
    if not segments and not any(shipped.head is not None for shipped in chain.files):
        findings.echo(echo)
        echo(f"tampered: {chain.label}: 0 records in 0 object(s), "
             f"{len(findings.items)} finding(s) in its keys")
        return EXIT_TAMPERED
    if not segments:  # head objects alone: every file they sign is gone
        findings.echo(echo)
        if findings.worst:
            echo(f"tampered: {chain.label}: 0 records in 0 object(s), {len(chain.files)} head "
                 "object(s) without their files")
            return EXIT_TAMPERED
        signs = max(shipped.object.last for shipped in chain.files)
        echo(f"gwc: truncated: {chain.label}: {len(chain.files)} head object(s), up to record "
             f"{signs}, and none of their files", err=True)
        echo(f"truncated: {chain.label}: 0 records in 0 object(s), {len(chain.files)} head "
             "object(s) without their files")
        return EXIT_TRUNCATED
    first, last = segments[0][0].object, segments[-1][-1].object
    for before, after in itertools.pairwise(segments):
        a, b = before[-1], after[0]
        findings.add(EXIT_TAMPERED, f"{chain.label}: records {a.object.last + 1}.."
                     f"{b.object.first - 1} are missing: no object holds them, between "
                     f"{a.trail} and {b.trail}")
    for this, following in itertools.pairwise(chain.files):
        if this.trail is not None and following.trail is not None and \
                following.object.first <= this.object.last:
            findings.add(EXIT_TAMPERED, f"{following.trail}: its records {following.object.first}.."
                         f"{min(this.object.last, following.object.last)} are also claimed by "
                         f"{this.trail}")
    leading = 0
    for shipped in chain.files:
        if shipped.trail is not None or shipped.head is None:
            continue
        missing = shipped.object.trail_key(chain.store)
        if shipped.object.last < first.first:
            leading += 1  # its file expired first, or was never shipped: the trail starts later
        elif shipped.object.first > last.last:
            held = _stored_head(shipped.head)
            if isinstance(held, str) or (keys is not None and not _signed(held, keys)):
                findings.add(EXIT_TAMPERED, f"{shipped.head}: not a head signed by the keys given"
                             if not isinstance(held, str) else f"{shipped.head}: {held}")
            else:
                findings.add(EXIT_TRUNCATED, f"{shipped.head} signs record {held.seq}, but the "
                             f"chain's objects end at record {last.last}: its file "
                             f"s3://{chain.store.bucket}/{missing} is missing")
        else:
            findings.add(EXIT_TAMPERED, f"{shipped.head} has no trail object: "
                         f"s3://{chain.store.bucket}/{missing} is missing")
    records = checkpoints = matched = unplaced = anchored = 0
    genesis = broken = False
    for index, segment in enumerate(segments):
        low, high = segment[0].object.first, segment[-1].object.last
        mine = [anchor for anchor in anchors
                if low <= anchor.seq <= high or (index == len(segments) - 1 and anchor.seq > high)
                or (index == 0 and anchor.seq < low)]
        verdict = verify([shipped.trail for shipped in segment if shipped.trail is not None],
                         keys, mine)
        records, checkpoints = records + verdict.records, checkpoints + verdict.checkpoints
        unplaced, anchored = unplaced + verdict.unplaced, anchored + verdict.anchored
        genesis = genesis or (index == 0 and verdict.from_genesis)
        broken = broken or verdict.broken is not None
        _verdict_findings(chain.label, verdict, findings)
        matched += _object_findings(chain, segment, verdict, findings)
    for anchor in anchors:
        if not any(s[0].object.first <= anchor.seq <= s[-1].object.last for s in segments) and \
                first.first <= anchor.seq <= last.last:
            findings.add(EXIT_TAMPERED, f"{chain.label}: the anchored head (record {anchor.seq} of "
                         f"{anchor.time}) is among the missing records")
    if keys is not None and not checkpoints and not broken:
        findings.add(EXIT_TAMPERED, f"{chain.label}: no checkpoint signed by the keys given in "
                     "its objects: a node ships a file only once it ends with one, so these "
                     "were put there")
    findings.echo(echo)
    code = findings.worst
    status = "ok" if code == 0 else _KIND[code]
    where = ("from the start of the trail" if genesis else f"from record {first.first} (the "
             "objects before it are not in the store: expired, or never shipped)")
    gaps = len(segments) - 1
    state = ("chain broken" if broken else "chain intact") + (
        f" within {gaps + 1} runs, {gaps} gap(s)" if gaps else "")
    signed = _signed_text(checkpoints, keys is not None)
    extra = (f"; {matched} head object(s) match their files" if matched else "") + \
        (f"; {anchored} anchored head(s) found" if anchored else "") + \
        (f"; {unplaced} anchor(s) before the objects, not checked" if unplaced else "") + \
        (f"; {leading} head object(s) of files no longer in the store" if leading else "")
    objects = sum(len(segment) for segment in segments)
    echo(f"{status}: {chain.label}: {records} records in {objects} object(s), {state}, {where}; "
         f"{signed}{extra}")
    return code


def _signed_text(checkpoints: int, keyed: bool) -> str:
    """What a report says of a trail's checkpoints."""
    return ("no checkpoints" if not checkpoints
            else f"{checkpoints} checkpoint(s) signed by the gateway key" if keyed
            else f"{checkpoints} checkpoint(s) not checked (no --key or --jwks)")


def _signed(head: Head, keys: dict[str, Ed25519PublicKey]) -> bool:
    key = keys.get(head.keyid)
    return key is not None and head.signed_by(key)


def _verdict_findings(label: str, verdict: Verification, findings: _Findings) -> None:
    """A run's findings from ``chain.verify``, as for files."""
    if verdict.broken is not None:
        findings.add(EXIT_TAMPERED, f"{verdict.broken} ({verdict.records} record(s) before it hold)")
    for repair in verdict.repairs:
        findings.add(EXIT_CRASH, str(repair))
    if verdict.torn is not None:
        findings.add(EXIT_CRASH, f"{verdict.torn}; a closed, shipped file should never end torn")
    if verdict.truncated is not None:
        findings.add(EXIT_TRUNCATED, f"{label}: {verdict.truncated}")


def _object_findings(chain: Chain, segment: list[Shipped], verdict: Verification,
                     findings: _Findings) -> int:
    """What the keys and head objects of a run say against what its files hold; how many head
    objects match their file."""
    # The shipper names a file's node by its last checkpoint (a node renamed across a crash
    # restart continues a file its start record names by the old name): the same rule here.
    first_part = verdict.parts[0] if verdict.parts else None
    if first_part is not None and first_part.checkpoint is None and verdict.node is not None \
            and verdict.node != chain.node:
        findings.add(EXIT_TAMPERED, f"{segment[0].trail}: its key names node {chain.node}, its "
                     f"start record node {verdict.node}")
    for shipped, part in zip(segment, verdict.parts, strict=False):
        if part.checkpoint is not None and part.checkpoint.node != chain.node:
            findings.add(EXIT_TAMPERED, f"{shipped.trail}: its key names node {chain.node}, its "
                         f"last checkpoint node {part.checkpoint.node}")
    if isinstance(verdict.chain, str) and verdict.chain != chain.chain:
        findings.add(EXIT_TAMPERED, f"{segment[0].trail}: its key names chain {chain.chain}, its "
                     f"start record chain {verdict.chain}")
    if verdict.last_seq is not None:
        numbered = verdict.last_seq - verdict.records + 1
        if numbered != segment[0].object.first:
            findings.add(EXIT_TAMPERED, f"{segment[0].trail}: its key numbers its first record "
                         f"{segment[0].object.first}, the chain's checkpoints {numbered}")
    matched = 0
    for shipped, part in zip(segment, verdict.parts, strict=False):
        obj = shipped.object
        expected = obj.last - obj.first + 1
        if part.records != expected:
            findings.add(EXIT_TAMPERED, f"{shipped.trail}: its key says records {obj.first}.."
                         f"{obj.last} ({expected}), it holds {part.records}")
        after = part.records - part.checkpoint_at  # records after its last checkpoint
        unsigned = (f"{shipped.trail}: {after} record(s) after its last checkpoint, written "
                    "before files were closed with a checkpoint: not signed")
        if shipped.head is None:
            if part.checkpoint is None:
                findings.add(EXIT_TAMPERED, f"{shipped.trail} has no head object (.head.json) and "
                             "holds no checkpoint: a node never ships such a file, so it was "
                             "put there")
            elif after and part.chained:
                findings.add(EXIT_TAMPERED, f"{shipped.trail} has no head object (.head.json) and "
                             f"{after} record(s) after its last checkpoint: a shipped file ends "
                             "with one, so they were added")
            else:
                findings.add(EXIT_CRASH, f"{shipped.trail} has no head object (.head.json): its "
                             "shipment stopped between the two uploads, or the head was removed "
                             "(the file's own checkpoints were checked)")
                if after:
                    findings.note(unsigned)
            continue
        held = _stored_head(shipped.head)
        if isinstance(held, str):
            findings.add(EXIT_TAMPERED, f"{shipped.head}: {held}")
        elif part.checkpoint is None:
            findings.add(EXIT_TAMPERED, f"{shipped.head}: its file holds no checkpoint to match")
        elif held != part.checkpoint:
            findings.add(EXIT_TAMPERED, f"{shipped.head} is not the last checkpoint of its file "
                         f"(which signs record {part.checkpoint.seq})")
        elif after and part.chained:
            findings.add(EXIT_TAMPERED, f"{shipped.trail}: {after} "
                         "record(s) after the checkpoint its head object holds: a shipped file "
                         "ends with it, so they were added")
        else:
            if after:  # its start record names no chain: written before closing checkpoints
                findings.note(unsigned)
            matched += 1
    return matched
