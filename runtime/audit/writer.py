"""Writing the audit trail without blocking the event loop, and without losing a returned call.

A record is encoded once, by its caller, when it is submitted (a record that cannot be encoded
fails there, alone); what one turn of the event loop submits is handed to the writer thread
together, at the end of the turn. One writer thread chains the encoded records (``audit.link``:
the real ``prev`` goes where the caller's encoding has a placeholder), writes them in small
batches to a file opened with ``O_DSYNC`` (one system call returns once a batch is on stable
storage; an ``fsync`` after the write where the OS has no ``O_DSYNC``), and only then resolves each
record's future: a caller that awaits it before answering its client has a record on disk for
every answer it gave. The file rotates by size into ``PATH.000001``, ``PATH.000002``...; each
new file begins with a start record chained to the last record of the file before, and a
restarted node continues the chain of the file it finds, cutting a final line a crash left torn
and recording that it did (a ``repair`` record).

With the gateway's signing key, the writer also signs its chain's head in a ``checkpoint`` record
(``audit.Head``) when a file begins, every ``checkpoint_s`` seconds or ``checkpoint_records``
records while records come, when a file is closed (rotation, shutdown) and at shutdown; the latest
is :attr:`AuditWriter.head`. So a closed file ends with a checkpoint: it is evidence on its own,
and its last line gives the number of its last record.

Every start record names its chain (``chain``: 16 random hex digits chosen by the chain's first
start record, carried by every later one: rotations and restarts), so two chains of one node name
(a node whose disk was lost starts over at record 1) never share a name in an object store. A
trail written before chains had ids gets one at its first start after the upgrade; its older
files, whose start records have no ``chain``, belong to that chain.

With ``close_rotates`` (a node that ships its closed files to an object store), shutdown closes
the current file as rotation does, so that it can be shipped; a restarted node begins a new file
chained to it. ``on_closed`` is called, on the writer thread, with each file it closes.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gwc.runtime.audit.chain import GENESIS, Head, chain_id, encode, link, typed_record, utc_time

log = logging.getLogger("gwc.audit")
BATCH = 256
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
CHECKPOINT_S = 60.0  # sign the head at least this often while records come
CHECKPOINT_RECORDS = 10_000  # ... and at least every this many records
_STOP = object()
# Every write durable when it returns: one system call per batch instead of a write and an fsync,
# so the writer thread gives up and takes back the GIL once per batch, not twice (each time it
# takes it back from a busy event loop it may wait a switch interval).
_DSYNC = getattr(os, "O_DSYNC", 0)


def rotation_number(path: Path) -> int:
    """The number of a rotated file (``audit.jsonl.000002``: 2)."""
    return int(path.suffix[1:])


def rotated(path: Path) -> list[Path]:
    """The rotated files of a trail, oldest first."""
    found = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    return sorted(found, key=rotation_number)


def trail(path: Path) -> list[Path]:
    """All files of a trail in order: the rotated ones, then the current one."""
    return [*rotated(path), *([path] if path.exists() else [])]


def trail_base(path: Path) -> Path:
    """The current file of the trail a file belongs to (``audit.jsonl.000002``: ``audit.jsonl``)."""
    return path.with_suffix("") if path.suffix[1:].isdigit() else path


def in_trail_order(paths: list[Path]) -> list[Path]:
    """Files as given on a command line, in trail order: per trail, rotated ones by number, then
    the current one."""
    def key(path: Path) -> tuple[str, float]:
        number = path.suffix[1:]
        return str(trail_base(path)), int(number) if number.isdigit() else float("inf")
    return sorted(paths, key=key)


@dataclass(frozen=True)
class Torn:
    """The bytes after a file's last newline: a write a crash cut short."""

    offset: int
    data: bytes

    def repair(self, node: str, path: Path) -> dict[str, Any]:
        """The record that says what was cut, so the cut is on the record."""
        return {"type": "repair", "node": node, "time": utc_time(time.time()), "file": path.name,
                "offset": self.offset, "length": len(self.data),
                "sha256": hashlib.sha256(self.data).hexdigest()}


@dataclass(frozen=True)
class _Scan:
    lines: int  # records (complete, non-blank lines)
    last: bytes | None  # the last of them
    checkpoint: tuple[int, int] | None  # (its line among the records, its own number)
    torn: Torn | None
    chain: str | None = None  # the chain id of its last start record


