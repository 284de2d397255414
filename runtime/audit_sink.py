"""Writing the audit trail without blocking the event loop, and without losing a returned call.

Records go on a queue to one writer thread, which chains them (``audit.seal``), writes them in
small batches, flushes and fsyncs the file, and only then resolves each record's future: a caller
that awaits it before answering its client has a record on disk for every answer it gave. The
file rotates by size into ``PATH.000001``, ``PATH.000002``...; each new file begins with a start
record chained to the last record of the file before, and a restarted node continues the chain
of the file it finds.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from runtime.audit import GENESIS, sealed_line

log = logging.getLogger("gwc.audit")
BATCH = 256
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
_STOP = object()


def rotated(path: Path) -> list[Path]:
    """The rotated files of a trail, oldest first."""
    found = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    return sorted(found, key=lambda p: int(p.suffix[1:]))


def trail(path: Path) -> list[Path]:
    """All files of a trail in order: the rotated ones, then the current one."""
    return [*rotated(path), *([path] if path.exists() else [])]


def in_trail_order(paths: list[Path]) -> list[Path]:
    """Files as given on a command line, in trail order: per trail, rotated ones by number, then
    the current one."""
    def key(path: Path) -> tuple[str, float]:
        if path.suffix[1:].isdigit():
            return str(path.with_suffix("")), int(path.suffix[1:])
        return str(path), float("inf")
    return sorted(paths, key=key)


def last_hash(paths: list[Path]) -> str:
    for path in reversed(paths):
        with path.open("rb") as fh:
            lines = [line for line in fh.read().splitlines() if line.strip()]
        if lines:
            return str(orjson.loads(lines[-1])["hash"])
    return GENESIS


class AuditWriter:
    def __init__(self, node: str, path: Path | None, stdout: bool = False,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._node, self._path, self._stdout, self._max_bytes = node, path, stdout, max_bytes
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._file: BinaryIO | None = None
        self._prev = GENESIS
        self._thread: threading.Thread | None = None
        self.healthy = True  # false after a failed write, until one succeeds again

    def start(self) -> None:
        """Open the trail (continuing the chain found there) and start the writer thread."""
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._prev = last_hash(trail(self._path))
            self._open()
        else:  # stdout alone: each run is a chain of its own, from its start record
            self._write_lines([self._start_record()])
        self._thread = threading.Thread(target=self._run, name="gwc-audit", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> asyncio.Future[str]:
        """Queue a record; the future gives its hash once it is durable (or the write error)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put((record, future))
        return future

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(10)
        if self._file is not None:
            self._file.close()

    def _open(self) -> None:
        assert self._path is not None
        self._file = self._path.open("ab", buffering=0)  # no buffer to half-flush on errors
        self._write_lines([self._start_record()])

    def _start_record(self) -> bytes:
        return self._chain({"type": "start", "node": self._node, "ts": time.time()})

    def _chain(self, record: dict[str, Any]) -> bytes:
        line = sealed_line(record, self._prev)
        self._prev = record["hash"]
        return line

    def _write_lines(self, lines: list[bytes]) -> None:
        """Append and fsync; on failure cut the file back to where the batch began, so a
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

    def _rotate_if_full(self) -> None:
        if self._file is None or self._path is None or self._file.tell() < self._max_bytes:
            return
        self._file.close()
        existing = rotated(self._path)
        number = int(existing[-1].suffix[1:]) + 1 if existing else 1
        os.replace(self._path, self._path.with_name(f"{self._path.name}.{number:06d}"))
        self._open()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(entry is _STOP for entry in batch)
            entries = [entry for entry in batch if entry is not _STOP]
            if entries:
                self._write_batch(entries)
            if stop:
                return

    def _write_batch(self, entries: list[tuple[dict[str, Any], asyncio.Future[str]]]) -> None:
        prev = self._prev
        try:
            lines = [self._chain(record) for record, _ in entries]
            self._write_lines(lines)
        except (OSError, TypeError, ValueError) as exc:
            self._prev = prev  # nothing of the batch counts: the chain goes on from before it
            self.healthy = False
            log.error("audit write failed", extra={"reason": str(exc), "records": len(entries)})
            _resolve([(future, exc) for _, future in entries])
            return
        self.healthy = True
        _resolve([(future, record["hash"]) for record, future in entries])
        try:  # the batch is durable whatever happens here; a failed rotation fails the next one
            self._rotate_if_full()
        except OSError as exc:
            log.error("audit file rotation failed", extra={"reason": str(exc)})


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
