"""The spans of a tracing node (imported only when the ``OTEL_*`` variables turn tracing on).

One SERVER span per MCP request (``/mcp``, ``/servers/<name>/mcp``), named as OpenTelemetry's MCP
conventions name it once the request is understood (``tools/call echo``), with children for
authentication, admission, the audit write and each upstream call (a CLIENT span). Its parent is
the client's W3C trace context: ``params._meta`` first (``traceparent``, ``tracestate``: the MCP
specification's keys, SEP-414; the conventions' rule), else the ``traceparent`` header, linked when
both came and differ. A client's trace context is untrusted input: a malformed or oversized one is
ignored (the span starts a new trace), never an error, and nothing of it is sent on as it came:
upstreams get the node's own span context (its ``traceparent`` and, parsed and re-encoded, the
``tracestate`` it inherited), in the header and in ``params._meta``.

Spans carry no token, subject or argument values: they go to an observability backend, not to the
audit trail. What links the two is the trace id and the request span's id, written into the
request's audit record and into every log line the request writes.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from multidict import CIMultiDictProxy
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gwc.runtime.protocol.errors import RpcError

T = TypeVar("T")
TRACE_KEYS = ("traceparent", "tracestate")  # what the node reads from a client and writes upstream
NAMED = frozenset({"tools/call", "prompts/get"})  # methods whose span name carries their target
MAX_NAME = 64  # characters of a caller's tool or prompt name kept in a span name
SERVICE_NAME = "gwc-runtime"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one
Ids = tuple[str, str]  # (trace id, span id) as 32 and 16 lowercase hex digits

# OpenTelemetry warns about every malformed traceparent or tracestate it is handed; here a caller
# chooses those, so a caller could fill the node's stderr. They are ignored silently instead.
for _noisy in ("opentelemetry.trace.propagation.tracecontext", "opentelemetry.trace.span"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


class Tracing:
    def __init__(self, endpoint: str, node: str) -> None:
        # what OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES say wins over the node's defaults
        configured = OTELResourceDetector().detect().attributes
        ours: dict[str, AttributeValue] = {}
        if "service.name" not in configured:
            ours["service.name"] = SERVICE_NAME
        if "service.instance.id" not in configured:
            ours["service.instance.id"] = node  # the `node` of its audit records
        # the provider reads the sampler (OTEL_TRACES_SAMPLER) and the limits; the batch
        # processor OTEL_BSP_*; the exporter the endpoint, headers, timeout and compression
        self._provider = TracerProvider(resource=Resource.create(ours))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self._provider.get_tracer("gwc.runtime")
        self.endpoint = endpoint  # where the exporter sends spans (for the startup line)
        self._propagator = TraceContextTextMapPropagator()
        _log_ids.install()

    async def close(self) -> None:
        """Export what is left and stop (off the event loop: the exporter is synchronous)."""
        _log_ids.uninstall()
        await asyncio.to_thread(self._provider.shutdown)

    # --- the request span ----------------------------------------------------------------------

    def request_span(self, method: str, path: str, headers: CIMultiDictProxy[str], body: bytes,
                     request_id: str) -> tuple[Span, Token[otel_context.Context]]:
        """Start a request's span, made current until :meth:`end_request` (with the token)."""
        parent, link = self._parent(headers, body)
        route = "/mcp" if path == "/mcp" else "/servers/{server}/mcp"
        span = self.tracer.start_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER,
            links=[Link(link)] if link is not None else None,
            attributes={"http.request.method": method, "http.route": route, "url.path": path,
                        "gwc.request_id": request_id})
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end_request(span: Span, token: Token[otel_context.Context], status: int | None = None,
                    exc: BaseException | None = None) -> None:
        try:
            if exc is not None:
                _failed(span, exc)
            elif status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        finally:
            span.end()
            otel_context.detach(token)

    def _parent(self, headers: CIMultiDictProxy[str], body: bytes
                ) -> tuple[otel_context.Context, SpanContext | None]:
        """The parent context of a request's span, and the header's context to link to when
        ``_meta`` carried another one."""
        meta = self._extract(_meta_carrier(body))
        header = self._extract(_header_carrier(headers))
        chosen = meta if meta is not None else header
        parent = (trace.set_span_in_context(trace.NonRecordingSpan(chosen)) if chosen is not None
                  else otel_context.Context())  # a new trace, whatever is current
        link = header if meta is not None and header is not None and header != meta else None
        return parent, link

    def _extract(self, carrier: dict[str, list[str]] | None) -> SpanContext | None:
        """The valid span context in ``carrier``, or None (a malformed one is not an error)."""
        if not carrier:
            return None
        try:
            found = trace.get_current_span(self._propagator.extract(carrier)).get_span_context()
        except Exception:  # whatever a caller's bytes make of a parser: ignored
            return None
        return found if found.is_valid else None

    def describe(self, method: str, target: object, endpoint: str, request_id: Any,
                 version: str) -> Ids | None:
        """Name the current request span once its JSON-RPC request is understood, and say its
        ids (for the audit record)."""
        span = trace.get_current_span()
        if span.is_recording():
            named = target[:MAX_NAME] if method in NAMED and isinstance(target, str) else None
            span.update_name(f"{method} {named}" if named else method)
            attributes: dict[str, AttributeValue] = {
                "mcp.method.name": method, "mcp.protocol.version": version, "gwc.endpoint": endpoint}
            if request_id is not None:
                attributes["jsonrpc.request.id"] = str(request_id)[:MAX_NAME]
            if named is not None:
                attributes["gen_ai.tool.name" if method == "tools/call"
                           else "gen_ai.prompt.name"] = named
            span.set_attributes(attributes)
        return ids_of(span)

    @staticmethod
    def current_ids() -> Ids | None:
        return ids_of(trace.get_current_span())

    @staticmethod
    def annotate(attributes: Mapping[str, AttributeValue | None]) -> None:
        """Attributes on the current span (those that are None are left out)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    # --- children of the request span ----------------------------------------------------------

    async def child(self, name: str, work: Awaitable[T],
                    describe: Callable[[T], Mapping[str, AttributeValue | None]] | None = None
                    ) -> T:
        """Await ``work`` in a span of its own under the current one (current while it runs)."""
        span = self.tracer.start_span(name)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result = await work
        except BaseException as exc:
            _failed(span, exc)
            raise
        else:
            if describe is not None and span.is_recording():
                span.set_attributes({k: v for k, v in describe(result).items() if v is not None})
            return result
        finally:
            otel_context.detach(token)
            span.end()

    def upstream_span(self, server: str, url: str, method: str, tool: str | None) -> Span:
        """A CLIENT span for one request to an upstream (not made current: what runs while its
        answer is relayed belongs to the request)."""
        target = f" {tool[:MAX_NAME]}" if tool else ""
        host, port = _server_of(url)
        return self.tracer.start_span(f"{method or 'answer'}{target}", kind=SpanKind.CLIENT,
                                      attributes={"gwc.upstream": server, "server.address": host,
                                                  "server.port": port,
                                                  "mcp.method.name": method or "(answer)"})

    def propagate(self, span: Span, headers: dict[str, str], message: dict[str, Any]
                  ) -> dict[str, Any]:
        """Put ``span``'s context in ``headers`` (in place) and in the message's ``params._meta``
        (the message returned: a new one when it changed). A client's own ``traceparent`` and
        ``tracestate`` keys there are replaced, never passed on."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        headers.update(carrier)
        params = message.get("params")
        if "method" not in message or not isinstance(params, dict):
            return message
        meta = params.get("_meta", {})
        if not isinstance(meta, dict):
            return message
        kept = {k: v for k, v in meta.items() if k not in TRACE_KEYS}
        return {**message, "params": {**params, "_meta": {**kept, **carrier}}}

    @staticmethod
    def end_upstream(span: Span, status: int | None, exc: BaseException | None) -> None:
        if exc is not None:
            _failed(span, exc)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500 and exc is None:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        span.end()


