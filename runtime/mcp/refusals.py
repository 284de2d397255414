"""Refusals of ``tools/call`` that a model can read.

A policy denial, an approval to wait for, a rate limit, arguments that break the tool's pinned
input schema (the specification asks for input validation errors as tool results, SEP-1303) or a
tool whose definition drifted from its pin is not a broken request: it is what the tool call came
to. Several clients reduce a JSON-RPC error to "error executing tool" and show the model nothing
of ``data``; a tool result with ``isError: true`` is what the MCP specification offers for errors
the model should see and act on. So these come back as tool results: one line written for the
model to relay to the user (what happened and what to do next) and the stable reason, ids and
numbers in ``structuredContent``, the same fields the JSON-RPC error's ``data`` had. The audit
record is the refusal's either way.

Protocol errors stay JSON-RPC errors: malformed requests, unknown methods, authentication, an
unknown tool (-32602, as the specification says), and the gateway's own trouble (audit trail or
shared state unavailable, upstream failures).
"""
from __future__ import annotations

from aiohttp import web

from gwc.runtime.mcp.routes import Call
from gwc.runtime.protocol.errors import (
    APPROVAL_REQUIRED,
    ARGUMENTS_INVALID,
    DENIED,
    RATE_LIMITED,
    TOO_MANY_APPROVALS,
    TOOL_CHANGED,
    RpcError,
)
from gwc.runtime.protocol.wire import result_response

# what the model should do next, by refusal
NEXT_STEP = {
    DENIED: "The gateway's policy does not allow this call; tell the user. Calling again with "
            "the same arguments will be refused again.",
    APPROVAL_REQUIRED: "Tell the user that a person must approve it first.",
    RATE_LIMITED: "Wait as long as it says before calling this tool again.",
    TOO_MANY_APPROVALS: "Tell the user: approvals they asked for must be decided or expire "
                        "before they can ask for another.",
    ARGUMENTS_INVALID: "Correct the arguments to fit the tool's input schema and call again.",
    TOOL_CHANGED: "Tell the user: the tool's owners must review the change before it can be "
                  "used again.",
}


def readable(call: Call, error: RpcError) -> web.Response | None:
    """The tool result that carries ``error`` to the model, or None when ``error`` is one to
    answer as a JSON-RPC error."""
    next_step = NEXT_STEP.get(error.code) if call.method == "tools/call" else None
    if next_step is None:
        return None
    result = {"content": [{"type": "text", "text": f"{error.message}. {next_step}"}],
              "structuredContent": {**error.data, "message": error.message}, "isError": True}
    if call.session is None:  # 2026-07-28: the result is complete, nothing more to ask for
        result["resultType"] = "complete"
    return result_response(call.id, result, error.headers)
