"""Shipping a node's closed trail files to an S3-compatible bucket under Object Lock (WORM), off the
writer's thread and off the event loop.

Each closed file (``PATH.000001``, … : rotated by size, or closed at shutdown) goes to the bucket
under the key ``gwc.runtime.audit.objects`` gives it (node, chain, numbers of its first and last
records), with its last signed checkpoint beside it as ``.head.json`` (the ``Head`` fields as JSON).
Both are written with ``If-None-Match: *`` (never over an object), a SHA-256 checksum the store
checks, and an Object Lock retention (mode, and now plus the configured days). A file counts as
*confirmed* once a HEAD of both objects shows the expected checksum and a retention lock; only then
may it be deleted locally, and only once it is ``keep_local_days`` old (by its modification time,
the time it was closed). The newest closed file is always kept: a restarted node continues its
chain from it.

An object already at a key (``412 Precondition Failed``) is compared by checksum: the same bytes
are a file shipped before (a retry after a lost answer, or a restart); different bytes are never
overwritten: the local file is kept, the failure logged and counted, and it is not tried again
until the node restarts. A store that cannot be reached or refuses a request is retried with
exponential backoff and full jitter (``backoff`` seconds, 1 s up to 5 min); calls never wait for
any of it. Nothing is kept between runs: at start every closed file on disk is pending, and a HEAD
tells which are already confirmed.

boto3 is imported by the shipping thread only, so a node without a store never loads it.
Credentials come from the AWS SDK's standard chain (environment, shared files, web identity,
instance or task roles), never from the registry.
"""
from __future__ import annotations

import base64
import hashlib
import importlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gwc.runtime.audit.chain import Head, chain_id
from gwc.runtime.audit.objects import StoreUrl, TrailObject
from gwc.runtime.audit.writer import rotated, rotation_number
from gwc.runtime.bundle.format import ObjectLock

log = logging.getLogger("gwc.audit.ship")
BACKOFF_S = (1.0, 300.0)  # the first wait after a failed attempt, and the longest
SHUTDOWN_GRACE_S = 5.0  # how long shutdown waits for pending files to ship
IDLE_S = 60.0  # how often an idle shipper looks for kept files whose local time is up
_STOP = object()


class StoreError(Exception):
    """The store could not be reached or refused a request: retried with backoff."""


class Unshippable(Exception):
    """A file that must not be shipped as it is (a different object holds its key, or it cannot
    be read as a closed trail file): kept locally, not tried again until a restart. ``reason``
    labels the failure in metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ClosedFile:
    """A closed trail file, read for shipping: where it goes, its signed head, its checksum."""

    path: Path
    object: TrailObject
    head: Head
    sha256: bytes


def read_closed(path: Path, chain: str) -> ClosedFile:
    """Number a closed file's records and find its last checkpoint, in one pass. ``chain`` is the
    trail's chain, for a file whose start record has none (written before chains had ids)."""
    digest = hashlib.sha256()
    lines = 0
    first: int | None = None
    last_checkpoint: dict[str, Any] | None = None
    with path.open("rb") as fh:
        for line in fh:
            digest.update(line)
            if not line.endswith(b"\n"):
                raise Unshippable("unreadable", f"{path.name} ends in a torn line: not closed")
            if not line.strip():
                continue
            lines += 1
            if lines == 1 or b'"checkpoint"' in line:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise Unshippable("unreadable", f"{path.name}: record {lines} is not "
                                      "JSON") from None
                if not isinstance(record, dict):
                    raise Unshippable("unreadable", f"{path.name}: record {lines} is no record")
                if lines == 1 and record.get("type") == "start":
                    chain = chain_id(record) or chain
                if record.get("type") == "checkpoint" and isinstance(record.get("seq"), int):
                    last_checkpoint = record
                    if first is None:  # a checkpoint's own number is one after what it signs
                        first = record["seq"] + 1 - lines + 1
    if last_checkpoint is None or first is None or first < 1:
        raise Unshippable("unreadable", f"{path.name} holds no signed checkpoint to number its "
                          "records by (written without the gateway key?)")
    try:
        head = Head.of(last_checkpoint)
    except ValueError as exc:
        raise Unshippable("unreadable", f"{path.name}: {exc}") from None
    return ClosedFile(path, TrailObject(head.node, chain, first, first + lines - 1), head,
                      digest.digest())


