"""A real OTLP/HTTP trace receiver for the tests: an aiohttp server on 127.0.0.1 that decodes what
it is sent (protobuf ``ExportTraceServiceRequest`` on ``POST /v1/traces``, gzip or not, as a
collector would) into plain :class:`ReceivedSpan` objects, and answers as a collector does.
:func:`running_receiver` serves one from a thread of its own (its own event loop), so it outlives
any one test's loop and processes other than the test's can export to it too."""
from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PROTOBUF = "application/x-protobuf"
KINDS = {Span.SPAN_KIND_INTERNAL: "internal", Span.SPAN_KIND_SERVER: "server",
         Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_PRODUCER: "producer",
         Span.SPAN_KIND_CONSUMER: "consumer", Span.SPAN_KIND_UNSPECIFIED: "unspecified"}


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool  # status code ERROR
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id)
    start_ns: int = 0
    end_ns: int = 0


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind is not None else None


def decode(body: bytes) -> list[ReceivedSpan]:
    """Every span of an ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                    KINDS[span.kind], {kv.key: _value(kv.value) for kv in span.attributes},
                    resource, span.status.code == Status.STATUS_CODE_ERROR,
                    [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    span.start_time_unix_nano, span.end_time_unix_nano))
    return spans


class OtlpReceiver:
    """Collects what exporters send; :meth:`app` is the aiohttp application to serve."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.url = ""  # its traces endpoint, once served

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text="protobuf only")
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.spans.extend(decode(body))
        self.requests += 1
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type=PROTOBUF)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """The spans received so far, once ``predicate(spans)`` holds (fails after the timeout)."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.spans):
            if time.monotonic() > deadline:
                names = [(s.name, s.kind, s.trace_id[:8]) for s in self.spans]
                raise AssertionError(f"the receiver did not get the spans awaited; it has {names}")
            await asyncio.sleep(0.02)
        return self.spans


@contextmanager
def running_receiver() -> Iterator[OtlpReceiver]:
    """A receiver listening on 127.0.0.1 (``receiver.url``: its traces endpoint) for the block."""
    receiver = OtlpReceiver()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(receiver.app(), access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, name="otlp-receiver", daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{port}/v1/traces"
    try:
        yield receiver
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
