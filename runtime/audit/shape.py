"""What an audit record keeps of a call's arguments: their shape, and the values policy read.

Argument values are kept only where policy reads them (the paths of the conditions of the rules
that can apply to the tool); of every other argument the record keeps the shape: its keys and the
JSON type of each value, nested. Both are bounded whatever a caller sends (``MAX_*`` below) and
built without recursion, in time linear in the arguments' size, so hostile input never costs a
record: the parts beyond a bound are summarised as ``{"…": "why"}``.
"""
from __future__ import annotations

from collections.abc import Iterable
from operator import length_hint
from typing import Any

import orjson

from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.policy.decide import MISSING, argument_at

# What a record keeps of a call's arguments, at most (docs/audit.md, "Bounds").
MAX_DEPTH = 8  # levels of objects and lists; a deeper one is {"…": "depth>8"}
MAX_KEYS = 64  # keys kept per object; the rest are counted: {"…": "+N keys"}
MAX_KEY_CHARS = 64  # characters kept of a key (a longer one ends in "…")
MAX_KINDS = 16  # distinct kinds kept per list; items of other kinds are counted
MAX_SHAPE_SIZE = 4096  # a whole shape: characters of its keys, plus one per type or summary
MAX_VISITS = 10_000  # values a shape looks at one by one (a long list of one scalar type is free)
MAX_VALUE_SIZE = 1024  # a recorded value: characters of its strings and keys, plus one per value
CUT = "…"  # the key of a summary; a caller's own key "…" is left out of shapes (and counted)

_LEAF = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_DONE = object()


def _leaf(value: Any) -> str:
    return _LEAF.get(type(value), "null")


def _canonical_kind(kind: Any) -> str | bytes:
    """A hashable stand-in for a kind, so a list's kinds are deduplicated in linear time."""
    return kind if isinstance(kind, str) else orjson.dumps(kind, option=orjson.OPT_SORT_KEYS)


class _Frame:
    """An object or list being shaped within ``budget``: its share of ``MAX_SHAPE_SIZE``, one
    of it kept for its own summary."""

    __slots__ = ("budget", "depth", "size")

    def __init__(self, depth: int, budget: int) -> None:
        self.depth, self.budget, self.size = depth, budget, 1

    def room(self) -> int:
        """The budget of a child about to be shaped: what this frame has left."""
        return self.budget - 1 - self.size

    def fits(self, size: int) -> bool:
        return self.size + size <= self.budget - 1


class _Object(_Frame):
    """An object being shaped: its keys in order while they fit, the others counted."""

    __slots__ = ("full", "items", "key", "out", "total")

    def __init__(self, value: dict[str, Any], depth: int, budget: int) -> None:
        super().__init__(depth, budget)
        self.total, self.items = len(value), iter(value.items())
        self.out: dict[str, Any] = {}
        self.key, self.full = "", False

    def next(self) -> Any:
        """The next value to shape (its key noted), or ``_DONE``."""
        for key, item in self.items:
            if self.full or len(self.out) == MAX_KEYS:
                break
            if len(key) > MAX_KEY_CHARS:
                key = key[:MAX_KEY_CHARS] + CUT
            if key != CUT and key not in self.out:
                self.key = key
                return item
        return _DONE

    def room(self) -> int:
        return super().room() - len(self.key)

    def take(self, kind: Any, size: int) -> None:
        size += len(self.key)
        if self.fits(size):
            self.out[self.key] = kind
            self.size += size
        else:
            self.full = True

    def stop(self) -> None:
        self.full = True

    def kind(self) -> tuple[Any, int]:
        if len(self.out) < self.total:
            self.out[CUT] = f"+{self.total - len(self.out)} keys"
            self.size += 1
        return self.out, self.size


class _List(_Frame):
    """A list being shaped: the distinct kinds of its items while they fit; from the first that
    does not, the items left are counted, not looked at."""

    __slots__ = ("items", "more", "out", "seen")

    def __init__(self, value: list[Any], depth: int, budget: int) -> None:
        super().__init__(depth, budget)
        self.items = iter(value)
        self.out: list[Any] = []
        self.seen: set[str | bytes] = set()
        self.more = 0

    def next(self) -> Any:
        """The next item whose kind is not known yet, or ``_DONE``. Scalars of a kind already
        kept are passed over here, in one tight loop: the common long list costs little."""
        seen = self.seen
        for item in self.items:
            if _LEAF.get(type(item)) not in seen:
                return item
        return _DONE

    def take(self, kind: Any, size: int) -> None:
        key = _canonical_kind(kind)
        if key in self.seen:
            return
        if len(self.out) < MAX_KINDS and self.fits(size):
            self.seen.add(key)
            self.out.append(kind)
            self.size += size
        else:
            self.more = 1
            self.stop()

    def stop(self) -> None:
        self.more += length_hint(self.items)
        self.items = iter(())

    def kind(self) -> tuple[Any, int]:
        if self.more:
            self.out.append({CUT: f"+{self.more} more items"})
            self.size += 1
        return self.out, self.size


