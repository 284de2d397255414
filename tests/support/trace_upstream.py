"""A real upstream MCP server (the SDK's) for the tracing tests:
`python tests/support/trace_upstream.py PORT`.

Tool ``trace_context`` answers (as JSON text) what this upstream received of W3C trace
context: the ``traceparent``/``tracestate`` headers and the same keys of the request's
``params._meta``. With ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set, the SDK's own server spans (it
makes one per request, parented from ``_meta``) are exported there over OTLP/HTTP, so a test sees
one trace run from its client through the gateway into this server.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context

KEYS = ("traceparent", "tracestate", "baggage")
server = MCPServer("trace-upstream", version="1.0.0")


@server.tool()
def trace_context(ctx: Context) -> str:
    """The trace context this request came with, in its headers and in its _meta."""
    headers = ctx.headers or {}
    meta: Any = ctx.request_context.meta
    if meta is not None and not isinstance(meta, Mapping):
        meta = meta.model_dump(by_alias=True)
    return json.dumps({"headers": {k: headers.get(k) for k in KEYS},
                       "meta": {k: (meta or {}).get(k) for k in KEYS}})


def export_spans() -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "trace-upstream"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


if __name__ == "__main__":
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        export_spans()
    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
