"""`gwc audit query`: which records of a trail match who / what / when, fast on a million records.

Filters: users (a record's principal subject or acting-for, or an approval's requester), servers,
tools, decisions, and a time window [since, until). Several values of one filter are alternatives;
different filters must all hold.

Speed comes from not parsing what cannot match. Records are compact orjson, so a record about
``alice`` holds the bytes ``"alice"``, and its time sits right after ``"time":"``: a line without
one of the needles of every filter, or with a time outside the window, is skipped unparsed. The
needles are only a necessary condition (``"alice"`` may also be an argument value); every parsed
record is checked again, exactly, on its fields.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from gwc.compiler.audit.trail import (
    VERIFY_HINT,
    NotARecord,
    TrailError,
    TrailReader,
    cell,
    parse,
    size_of,
    user_label,
)
from gwc.runtime.audit.chain import TIME_FORMAT

if TYPE_CHECKING:
    from gwc.compiler.audit.trail import TrailFile

COLUMNS = ("time", "user", "server", "tool", "access", "decision", "outcome", "error", "latency")
_AGE = re.compile(r"(\d+)([wdhms])")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_TIME_KEY = b'"time":"'


def parse_when(text: str, now: datetime | None = None) -> str:
    """A point in time as the trail writes it (UTC, fixed width): an ISO date (midnight UTC), an
    ISO date-time (no offset means UTC; ``Z`` or an offset is converted), or an age before now
    such as ``7d``, ``12h``, ``30m``. Raises ValueError."""
    age = _AGE.fullmatch(text.strip())
    if age:
        when = (now or datetime.now(UTC)) - timedelta(**{_UNITS[age[2]]: int(age[1])})
    else:
        when = datetime.fromisoformat(text.strip())
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def record_time(record: dict[str, Any]) -> str | None:
    """A record's time in the trail's form; records not in it (another writer) are converted."""
    value = record.get("time")
    if not isinstance(value, str):
        return None
    if len(value) == 27 and value.endswith("Z"):
        return value
    try:
        return parse_when(value)
    except ValueError:
        return None


def _needles(values: Iterable[str]) -> tuple[bytes, ...]:
    """The byte forms a JSON string can take in a record: orjson's (UTF-8 as is) and, for
    non-ASCII text, the escaped form another JSON writer would use."""
    found: list[bytes] = []
    for value in values:
        for form in (orjson.dumps(value), json.dumps(value).encode()):
            if form not in found:
                found.append(form)
    return tuple(found)


def _own_time(line: bytes) -> bytes | None:
    """The 27 bytes after the record's own ``"time":"`` when that key is surely at the top level
    of the object (not a "time" in the arguments), else None (then the record is parsed). Top
    level: no object opens before it (a writer that keeps insertion order puts time first), or
    it is the last one and a single ``}`` follows it (sorted keys put time after every nested
    object; a "time" nested deeper would be followed by its own object's ``}`` too)."""
    at = line.find(_TIME_KEY)
    if at < 0:
        return None
    if line.find(b"{", 1, at) >= 0:
        at = line.rfind(_TIME_KEY)
        if line.count(b"}", at) != 1:
            return None
    return line[at + 8:at + 35]


def _people(record: dict[str, Any]) -> set[str]:
    """Everyone a record is about: the principal and, for an approval, the requester."""
    out: set[str] = set()
    for who in (record.get("principal"), record.get("requester")):
        if isinstance(who, dict):
            out.update(v for v in (who.get("subject"), who.get("acting_for")) if isinstance(v, str))
    return out


@dataclass(frozen=True)
class Query:
    users: frozenset[str] = frozenset()
    servers: frozenset[str] = frozenset()
    tools: frozenset[str] = frozenset()
    decisions: frozenset[str] = frozenset()
    since: str | None = None  # inclusive, trail time form
    until: str | None = None  # exclusive
    tool_calls_only: bool = False  # type "call" with method "tools/call" (what replay evaluates)

    def matches(self, record: dict[str, Any]) -> bool:
        """The exact test, on a parsed record (start records never match)."""
        if record.get("type") == "start":
            return False
        if self.tool_calls_only and (record.get("type") != "call"
                                     or record.get("method") != "tools/call"):
            return False
        if self.users and self.users.isdisjoint(_people(record)):
            return False
        if self.servers and record.get("server") not in self.servers:
            return False
        if self.tools and record.get("tool") not in self.tools:
            return False
        if self.decisions and record.get("decision") not in self.decisions:
            return False
        if self.since is not None or self.until is not None:
            when = record_time(record)
            if when is None or (self.since is not None and when < self.since) \
                    or (self.until is not None and when >= self.until):
                return False
        return True

    def anchors(self) -> tuple[bytes, ...]:
        """Needles of one filter that a matching line must hold, to find candidate lines by
        searching whole blocks: the most selective filter given (users, tools, servers, then
        decisions); none when only a time window is given."""
        for values in (self.users, self.tools, self.servers, self.decisions):
            if values:
                return _needles(values)
        return ()

    def prefilter(self) -> Callable[[bytes], bool]:
        """A test on a raw line that is false only for lines whose record cannot match."""
        groups = [_needles(values) for values in (self.users, self.servers, self.tools,
                                                  self.decisions) if values]
        if self.tool_calls_only:
            groups.append((b'"tools/call"',))
        since = self.since.encode() if self.since is not None else None
        until = self.until.encode() if self.until is not None else None

        def may_match(line: bytes) -> bool:
            for needles in groups:
                if not any(needle in line for needle in needles):
                    return False
            if since is not None or until is not None:
                when = _own_time(line)
                # Only a time in the trail's own form is judged on bytes; any other is parsed.
                if when is not None and len(when) == 27 and when[-1:] == b"Z" and (
                        (since is not None and when < since)
                        or (until is not None and when >= until)):
                    return False
            return True
        return may_match


@dataclass
class Counts:
    files: int = 0
    bytes: int = 0  # the size of the files read
    matched: int = 0


def select(paths: list[TrailFile], query: Query, counts: Counts | None = None,
           numbered: bool = True) -> Iterator[tuple[TrailFile, int, bytes, dict[str, Any]]]:
    """(file, line, raw line, record) of every matching record, in the order of ``paths``.
    Without ``numbered``, line numbers may be 0 (counting them costs; see TrailReader)."""
    counts = counts if counts is not None else Counts()
    may_match = query.prefilter()
    reader = TrailReader(query.anchors(), numbered)
    counts.files = len(paths)
    counts.bytes = sum(size_of(path) for path in paths)
    for path, number, line in reader.lines(paths):
        if not may_match(line):
            continue
        try:
            record = parse(line)
        except NotARecord as exc:
            raise TrailError(f"{path}:{number or reader.number_of_last()}: {exc} "
                             f"({VERIFY_HINT})") from None
        if query.matches(record):
            counts.matched += 1
            yield path, number, line, record


def _latency(value: Any) -> str:
    if not isinstance(value, dict) or not isinstance(value.get("gateway"), (int, float)):
        return "-"
    upstream = value.get("upstream")
    text = f"{value['gateway']:.1f}"
    return (text + (f"+{upstream:.1f}" if isinstance(upstream, (int, float)) else "")) + "ms"


def row(record: dict[str, Any]) -> tuple[str, ...]:
    """A record as one table row (see COLUMNS); approvals and bypasses show their event."""
    kind = record.get("type")
    decision = record.get("decision") if kind in ("call", "list") else \
        f"{kind}:{record.get('event')}"
    return (cell(record.get("time")), user_label(record.get("principal")),
            cell(record.get("server")), cell(record.get("tool")), cell(record.get("access")),
            cell(decision), cell(record.get("outcome")), cell(record.get("error")),
            _latency(record.get("latency_ms")))
