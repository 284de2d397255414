"""Structured logs: one JSON object per line on stderr, ready for a log collector.

Every call writes a decision line, so formatting is kept cheap (orjson, a timestamp cached per
second) and writing happens on a background thread: a slow stderr never stalls the event loop.
"""
from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_listeners: list[logging.handlers.QueueListener] = []


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": self._timestamp(record.created),
                                 "level": record.levelname.lower(), "logger": record.name,
                                 "msg": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "info") -> None:
    """JSON lines on stderr, written by a background thread (flushed at exit)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    _listeners.append(listener)
    root = logging.getLogger("gwc")
    root.handlers[:] = [_ExtraPreservingQueueHandler(records)]
    root.setLevel(level.upper())
    root.propagate = False


def flush() -> None:
    """Writes every line logged so far and stops the writer: for a node about to exit, whose
    last words on stderr must come after them (the writer is a thread of its own)."""
    while _listeners:
        _listeners.pop().stop()


atexit.register(flush)


def adopt(name: str) -> None:
    """Another library's logger ``name`` writes where gwc's do, as the same JSON lines (once
    :func:`configure` has set them up; its own level is kept)."""
    handlers = logging.getLogger("gwc").handlers
    if handlers:
        theirs = logging.getLogger(name)
        theirs.handlers[:] = handlers
        theirs.propagate = False


class _ExtraPreservingQueueHandler(logging.handlers.QueueHandler):
    """The stock QueueHandler formats the message early and drops exc_info; here the record
    travels as it is and the listener's JSON formatter does all the work, off the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record
