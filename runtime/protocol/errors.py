"""JSON-RPC errors the gateway itself answers with: stable codes and ``data.reason`` values.

Standard codes for standard failures (parse error, invalid request, unknown method); gateway
decisions use the -32000..-32099 range. Clients can rely on ``data.reason``; the message is for
humans. Never a stack trace.
"""
from __future__ import annotations

import json
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
UPSTREAM_TIMEOUT = -32001
NOT_FOUND = -32002  # the MCP code for an unknown resource; used for every "does not exist"
DENIED = -32003
UPSTREAM_UNAVAILABLE = -32004
UNAUTHENTICATED = -32005
SESSION_INVALID = -32006  # unknown, forged, expired or someone else's session id
FORBIDDEN_ORIGIN = -32007  # a browser request from an Origin gateway.yaml does not allow
HEADER_MISMATCH = -32020  # MCP 2026-07-28: Mcp-Method / Mcp-Name disagree with the body
UNSUPPORTED_VERSION = -32022
APPROVAL_REQUIRED = -32030
RATE_LIMITED = -32029  # data.retry_after_s says when to try again
AUDIT_UNAVAILABLE = -32031  # the audit record cannot be written (audit failure mode: closed)
STATE_UNAVAILABLE = -32032  # approvals need the shared state backend, and it is unreachable
TOO_MANY_APPROVALS = -32033  # the caller's approvals waiting for a decision are at their cap
TOOL_CHANGED = -32034  # a pinned tool's live definition is not the reviewed one (drift: refuse)
# arguments that break a pinned input schema: reason invalid_params, like a malformed request's,
# but its own code, since it is answered to the model as a tool result (mcp/refusals.py)
ARGUMENTS_INVALID = -32035

REASONS = {
    PARSE_ERROR: "parse_error", INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found", UPSTREAM_TIMEOUT: "upstream_timeout",
    NOT_FOUND: "not_found", DENIED: "denied", UPSTREAM_UNAVAILABLE: "upstream_unavailable",
    UNAUTHENTICATED: "unauthenticated", HEADER_MISMATCH: "header_mismatch",
    APPROVAL_REQUIRED: "approval_required", INVALID_PARAMS: "invalid_params",
    UNSUPPORTED_VERSION: "unsupported_protocol_version", SESSION_INVALID: "session_invalid",
    RATE_LIMITED: "rate_limited", AUDIT_UNAVAILABLE: "audit_unavailable",
    TOO_MANY_APPROVALS: "too_many_approvals",
    STATE_UNAVAILABLE: "state_unavailable", FORBIDDEN_ORIGIN: "origin_not_allowed",
    TOOL_CHANGED: "tool_changed", ARGUMENTS_INVALID: "invalid_params",
}


class RpcError(Exception):
    """An error answered to the client as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, http_status: int = 200, *,
                 headers: dict[str, str] | None = None, **data: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.http_status = code, message, http_status
        self.headers = headers  # HTTP headers the answer needs (WWW-Authenticate on a 401)
        self.data = {"reason": REASONS[code], **data}

    def body(self, request_id: Any) -> bytes:
        return json.dumps({"jsonrpc": "2.0", "id": request_id,
                           "error": {"code": self.code, "message": self.message,
                                     "data": self.data}}).encode()