@dataclass
class _Stats:
    """What the metrics read, updated by the shipping thread only (each a single attribute, so a
    reader on another thread sees a whole value)."""

    pending: int = 0
    oldest: float | None = None  # modification time of the oldest unshipped file
    shipped: int = 0
    failures: dict[str, int] = field(default_factory=dict)


class Shipper:
    """Ships the closed files of the trail at ``trail_path`` to ``store``: :meth:`start` it, tell
    it of each file the writer closes (:meth:`closed`, any thread), and :meth:`close` it after the
    writer."""

    def __init__(self, trail_path: Path, store: StoreUrl, lock: ObjectLock,
                 keep_local_days: float, chain: Callable[[], str], *,
                 on_shipped: Callable[[], None] = lambda: None,
                 on_failure: Callable[[str], None] = lambda reason: None,
                 backoff: tuple[float, float] | None = None,
                 client: Callable[[], Any] | None = None) -> None:
        self._trail, self._store, self._lock = trail_path, store, lock
        self._keep_s = keep_local_days * 86400
        self._chain, self._on_shipped, self._on_failure = chain, on_shipped, on_failure
        self._backoff = backoff or BACKOFF_S  # read here, so a test can set the module's
        self._make_client = client or _default_client
        self._client: Any = None
        self._notices: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[Path, float] = {}  # closed, not confirmed: its modification time
        self._held: set[Path] = set()  # pending, but not tried again this run
        self._kept: dict[Path, float] = {}  # confirmed, kept locally until this time
        self._stop_by: float | None = None  # monotonic deadline once close() was called
        self._grace_s = SHUTDOWN_GRACE_S
        self._thread: threading.Thread | None = None
        self.stats = _Stats()

    # -- the node's side -------------------------------------------------------------------------

    def start(self) -> None:
        """Take every closed file on disk as pending and start shipping."""
        for path in rotated(self._trail):
            self._notices.put(path)
        self._thread = threading.Thread(target=self._run, name="gwc-audit-ship", daemon=True)
        self._thread.start()

    def closed(self, path: Path) -> None:
        """A file was closed (the writer's ``on_closed``): ship it. Never blocks."""
        self._notices.put(path)

    def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Ship what is pending for up to ``grace_s`` seconds; what is left ships at the next
        start."""
        if self._thread is None:
            return
        self._grace_s = grace_s
        self._notices.put(_STOP)
        self._thread.join(grace_s + 1.0)

    def oldest_age(self) -> float:
        """Seconds since the oldest unshipped file was closed; 0 when none waits."""
        oldest = self.stats.oldest
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    # -- the shipping thread ---------------------------------------------------------------------

    def _run(self) -> None:
        wait, wake = 0.0, True  # before the next attempt; whether a closed file cuts it short
        failed_attempts = 0
        while True:
            if self._take_notices(wait, wake):
                return
            due = self._due()
            if due is None:
                self._delete_expired()
                wait, wake = self._idle_wait(), True
                continue
            try:
                self._ship(due)
            except Unshippable as exc:
                self._held.add(due)
                self._count_failure(exc.reason)
                log.error("audit file not shipped: kept locally, not tried again until restart",
                          extra={"path": str(due), "reason": str(exc), "failure": exc.reason})
                wait = 0.0
                continue
            except Exception as exc:  # the store failed (or a bug did: the thread goes on)
                if not isinstance(exc, StoreError):
                    log.exception("audit shipping failed unexpectedly", extra={"path": str(due)})
                self._count_failure("store")
                if self._stop_by is not None:  # shutting down: the next start ships it
                    log.warning("audit files left to ship at the next start", extra={
                        "pending": self.stats.pending, "reason": str(exc)})
                    return
                failed_attempts += 1
                ceiling = min(self._backoff[1], self._backoff[0] * 2 ** (failed_attempts - 1))
                wait, wake = random.uniform(ceiling / 2, ceiling), False  # jittered
                log.warning("audit file not shipped yet: the store failed; retrying", extra={
                    "path": str(due), "reason": str(exc), "retry_in_s": round(wait, 3),
                    "pending": self.stats.pending})
                continue
            failed_attempts, wait = 0, 0.0
            self._delete_expired()

    def _take_notices(self, wait: float, wake: bool) -> bool:
        """Wait ``wait`` seconds (cut short by the stop, and with ``wake`` by a closed file),
        taking every notice that comes; True when it is time to stop: shutting down, and nothing
        left to ship or the grace over."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                notice = (self._notices.get(timeout=remaining)
                          if self._stop_by is None and remaining > 0
                          else self._notices.get_nowait())
            except queue.Empty:
                break
            if notice is _STOP:
                self._stop_by = time.monotonic() + self._grace_s
            elif notice not in self._pending and notice not in self._kept:
                try:
                    self._pending[notice] = notice.stat().st_mtime
                except FileNotFoundError:
                    self._lost(notice)
                    continue
                except OSError as exc:  # unreadable now: tried again at the next start
                    log.error("audit file cannot be read for shipping", extra={
                        "path": str(notice), "reason": str(exc)})
                    continue
                self._update_stats()
                if wake:
                    deadline = 0.0  # take what else is queued, then ship
        if self._stop_by is not None:
            return time.monotonic() >= self._stop_by or self._due() is None
        return False

    def _due(self) -> Path | None:
        """The oldest pending file not held back."""
        candidates = [p for p in self._pending if p not in self._held]
        return min(candidates, key=rotation_number) if candidates else None

    def _idle_wait(self) -> float:
        """Until a kept file's local time is up (the newest is kept anyway), at most ``IDLE_S``."""
        newest = self._newest()
        times = [at for path, at in self._kept.items() if path != newest]
        return min(IDLE_S, max(0.01, min(times) - time.time())) if times else IDLE_S

    def _newest(self) -> Path | None:
        on_disk = rotated(self._trail)
        return on_disk[-1] if on_disk else None

    def _ship(self, path: Path) -> None:
        try:
            closed = read_closed(path, self._chain())
        except FileNotFoundError:
            self._pending.pop(path, None)
            self._update_stats()
            self._lost(path)
            return
        except OSError as exc:
            raise StoreError(f"cannot read {path.name}: {exc}") from exc  # retried later
        started = time.monotonic()
        if self._client is None:
            self._client = _call(self._make_client)
        head = orjson.dumps(closed.head.fields(), option=orjson.OPT_SORT_KEYS)
        trail_key, head_key = closed.object.trail_key(self._store), closed.object.head_key(self._store)
        with path.open("rb") as body:
            trail = self._put(trail_key, body, closed.sha256, "application/x-ndjson")
        # The head goes up even when the file's lock cannot be confirmed, so that the bucket
        # never holds a file without its signed head; an unlocked object fails after both.
        signed = self._put(head_key, head,
                           hashlib.sha256(head).digest(), "application/json")
        for key, found in ((trail_key, trail), (head_key, signed)):
            _check_locked(key, found)
        self._kept[path] = self._pending.pop(path) + self._keep_s
        self.stats.shipped += 1
        self._update_stats()
        self._on_shipped()
        log.info("audit file shipped", extra={
            "path": str(path), "key": trail_key, "first": closed.object.first,
            "last": closed.object.last, "seconds": round(time.monotonic() - started, 3)})

    def _put(self, key: str, body: Any, sha256: bytes, content_type: str) -> dict[str, Any]:
        """Make sure the object at ``key`` holds these bytes: already there, or written now
        (with a retention lock); its metadata, for :func:`_check_locked`."""
        checksum = base64.b64encode(sha256).decode()
        found = self._head(key)
        if found is None:
            until = datetime.now(UTC) + timedelta(days=self._lock.days)
            try:
                _call(lambda: self._client.put_object(
                    Bucket=self._store.bucket, Key=key, Body=body, IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum, ContentType=content_type,
                    ObjectLockMode=self._lock.mode.upper(), ObjectLockRetainUntilDate=until))
            except _PreconditionFailed:
                pass  # someone (this node, before a lost answer) wrote it: compared below
            except StoreError as exc:
                if "ObjectLockConfiguration" in str(exc):  # the bucket has Object Lock off
                    raise Unshippable("unlocked", f"{key}: the bucket refuses a retention lock "
                                      f"({exc}): turn Object Lock on for it") from None
                raise
            found = self._head(key)
            if found is None:
                raise StoreError(f"{key} is not in the bucket after it was written")
        theirs = found.get("ChecksumSHA256")
        if theirs != checksum:  # a node always sends one: without, no node wrote the object
            raise Unshippable("conflict", f"the bucket holds different bytes at {key} (SHA-256 "
                              f"{theirs or 'not given'}, this file {checksum}): never "
                              "overwritten")
        return found

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata with its checksum; None when there is none."""
        try:
            found: dict[str, Any] = _call(lambda: self._client.head_object(
                Bucket=self._store.bucket, Key=key, ChecksumMode="ENABLED"))
        except _Missing:
            return None
        return found

    def _delete_expired(self) -> None:
        """Delete confirmed files whose local time is up, but never the newest closed file."""
        now = time.time()
        expired = [path for path, at in self._kept.items() if at <= now]
        if not expired:
            return
        newest = self._newest()
        for path in expired:
            if path == newest:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("audit file shipped but not deleted locally", extra={
                    "path": str(path), "reason": str(exc)})
                continue
            del self._kept[path]
            log.info("audit file deleted locally: confirmed in the bucket", extra={
                "path": str(path)})

    def _lost(self, path: Path) -> None:
        """A closed file deleted before it shipped: its records are nowhere now."""
        self._count_failure("missing")
        log.error("audit file gone before it was shipped: its records are not in the bucket "
                  "(gwc audit verify of the bucket names the gap)",
                  extra={"path": str(path), "failure": "missing"})

    def _count_failure(self, reason: str) -> None:
        self.stats.failures = {**self.stats.failures,
                               reason: self.stats.failures.get(reason, 0) + 1}
        self._on_failure(reason)

    def _update_stats(self) -> None:
        self.stats.pending = len(self._pending)
        self.stats.oldest = min(self._pending.values()) if self._pending else None



def _check_locked(key: str, found: dict[str, Any]) -> None:
    """An object counts as kept only under a retention lock that has not run out."""
    locked = found.get("ObjectLockRetainUntilDate")
    if not found.get("ObjectLockMode") or locked is None or locked <= datetime.now(UTC):
        raise Unshippable("unlocked", f"{key} is in the bucket without an Object Lock "
                          "retention (is Object Lock on for the bucket, and may the node "
                          "read retention: s3:GetObjectRetention?)")


class _Missing(Exception):
    """404: no object at the key."""


class _PreconditionFailed(Exception):
    """412: an object is at the key already (If-None-Match)."""


def _call(request: Callable[[], Any]) -> Any:
    """One request to the store, its failures sorted: missing, taken, or a store error."""
    errors = importlib.import_module("botocore.exceptions")  # untyped: Any, as mypy sees it
    try:
        return request()
    except errors.ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(error.get("Code", ""))
        if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
            raise _Missing() from None
        if status == 412 or code == "PreconditionFailed":
            raise _PreconditionFailed() from None
        raise StoreError(f"{code or status}: {error.get('Message', '')}".strip()) from None
    except errors.BotoCoreError as exc:  # unreachable, no credentials, a timeout...
        raise StoreError(str(exc)) from None


def _default_client() -> Any:
    """An S3 client from the SDK's standard configuration (``AWS_*`` variables, shared files,
    roles; ``AWS_ENDPOINT_URL_S3`` for an S3-compatible store), with few retries of its own: the
    shipper's backoff does the waiting."""
    boto3 = importlib.import_module("boto3")
    config = importlib.import_module("botocore.config")
    return boto3.session.Session().client("s3", config=config.Config(
        retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60))