def _scan(path: Path) -> _Scan:
    """One pass over a file: what a restarted writer needs to continue its chain."""
    lines, last, checkpoint, offset, chain = 0, None, None, 0, None
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return _Scan(lines, last, checkpoint, Torn(offset, line), chain)
            offset += len(line)
            if line.strip():
                lines, last = lines + 1, line
                signed = _checkpoint_seq(line) if b'"checkpoint"' in line else None
                if signed is not None:
                    checkpoint = (lines, signed + 1)
                elif b'"start"' in line:
                    chain = chain_id(typed_record(line, "start")) or chain
    return _Scan(lines, last, checkpoint, None, chain)


def _checkpoint_seq(line: bytes) -> int | None:
    """The number of the record a checkpoint on this line signs, if it is one. Damage here does
    not stop a node from writing on: naming it is verify's job."""
    record = typed_record(line, "checkpoint")
    return record["seq"] if record is not None and isinstance(record.get("seq"), int) else None


def _record(path: Path, line: bytes) -> dict[str, Any]:
    """A whole line of the trail as a record; a line that is not one is damage no crash makes."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
        raise ValueError(f"{path}: a whole line is not an audit record, which no crash leaves "
                         "(run gwc audit verify on the trail)")
    return record


@dataclass(frozen=True)
class Resume:
    """Where a trail stands: the last hash, the last record's number, a torn tail to cut, and
    the chain's id (None: a new trail, or one written before chains had ids)."""

    prev: str
    seq: int
    torn: Torn | None
    chain: str | None = None


def resume(path: Path) -> Resume:
    """Read a trail from its newest file back until the last checkpoint says how many records
    came before (all of it for a trail without checkpoints). Only the current file can be torn:
    rotation follows a durable batch. A last record that is not JSON is no crash: ValueError."""
    files = trail(path)
    prev: str | None = None
    torn = None
    chain: str | None = None
    newer = 0  # records in the files after the one scanned
    for file in reversed(files):
        scan = _scan(file)
        if file == path:
            torn = scan.torn
        if prev is None and scan.last is not None:
            prev = _record(file, scan.last)["hash"]
            chain = scan.chain
        if scan.checkpoint is not None:
            line, number = scan.checkpoint
            return Resume(prev or GENESIS, number + scan.lines - line + newer, torn, chain)
        newer += scan.lines
    return Resume(prev or GENESIS, newer, torn, chain)