@functools.lru_cache(maxsize=1024)
def _server_of(url: str) -> tuple[str, int]:
    """An upstream URL's host and port, for its spans: never the whole URL, whose user info or
    query could hold a credential."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def ids_of(span: Span) -> Ids | None:
    found = span.get_span_context()
    if not found.is_valid:
        return None
    return trace.format_trace_id(found.trace_id), trace.format_span_id(found.span_id)


def _failed(span: Span, exc: BaseException) -> None:
    """The span ended by ``exc``: its stable reason as ``error.type`` (no stack trace)."""
    if isinstance(exc, RpcError):
        reason = str(exc.data["reason"])
    elif isinstance(exc, asyncio.CancelledError):
        reason = "cancelled"
    else:
        reason = type(exc).__qualname__
    span.set_attribute("error.type", reason)
    span.set_status(Status(StatusCode.ERROR, reason))


def _meta_carrier(body: bytes) -> dict[str, list[str]] | None:
    """``traceparent`` and ``tracestate`` from a JSON-RPC request's ``params._meta`` (strings
    only). The body is parsed here only when it holds the word at all."""
    if b"traceparent" not in body:
        return None
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return None
    return {key: [value] for key in TRACE_KEYS if isinstance(value := meta.get(key), str)}


def _header_carrier(headers: CIMultiDictProxy[str]) -> dict[str, list[str]] | None:
    """The ``traceparent`` header (exactly one: W3C Trace Context) and any ``tracestate``."""
    parents = headers.getall("traceparent", [])
    if len(parents) != 1:
        return None
    states = headers.getall("tracestate", [])
    return {"traceparent": parents, **({"tracestate": states} if states else {})}


class _LogIds:
    """Every log record made while a span is current gets ``trace_id`` and ``span_id`` (the JSON
    formatter writes them with the other fields). Installed by the first tracing node of the
    process, removed with the last."""

    def __init__(self) -> None:
        self._users = 0
        self._base: Callable[..., logging.LogRecord] | None = None

    def install(self) -> None:
        self._users += 1
        if self._users == 1:
            self._base = base = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = base(*args, **kwargs)
                found = ids_of(trace.get_current_span())
                if found is not None:
                    record.trace_id, record.span_id = found
                return record
            logging.setLogRecordFactory(factory)

    def uninstall(self) -> None:
        self._users -= 1
        if self._users == 0 and self._base is not None:
            logging.setLogRecordFactory(self._base)
            self._base = None


_log_ids = _LogIds()
