"""The client-facing MCP wire rules of Streamable HTTP, shared by both endpoints: which protocol
version a request speaks, the 2026-07-28 routing headers checked against the body, validation
against the SDK's types, and the JSON answers the gateway gives itself."""
from __future__ import annotations

import base64
import binascii
import json
from itertools import chain, compress
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from mcp_types import methods as mcp_methods
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
)
from pydantic import ValidationError

from gwc.runtime.protocol.errors import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNSUPPORTED_VERSION,
    RpcError,
)

# The methods that name what they are about (a tool, prompt or resource), and the param naming it:
# checked against Mcp-Name, and the ``tool`` of their audit records.
NAMED_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# What each list method lists, under the result field that holds the items.
ListKind = Literal["tools", "resources", "resourceTemplates", "prompts"]
LIST_METHODS: dict[str, ListKind] = {"tools/list": "tools", "resources/list": "resources",
                                     "resources/templates/list": "resourceTemplates",
                                     "prompts/list": "prompts"}
VERSION_HEADER = "MCP-Protocol-Version"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
STATELESS_ERA = "2026-07-28"
# The deepest nesting of objects and arrays a request may have (the message object is level 1).
# Real tool arguments are a few levels deep; deeper ones are refused before anything is judged,
# recorded or forwarded, so no later step (policy, the audit record, an upstream) meets them.
MAX_DEPTH = 64
INT64_RANGE = (-(1 << 63), (1 << 64) - 1)  # integers kept exact: signed or unsigned 64-bit
BIG_FLOAT = float(1 << 63)  # from here on a float may stand for an integer orjson could not keep
# A number orjson may have read as a float of BIG_FLOAT or more is spelled with 19 digits in a row
# or with an exponent; a body with neither (and few brackets) needs no walk at all. Looked for in
# the body's shape (digits as 0, e and E as e, all else blank): two substring searches, where a
# regular expression costs microseconds.
_NUMBER_SHAPE = bytes(ord("0") if chr(c).isdigit() and c < 128 else ord("e") if chr(c) in "eE"
                      else ord(" ") for c in range(256))
_LONG_DIGITS, _EXPONENT = b"0" * 19, b"0e"
_is_container = frozenset((dict, list)).__contains__
_is_float = frozenset((float,)).__contains__
_is_dict = frozenset((dict,)).__contains__
_is_list = frozenset((list,)).__contains__