def shape(value: Any) -> Any:
    """The JSON type of a value, nested: objects keep their keys, arrays the distinct types they
    hold. Bounded by ``MAX_*``: deeper levels, further keys and kinds, and whatever would make
    the whole larger or take longer are summarised; each object or list is shaped within what
    its parent has left. Depth first with a stack of its own (no recursion); no value is looked
    at twice, and list kinds are told apart by their canonical bytes (a set, not a search)."""
    if not isinstance(value, (dict, list)):
        return _leaf(value)
    if type(value) is dict and len(value) <= MAX_KEYS:  # the usual: a few scalars, in one pass
        out: dict[str, Any] = {}
        size = 1
        for key, item in value.items():
            kind = _LEAF.get(type(item))
            size += 1 + len(key)
            if kind is None or len(key) > MAX_KEY_CHARS or key == CUT or size >= MAX_SHAPE_SIZE:
                break  # nested, cut or too big: the general walk below says what is kept
            out[key] = kind
        else:
            return out
    stack: list[_Object | _List] = [_frame(value, 1, MAX_SHAPE_SIZE)]
    visits = 0
    while True:
        frame = stack[-1]
        if visits == MAX_VISITS:  # enough looked at: every open object and list ends here
            for open_frame in stack:
                open_frame.stop()
            visits += 1
        item = frame.next()
        visits += item is not _DONE
        if item is _DONE:
            kind, size = stack.pop().kind()
            if not stack:
                return kind
            stack[-1].take(kind, size)
        elif not isinstance(item, (dict, list)):
            frame.take(_leaf(item), 1)
        elif frame.depth == MAX_DEPTH:
            frame.take({CUT: f"depth>{MAX_DEPTH}"}, 1)
        else:
            stack.append(_frame(item, frame.depth + 1, frame.room()))


def _frame(value: dict[str, Any] | list[Any], depth: int, budget: int) -> _Object | _List:
    if isinstance(value, dict):
        return _Object(value, depth, budget)
    return _List(value, depth, budget)


def recorded(value: Any) -> Any:
    """A value policy read, as the trail keeps it: itself while it is small and shallow enough,
    else ``{"…": "depth>8"}`` or ``{"…": "size>1024"}``. Looks at no more of the value than the
    bound allows, whatever its size."""
    size, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        size += 1 + (len(node) if isinstance(node, (str, dict, list)) else 0)
        if size > MAX_VALUE_SIZE:
            return {CUT: f"size>{MAX_VALUE_SIZE}"}
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                return {CUT: f"depth>{MAX_DEPTH}"}
            if isinstance(node, dict):
                size += sum(map(len, node))
                node = node.values()
            stack.extend((item, depth + 1) for item in node)
    return value


def is_summary(value: Any) -> bool:
    """A recorded value the trail summarised (or a caller's value that looks like one)."""
    return isinstance(value, dict) and len(value) == 1 and CUT in value


def policy_paths(payload: BundlePayload, server: str, tool: str) -> list[tuple[str, ...]]:
    """The argument paths the conditions of the rules that can apply to a tool read."""
    spec = payload.servers[server].tools.get(tool) if server in payload.servers else None
    if spec is None:
        return []
    paths: list[tuple[str, ...]] = []
    for index in (*spec.allow, *spec.deny):
        for condition in payload.rules[index].conditions:
            if condition.path not in paths:
                paths.append(condition.path)
    return paths


def policy_values(paths: Iterable[tuple[str, ...]], arguments: Any) -> dict[str, Any]:
    """The values policy read, by dotted path (each bounded by :func:`recorded`); a missing one
    is left out."""
    out = {}
    for path in paths:
        value = argument_at(arguments, path)
        if value is not MISSING:
            out[".".join(path)] = recorded(value)
    return out


def arguments_record(payload: BundlePayload, server: str, tool: str,
                     arguments: Any) -> dict[str, Any]:
    """What a record keeps of a call's arguments: their shape, and the values policy read."""
    return {"shape": shape(arguments),
            "values": policy_values(policy_paths(payload, server, tool), arguments)}
