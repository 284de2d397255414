"""A bounded mapping that forgets its least recently used entries, for the caches a call reads on
its way (tokens, credentials, breakers): a dict with its order of use, without cachetools' layers
(a ``get`` there is five Python calls, here one)."""
from __future__ import annotations

from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")
_MISSING: Any = object()


class LRU(dict[K, V]):
    """At most ``maxsize`` entries, in order of use (the least recent first). :meth:`get` and
    storing make an entry the most recently used; storing a new key when full evicts the least
    recently used one. ``in``, ``[]`` and ``del`` are a dict's and change no order."""

    __slots__ = ("maxsize",)

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be positive, got {maxsize!r}")
        super().__init__()
        self.maxsize = maxsize

    def get(self, key: K, default: Any = None) -> Any:
        value = self.pop(key, _MISSING)
        if value is _MISSING:
            return default
        dict.__setitem__(self, key, value)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            dict.__delitem__(self, key)
        elif len(self) >= self.maxsize:
            dict.__delitem__(self, next(iter(self)))
        dict.__setitem__(self, key, value)