def parse_message(body: bytes) -> dict[str, Any]:
    """One JSON-RPC 2.0 message object (batches were removed from MCP in 2025-06-18)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RpcError(PARSE_ERROR, "request body is not valid JSON", 400) from None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "expected one JSON-RPC 2.0 message object", 400)
    if isinstance(message.get("id"), (dict, list, bool)):
        raise RpcError(INVALID_REQUEST, "id must be a string or a number", 400)
    return message


def check_limits(message: dict[str, Any], body: bytes) -> None:
    """Refuse a message nested deeper than :data:`MAX_DEPTH`, or holding an integer beyond 64
    bits. orjson reads such an integer as the nearest float, so policy and the approval digest
    would judge another number than the exact one forwarded upstream.

    Level by level, every step a C-level iteration (no Python code runs per value): linear in
    the message's size, never recursive. Most bodies skip the walk: one with no more brackets than
    MAX_DEPTH cannot nest deeper, and one without a long digit run or an exponent holds no big
    number (brackets and digits inside strings only make the test more careful)."""
    if body.count(b"{") + body.count(b"[") <= MAX_DEPTH:
        shape = body.translate(_NUMBER_SHAPE)
        if _LONG_DIGITS not in shape and _EXPONENT not in shape:
            return
    level: list[Any] = [message]
    depth, suspicious = 0, False
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise RpcError(INVALID_PARAMS, f"the request is nested deeper than {MAX_DEPTH} "
                           "levels", 400)
        values = [*chain.from_iterable(map(dict.values, compress(level, map(_is_dict, map(
            type, level))))), *chain.from_iterable(compress(level, map(_is_list, map(type, level))))]
        kinds = set(map(type, values))
        if float in kinds and max(map(abs, compress(values, map(_is_float, map(type, values))))
                                  ) >= BIG_FLOAT:
            suspicious = True
        level = (list(compress(values, map(_is_container, map(type, values))))
                 if dict in kinds or list in kinds else [])
    if suspicious:  # rare: a float that big may be an integer orjson could not keep exact
        json.loads(body, parse_int=_int64)


def _int64(text: str) -> int:
    value = int(text)
    if not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        raise RpcError(INVALID_PARAMS, f"integer {text[:24]}{'…' if len(text) > 24 else ''} is "
                       "beyond 64 bits: send it as a string", 400)
    return value


def stateless_version(request: web.Request, params: dict[str, Any]) -> str | None:
    """The version a 2026-07-28-style request names in ``_meta``; None for 2025-era requests,
    including ones that name a 2025-era version there (they still need their session). A
    MCP-Protocol-Version header must agree with it."""
    meta = params.get("_meta")
    if (not isinstance(meta, dict) or not isinstance(meta.get(META_VERSION), str)
            or meta[META_VERSION] in HANDSHAKE_PROTOCOL_VERSIONS):
        return None
    header = request.headers.get(VERSION_HEADER)
    if header is not None and header != meta[META_VERSION]:
        raise RpcError(HEADER_MISMATCH, f"MCP-Protocol-Version {header!r} does not match the "
                                        f"body's {meta[META_VERSION]!r}", 400)
    return meta[META_VERSION]


def check_session_version(request: web.Request, version: str) -> None:
    """A 2025-era request in a session: a MCP-Protocol-Version header, when sent, must be a known
    version of that era. The specification asks a client to send the negotiated one, and a
    server to refuse only versions it does not support, so another 2025-era version is let
    through (the session's version still governs); a stateless-era version in a session is not."""
    header = request.headers.get(VERSION_HEADER)
    if header is None:
        return
    if header not in SUPPORTED_PROTOCOL_VERSIONS:
        raise RpcError(UNSUPPORTED_VERSION, f"unsupported protocol version {header!r}", 400,
                       requested=header)
    if header != version and header not in HANDSHAKE_PROTOCOL_VERSIONS:
        raise RpcError(HEADER_MISMATCH, f"MCP-Protocol-Version {header!r} is not the session's "
                                    f"{version!r}", 400)


def negotiate(params: dict[str, Any]) -> str:
    """The version an ``initialize`` gets: the one asked for when known, else the latest."""
    requested = params.get("protocolVersion")
    return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


def validate(method: str, params: dict[str, Any], version: str, notification: bool) -> None:
    """Check the message against the SDK's types for its protocol version. Only checked: the
    original bytes are what gets forwarded, so fields this version does not know survive."""
    check = (mcp_methods.validate_client_notification if notification
             else mcp_methods.validate_client_request)
    try:
        check(method, version, params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RpcError(INVALID_PARAMS, f"invalid params for {method}: {where}: {first['msg']}",
                       400) from None
    except KeyError:
        raise RpcError(METHOD_NOT_FOUND, f"method '{method}' does not exist in protocol version "
                                         f"{version}", 404) from None
    except ValueError:
        raise RpcError(UNSUPPORTED_VERSION, f"unsupported protocol version {version!r}", 400,
                       requested=version) from None


def decode_header_value(value: str) -> str:
    """Mcp-Name values that are not plain ASCII travel as ``=?base64?<b64>?=``."""
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RpcError(HEADER_MISMATCH, "Mcp-Name is not valid base64", 400) from None
    return value


def check_routing_headers(request: web.Request, method: str, params: dict[str, Any],
                           version: str) -> None:
    """Mcp-Method (always) and Mcp-Name (named methods) must match the body; 2026-07-28 requires
    them, older versions are checked only when they send them."""
    stateless = version == STATELESS_ERA
    header_method = request.headers.get("Mcp-Method")
    if header_method is None:
        if stateless:
            raise RpcError(HEADER_MISMATCH, "Mcp-Method header is required", 400)
        return
    if header_method != method:
        raise RpcError(HEADER_MISMATCH, f"Mcp-Method {header_method!r} does not match the body's "
                                        f"method {method!r}", 400)
    field = NAMED_PARAM.get(method)
    if field is None:
        return
    header_name = request.headers.get("Mcp-Name")
    if header_name is None:
        if stateless:
            raise RpcError(HEADER_MISMATCH, "Mcp-Name header is required", 400)
        return
    if decode_header_value(header_name) != params.get(field):
        raise RpcError(HEADER_MISMATCH, f"Mcp-Name does not match the body's {field}", 400)


def encode_header_value(value: str) -> str:
    """The header form of a name: as is when plain printable ASCII, else ``=?base64?...?=``."""
    if value.isascii() and value.isprintable() and not value.startswith("=?"):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def origin_of(url: str) -> str:
    """The origin a browser sends for pages at ``url`` (RFC 6454): scheme, host and a port
    other than the scheme's default, lowercase, no path."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json",
                        headers=headers)


def error_response(error: RpcError, request_id: Any = None) -> web.Response:
    return json_response(error.body(request_id), error.http_status, error.headers)


def result_response(request_id: Any, result: dict[str, Any],
                    headers: dict[str, str] | None = None) -> web.Response:
    return json_response(orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}),
                         headers=headers)