class AuditWriter:
    def __init__(self, node: str, path: Path | None, stdout: bool = False,
                 max_bytes: int = DEFAULT_MAX_BYTES, signing_key: Ed25519PrivateKey | None = None,
                 checkpoint_s: float = CHECKPOINT_S,
                 checkpoint_records: int = CHECKPOINT_RECORDS) -> None:
        self._node, self._path, self._stdout, self._max_bytes = node, path, stdout, max_bytes
        self.chain = secrets.token_hex(8)  # a new chain's id; start() takes a found trail's
        self.close_rotates = False  # shutdown closes the current file (for shipping)
        self.on_closed: Callable[[Path], None] | None = None  # told of each file closed
        # set: a file that has held records this long is closed too (a quiet node's records
        # then reach the object store within this time, not only when the file fills)
        self.max_file_age_s: float | None = None
        self._file_since, self._file_from = time.monotonic(), 0  # the file's begin: when, seq
        self._key, self._checkpoint_s = signing_key, checkpoint_s
        self._checkpoint_records = checkpoint_records
        # Each put is a batch of (body, future) entries, or _STOP.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._turn: dict[asyncio.AbstractEventLoop, list[tuple[bytes, asyncio.Future[str]]]] = {}
        self._file: BinaryIO | None = None
        # Where each encoded record's prev goes: random per writer, so no caller can put it in
        # an argument value ahead of the real one.
        self._placeholder = secrets.token_hex(32)
        self._prev, self._seq = GENESIS, 0  # the last chained record: its hash and number
        self._signed_seq, self._signed_at = 0, time.monotonic()
        self._thread: threading.Thread | None = None
        self.healthy = True  # false after a failed write, until one succeeds again
        self.sequence = 0  # the number of the last durable record (counted from the trail's first)
        self.head: Head | None = None  # the latest durable checkpoint

    def start(self) -> None:
        """Open the trail (continuing the chain found there, a torn tail cut and recorded) and
        start the writer thread."""
        repair: list[dict[str, Any]] = []
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            found = resume(self._path)
            self._prev, self._seq = found.prev, found.seq
            self.chain = found.chain or self.chain
            if found.torn is not None:
                os.truncate(self._path, found.torn.offset)
                repair.append(found.torn.repair(self._node, self._path))
                log.warning("audit trail: cut a torn final line left by a crash", extra={
                    "path": str(self._path), "offset": found.torn.offset,
                    "length": len(found.torn.data)})
            self._file = _open_trail_file(self._path)
        self._begin(repair)  # stdout alone: each run is a chain of its own, from its start record
        self._thread = threading.Thread(target=self._run, name="gwc-audit", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> asyncio.Future[str]:
        """Encode a record and queue it; the future gives its hash once it is durable (or the
        write error). A record that cannot be encoded raises ``UnencodableRecord`` here."""
        body = encode(record, self._placeholder)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entries = self._turn.get(loop)
        if entries is None:
            self._turn[loop] = entries = []
            loop.call_soon(self._hand_over, loop)
        entries.append((body, future))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the writer thread what one turn of ``loop`` submitted, in one put. A put that
        finds the thread waiting wakes it (a system call, and on a busy machine often a context
        switch away from the loop): once per turn instead of once per record. The records of a
        turn are chained in the order they were submitted."""
        entries = self._turn.pop(loop, None)
        if entries:
            self._queue.put(entries)

    def close(self) -> None:
        if self._thread is not None:
            for loop in list(self._turn):  # submitted in this turn: written before the stop
                self._hand_over(loop)
            self._queue.put(_STOP)
            self._thread.join(10)
        if self._file is not None:
            self._file.close()

    def _begin(self, records: list[dict[str, Any]]) -> None:
        """A file's first lines: its start record, ``records``, and a checkpoint."""
        start = {"type": "start", "node": self._node, "ts": time.time(), "chain": self.chain}
        self._append([encode(r, self._placeholder) for r in (start, *records)], checkpoint=True)
        self._file_since, self._file_from = time.monotonic(), self._seq

    def _append(self, bodies: list[bytes], checkpoint: bool = False) -> list[str]:
        """Chain encoded records after the last one and write them durably, with a checkpoint
        after them when one is due; their hashes. On failure none of it counts: the chain goes
        on from before them."""
        prev, seq, placeholder = self._prev, self._seq, self._placeholder.encode()
        try:
            lines, hashes = [], []
            for body in bodies:
                line, self._prev = link(body, placeholder, self._prev)
                self._seq += 1
                lines.append(line)
                hashes.append(self._prev)
            head = self._checkpoint(checkpoint)
            if head is not None:
                line, self._prev = link(encode({"type": "checkpoint", **head.fields()},
                                               self._placeholder), placeholder, self._prev)
                self._seq += 1
                lines.append(line)
            self._write_lines(lines)
        except BaseException:
            self._prev, self._seq = prev, seq
            raise
        self.sequence = self._seq
        if head is not None:  # nothing new to sign until a record follows the checkpoint
            self.head, self._signed_seq, self._signed_at = head, self._seq, time.monotonic()
        return hashes

    def _checkpoint(self, forced: bool) -> Head | None:
        """The signed head of what is chained so far, if a checkpoint is due."""
        if self._key is None or self._seq == self._signed_seq:
            return None
        if (forced or self._seq - self._signed_seq >= self._checkpoint_records
                or time.monotonic() - self._signed_at >= self._checkpoint_s):
            return Head.sign(self._key, self._node, self._seq, self._prev)
        return None

    def _until_checkpoint(self) -> float | None:
        """How long the idle writer may wait before a checkpoint falls due; None: none will."""
        if self._key is None or self._seq == self._signed_seq:
            return None
        return max(0.0, self._signed_at + self._checkpoint_s - time.monotonic())

    def _until_old(self) -> float | None:
        """How long until the current file, holding records, is old enough to close; None:
        never (no age limit, or nothing written since it began)."""
        if self.max_file_age_s is None or self._file is None or self._seq == self._file_from:
            return None
        return max(0.0, self._file_since + self.max_file_age_s - time.monotonic())

    def _idle_wait(self) -> float | None:
        waits = [w for w in (self._until_checkpoint(), self._until_old()) if w is not None]
        return min(waits) if waits else None

    def _write_lines(self, lines: list[bytes]) -> None:
        """Append durably; on failure cut the file back to where the batch began, so a
        half-written batch (disk full) never leaves a torn record in the chain."""
        data = b"".join(lines)
        if self._file is not None:
            start = self._file.tell()
            try:
                view = memoryview(data)
                while view:
                    written = self._file.write(view)
                    if not written:
                        raise OSError("the audit file accepted no bytes")
                    view = view[written:]
                if not _DSYNC:
                    os.fsync(self._file.fileno())
            except OSError:
                try:
                    os.ftruncate(self._file.fileno(), start)
                    self._file.seek(start)
                except OSError:
                    log.error("audit file could not be cut back after a failed write; "
                              "`gwc audit verify` will name the torn record")
                raise
        if self._stdout:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                if self._file is None:  # stdout is the trail: the batch failed
                    raise
                # The file holds the batch durably; the stdout copy (a collector's feed) has a
                # gap, which a verify of what the collector kept will name.
                log.error("audit copy to stdout failed; the file trail is complete")

    def _rotate_if_due(self) -> None:
        """Close the current file when it is full, or old (``max_file_age_s``), and begin the
        next."""
        if self._file is None or self._path is None:
            return
        if self._file.tell() < self._max_bytes and self._until_old() != 0.0:
            return
        self._close_file()
        self._file = _open_trail_file(self._path)
        self._begin([])

    def _close_file(self) -> None:
        """End the current file with a checkpoint (so it is evidence on its own), rename it to
        the next rotated number and tell ``on_closed``. An empty file (its start record failed)
        is left in place."""
        assert self._file is not None and self._path is not None
        if self._file.tell() == 0:
            return
        self._append([], checkpoint=True)  # signs what the last checkpoint does not
        self._file.close()
        existing = rotated(self._path)
        number = rotation_number(existing[-1]) + 1 if existing else 1
        closed = self._path.with_name(f"{self._path.name}.{number:06d}")
        try:
            os.replace(self._path, closed)
        except OSError:
            self._file = _open_trail_file(self._path)  # still the current file: writes go on
            raise
        self._file = None
        if self.on_closed is not None:
            try:
                self.on_closed(closed)
            except Exception:  # the file is closed and on disk whatever the listener does
                log.exception("audit: the closed-file listener failed", extra={"path": str(closed)})

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_wait())
            except queue.Empty:  # idle, and records wait to be signed or the file is old
                self._write_batch([])
                continue
            batch: list[tuple[bytes, asyncio.Future[str]]] = []
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                else:
                    batch.extend(item)
                if len(batch) >= BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write_batch(batch, checkpoint=stop)
            if stop:
                if self.close_rotates and self._file is not None:
                    try:
                        self._close_file()
                    except OSError as exc:  # the file stays current: the next start goes on in it
                        log.error("audit file could not be closed for shipping",
                                  extra={"reason": str(exc)})
                return

    def _write_batch(self, entries: list[tuple[bytes, asyncio.Future[str]]],
                     checkpoint: bool = False) -> None:
        try:
            if self._file is not None and self._file.tell() == 0:  # its start record failed
                self._begin([])
            hashes = self._append([body for body, _ in entries], checkpoint)
        except (OSError, ValueError) as exc:  # I/O: the disk, or a file that cannot be written
            self.healthy = False
            self._signed_at = time.monotonic()  # an idle checkpoint retries later, not at once
            log.error("audit write failed", extra={"reason": str(exc), "records": len(entries)})
            _resolve([(future, exc) for _, future in entries])
            return
        self.healthy = True
        _resolve([(future, digest) for (_, future), digest in zip(entries, hashes, strict=True)])
        try:  # the batch is durable whatever happens here; a failed rotation fails the next one
            self._rotate_if_due()
        except OSError as exc:
            log.error("audit file rotation failed", extra={"reason": str(exc)})


def _open_trail_file(path: Path) -> BinaryIO:
    """The trail's current file, for appending durably; unbuffered, so an error leaves no
    buffer half flushed."""
    return open(path, "ab", buffering=0,
                opener=lambda name, flags: os.open(name, flags | _DSYNC, 0o666))


def _resolve(outcomes: list[tuple[asyncio.Future[str], str | BaseException]]) -> None:
    """Settle a batch's futures with one wake-up of each event loop, not one per record."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[str], Any]]] = {}
    for future, outcome in outcomes:
        by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, batch)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _settle(batch: list[tuple[asyncio.Future[str], str | BaseException]]) -> None:
    for future, outcome in batch:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
