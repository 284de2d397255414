"""Canonical JSON: the one byte form that is hashed and signed.

Sorted keys, no insignificant white space, UTF-8 without escaping. Bundles carry no floats that need
RFC 8785 number formatting beyond Python's shortest round-trip repr, so this is stable across runs.
"""
from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` deterministically (same value, same bytes)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
