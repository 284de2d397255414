"""The request shape check (``wire.check_limits``): nesting deeper than MAX_DEPTH and integers
beyond 64 bits are refused, whether the body takes the quick look or the full walk."""
from __future__ import annotations

import orjson
import pytest

from gwc.runtime.protocol.errors import RpcError
from gwc.runtime.protocol.wire import MAX_DEPTH, check_limits


def nested(depth: int, walked: bool = False) -> bytes:
    """A message of ``depth`` nested objects (the message itself is the first); ``walked``: with
    a long digit run in a string, so the check cannot take its quick look."""
    inner = b'"1234567890123456789012"' if walked else b"1"
    return b'{"a":' * depth + inner + b"}" * depth


def check(body: bytes) -> str:
    try:
        check_limits(orjson.loads(body), body)
    except RpcError as exc:
        return exc.message
    return "ok"


@pytest.mark.parametrize("body", [
    nested(MAX_DEPTH), nested(MAX_DEPTH, walked=True),
    b'{"a":9223372036854775807,"b":-9223372036854775808,"c":18446744073709551615}',
    b'{"a":1e300,"b":1.5,"c":"12345678901234567890123 in a string"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","arguments":{}}}',
])
def test_what_fits_passes(body: bytes) -> None:
    assert check(body) == "ok"


@pytest.mark.parametrize("body", [
    nested(MAX_DEPTH + 1), nested(MAX_DEPTH + 1, walked=True),
    b'{"a":[' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"]}",
    b'{"a":18446744073709551616}',
    b'{"a":{"b":[1,2,-9223372036854775809]}}',
])
def test_what_does_not_fit_is_refused(body: bytes) -> None:
    assert "nested deeper" in check(body) or "beyond 64 bits" in check(body)
