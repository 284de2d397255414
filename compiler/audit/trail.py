"""Reading an audit trail for the offline tools (`gwc audit query|replay`), and printing records.

A trail's files are paths or objects in a store (``gwc.compiler.audit.store``): both open as a
binary stream and name themselves in messages (``str``), so one reader serves both. A trail can be
a million records a day, so lines are streamed and parsed only when a caller asks:
a cheap test on the raw bytes first (records are compact orjson, one object a line), JSON only for
the lines that can matter. A line that must be parsed and is not a record stops the read with its
file:line, never a traceback, and never a silent skip: the trail is evidence, and a reader that
passed over what it could not parse would hide the very record someone tampered with. Lines that
cannot match are not read at all; `gwc audit verify` checks every one.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

if TYPE_CHECKING:  # a command given files alone loads nothing of the store
    from gwc.compiler.audit.store import StoreObject

    TrailFile = Path | StoreObject  # a file, or a shipped file read from its store

VERIFY_HINT = "run `gwc audit verify` on the trail to check it"


class TrailError(Exception):
    """A trail could not be read; the message names the file (and line) and says why."""


BLOCK = 8 << 20  # bytes searched at a time for anchors


def size_of(path: TrailFile) -> int:
    """Its size in bytes (0 for a file gone since it was named)."""
    if not isinstance(path, Path):
        return path.size
    return path.stat().st_size if path.exists() else 0


def _open(path: TrailFile) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise TrailError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _blocks(path: TrailFile) -> Iterator[tuple[int, bytes, int, int]]:
    """(file offset of ``block``, block, begin, end): ``block[begin:end]`` is whole lines, each
    ending in a newline (one is added to a last line without). Blocks are used as read, never
    joined: only the line cut at a block's edge is copied."""
    with _open(path) as fh:
        offset, rest = 0, b""  # offset: of the block's first byte; rest: a line begun before it
        while True:
            block = fh.read(BLOCK)
            if not block:
                if rest:
                    yield offset - len(rest), rest + b"\n", 0, len(rest) + 1
                return
            begin, end = block.find(b"\n") + 1, block.rfind(b"\n") + 1
            if not end:  # no newline in the whole block: a very long line
                rest += block
            else:
                head = rest + block[:begin]  # the line cut at the edge, completed
                yield offset - len(rest), head, 0, len(head)
                if end > begin:
                    yield offset, block, begin, end
                rest = block[end:]
            offset += len(block)


class TrailReader:
    """Streams the lines of a trail's files (blank ones left out), in the order given.

    With ``anchors``, only the lines that hold one of those byte strings, found by searching
    whole blocks: a selective query touches a few lines of a million and never iterates the
    rest. Counting lines costs as much as that search, so without ``numbered`` an anchored line
    comes with number 0 and :meth:`number_of_last` counts it only when asked (an error)."""

    def __init__(self, anchors: tuple[bytes, ...] = (), numbered: bool = True) -> None:
        self._anchors, self._numbered = anchors, numbered
        self._last: tuple[TrailFile, int] = (Path(), 0)  # the file and offset of the last line

    def lines(self, paths: Iterable[TrailFile]) -> Iterator[tuple[TrailFile, int, bytes]]:
        """(file, line number, line without its newline)."""
        for path in paths:
            try:
                yield from self._file_lines(path)
            except OSError as exc:
                raise TrailError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def _file_lines(self, path: TrailFile) -> Iterator[tuple[TrailFile, int, bytes]]:
        if not self._anchors:
            with _open(path) as fh:
                for number, line in enumerate(fh, 1):
                    if line.strip():
                        yield path, number, line.rstrip()
            return
        number = 0  # lines before the piece (when numbered)
        for offset, block, begin, end in _blocks(path):
            index, last = 0, begin  # the line's index in the piece, from 0; where it starts
            for start in self._starts(block, begin, end):
                if self._numbered:
                    index += block.count(b"\n", last, start)
                    last = start
                self._last = (path, offset + start)
                yield (path, number + index + 1 if self._numbered else 0,
                       block[start:block.index(b"\n", start)].rstrip())
            if self._numbered:
                number += block.count(b"\n", begin, end)

    def number_of_last(self) -> int:
        """The line number of the last line an anchored, unnumbered read gave."""
        path, offset = self._last
        count = 0
        with _open(path) as fh:
            while offset > 0:
                data = fh.read(min(BLOCK, offset))
                if not data:
                    break
                count, offset = count + data.count(b"\n"), offset - len(data)
        return count + 1

    def _starts(self, block: bytes, begin: int, end: int) -> list[int]:
        """Where the lines of ``block[begin:end]`` that hold an anchor start, in order."""
        starts = set()
        for anchor in self._anchors:
            at = block.find(anchor, begin, end)
            while at >= 0:
                starts.add(block.rfind(b"\n", begin, at) + 1 or begin)
                at = block.find(anchor, block.index(b"\n", at) + 1, end)
        return sorted(starts)


class NotARecord(ValueError):
    """A line that had to be read is not an audit record."""


def parse(line: bytes) -> dict[str, Any]:
    """The record on a line; :class:`NotARecord` when it is not one."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise NotARecord("not a JSON record") from None
    if not isinstance(record, dict):
        raise NotARecord("not an audit record")
    return record


def user_label(principal: Any) -> str:
    """Who, in one word: the subject, or ``agent→human`` for an agent acting for someone."""
    if not isinstance(principal, dict):
        return "-"
    subject = str(principal.get("subject") or "-")
    acting_for = principal.get("acting_for")
    return f"{subject}→{acting_for}" if acting_for else subject


def cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


class Table:
    """Rows printed in aligned columns while they stream: the widths come from the first
    ``sample`` rows (held back until then), so a million-row answer is never held in memory; a
    later, longer value just pushes its row out of line."""

    def __init__(self, headers: tuple[str, ...], write: Any, sample: int = 1000) -> None:
        self._headers, self._write, self._sample = headers, write, sample
        self._held: list[tuple[str, ...]] | None = []
        self._format = ""

    def add(self, row: tuple[str, ...]) -> None:
        if self._held is None:
            self._write(self._format.format(*row))
            return
        self._held.append(row)
        if len(self._held) >= self._sample:
            self.flush()

    def flush(self) -> None:
        """Print what is held (the header first); called at the end even for no rows."""
        if self._held is None:
            return
        held, self._held = self._held, None
        widths = [max([len(h), *(len(r[i]) for r in held)]) for i, h in enumerate(self._headers)]
        self._format = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}\n"
        self._write(self._format.format(*(h.upper() for h in self._headers)))
        for row in held:
            self._write(self._format.format(*row))
