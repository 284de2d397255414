"""The bounded caches a call reads on its way (runtime/lru.py)."""
from __future__ import annotations

import pytest

from gwc.runtime.lru import LRU


def test_the_least_recently_used_entry_goes_first_and_a_get_is_a_use() -> None:
    cache: LRU[str, int] = LRU(2)
    cache["a"], cache["b"] = 1, 2
    assert cache.get("a") == 1  # "a" is now the most recent
    cache["c"] = 3
    assert dict(cache) == {"a": 1, "c": 3}
    cache["a"] = 4  # storing an existing key is a use, not a new entry
    cache["d"] = 5
    assert dict(cache) == {"a": 4, "d": 5}
    assert cache.get("gone") is None and cache.get("gone", 0) == 0 and len(cache) == 2


def test_in_and_del_change_no_order() -> None:
    cache: LRU[str, int] = LRU(2)
    cache["a"], cache["b"] = 1, 2
    assert "a" in cache
    cache["c"] = 3  # "a" is still the least recent
    assert list(cache) == ["b", "c"]
    del cache["b"]
    cache["d"], cache["e"] = 4, 5
    assert list(cache) == ["d", "e"]
    with pytest.raises(ValueError):
        LRU(0)
