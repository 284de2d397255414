"""End to end: OpenTelemetry tracing of a node, exported over OTLP/HTTP to a real receiver on
127.0.0.1 that decodes the protobuf it gets (tests/support/otlp_receiver.py).

Real mcp.Client (both eras) inside a trace of the test's own, the gateway on a real socket, and the
SDK's MCPServer upstream in a subprocess (tests/support/trace_upstream.py), which says what trace
context it received and exports its own spans to the same receiver: one trace from the client
through the gateway into the upstream. Nothing is mocked.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from click.testing import CliRunner
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.cli import main as gwc_main
from gwc.runtime.audit.writer import trail
from gwc.runtime.logs import JsonFormatter
from gwc.runtime.telemetry import DEFAULT_ENDPOINT, TracingError, TracingSettings, settings_from
from tests.support.e2e import (
    MODES,
    Node,
    connect,
    free_port,
    raw,
    start_node,
    text_of,
    wait_port,
    write_test_registry,
)
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver
from tests.support.repo import REPO

TRACE_UPSTREAM = Path(__file__).parent.parent / "support" / "trace_upstream.py"
CLIENT_TRACE, CLIENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
VERSION = "2026-07-28"


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def trace_upstream(receiver: OtlpReceiver) -> Iterator[str]:
    """The SDK upstream, exporting its own spans to the receiver."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.Popen([sys.executable, str(TRACE_UPSTREAM), str(port)],
                            env={**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, "the trace upstream")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


async def node_for(tmp_path: Path, aiohttp_server: Any, signing_key: Any, upstream: str,
                   tracing: TracingSettings | None) -> Node:
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, upstream,
                                                                   ("trace_context",)),
                            tracing=tracing, node_id=f"node-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def traced(tmp_path, aiohttp_server, signing_key, trace_upstream, receiver,
                 monkeypatch) -> Node:
    """A node that traces: as an operator turns it on, with the OTEL_* variables."""
    no_otel(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    return await node_for(tmp_path, aiohttp_server, signing_key, trace_upstream,
                          settings_from(os.environ))


@pytest.fixture
async def untraced(tmp_path, aiohttp_server, signing_key, trace_upstream, monkeypatch) -> Node:
    no_otel(monkeypatch)
    return await node_for(tmp_path, aiohttp_server, signing_key, trace_upstream,
                          settings_from(os.environ))


# --- helpers ----------------------------------------------------------------------------------

def in_client_trace() -> Any:
    """The test's own trace, current: the SDK client puts it in every request's _meta."""
    return trace.use_span(NonRecordingSpan(SpanContext(
        int(CLIENT_TRACE, 16), int(CLIENT_SPAN, 16), is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED))))


def records(node: Node, **match: Any) -> list[dict]:
    """The node's audit records with these fields."""
    every = (orjson.loads(line) for path in trail(node.audit_path)
             for line in path.read_bytes().splitlines())
    return [record for record in every if all(record.get(k) == v for k, v in match.items())]


def ours(node: Node, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.resource.get("service.instance.id") == node.gateway.auditor.node]


def one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.name, s.kind, s.parent_span_id) for s in spans])
    return found[0]


def stateless_call(name: str, meta: dict | None = None) -> tuple[dict, dict]:
    """A raw 2026-07-28 tools/call of ``name`` and its headers."""
    return ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": name, "arguments": {}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": VERSION,
            "io.modelcontextprotocol/clientCapabilities": {}, **(meta or {})}}},
        {"MCP-Protocol-Version": VERSION, "Mcp-Method": "tools/call", "Mcp-Name": name})


def tool_result(response: Any) -> dict:
    """What trace_context answered, from a raw tools/call answer (JSON or an SSE stream)."""
    assert response.status_code == 200, response.text
    if response.headers["Content-Type"].startswith("text/event-stream"):
        messages = [json.loads(line[5:]) for line in response.text.splitlines()
                    if line.startswith("data:")]
    else:
        messages = [response.json()]
    [answer] = [m for m in messages if "result" in m]
    return json.loads(answer["result"]["content"][0]["text"])


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


# --- one trace from client to upstream --------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aggregate", [False, True], ids=["server", "aggregate"])
async def test_a_call_is_one_trace_from_the_client_through_the_node_to_the_upstream(
        traced: Node, receiver: OtlpReceiver, mode: str, aggregate: bool) -> None:
    token = traced.idp.token("alice", ["eng"])
    url, tool = ((traced.url + "/mcp", "tools__trace_context") if aggregate
                 else (traced.endpoint(), "trace_context"))
    with in_client_trace():
        async with connect(url, token, mode) as client:
            seen = json.loads(text_of(await client.call_tool(tool, {})))

    name = f"tools/call {tool}"
    await receiver.wait_for(lambda spans: any(
        s.name == "tools/call trace_context" and s.kind == "server"
        and s.resource.get("service.name") == "trace-upstream" and s.trace_id == CLIENT_TRACE
        for s in spans) and any(  # the request's span ends after its children
            s.name == name and s.kind == "server" and s.trace_id == CLIENT_TRACE
            for s in ours(traced, spans)))
    mine = ours(traced, receiver.trace(CLIENT_TRACE))
    request = one(mine, name=name, kind="server")
    assert request.parent_span_id == CLIENT_SPAN  # the client's span, from _meta
    assert request.attributes["mcp.method.name"] == "tools/call"
    assert request.attributes["gen_ai.tool.name"] == tool
    assert request.attributes["gwc.decision"] == "allow"
    assert request.attributes["http.response.status_code"] == 200
    assert request.resource["service.name"] == "gwc-runtime"
    children = {s.name: s for s in mine if s.parent_span_id == request.span_id}
    assert {"gwc.authenticate", "gwc.admission", "gwc.audit.write",
            "tools/call trace_context"} <= set(children)
    assert children["gwc.admission"].attributes["gwc.decision"] == "allow"
    upstream_call = children["tools/call trace_context"]
    assert upstream_call.kind == "client" and not upstream_call.error
    assert (upstream_call.attributes["gwc.upstream"], upstream_call.attributes["server.address"],
            upstream_call.attributes["server.port"]) == (
        "tools", "127.0.0.1", int(traced.gateway.store.active.payload.servers["tools"]
                                  .upstream.rsplit(":", 1)[1].split("/")[0]))
    assert "url.full" not in upstream_call.attributes  # a URL may hold a credential

    # the upstream got the node's own span context, in the header and in _meta, never the client's
    sent = traceparent(CLIENT_TRACE, upstream_call.span_id)
    assert seen["headers"]["traceparent"] == sent and seen["meta"]["traceparent"] == sent
    # ...and its own server span (the SDK's, exported by the upstream) is a child of that call
    theirs = [s for s in receiver.trace(CLIENT_TRACE) if s.resource["service.name"] == "trace-upstream"
              and s.name == "tools/call trace_context"]
    assert upstream_call.span_id in {s.parent_span_id for s in theirs}

    # a security reviewer goes from the audit record to the trace
    [record] = records(traced, method="tools/call", tool="trace_context")
    assert (record["trace_id"], record["span_id"]) == (CLIENT_TRACE, request.span_id)


async def test_the_traceparent_header_is_the_parent_when_meta_has_none(
        traced: Node, receiver: OtlpReceiver) -> None:
    token = traced.idp.token("alice", ["eng"])
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    body, headers = stateless_call("trace_context")
    response = await raw(traced, "/servers/tools/mcp", body, token, {
        **headers, "traceparent": traceparent(trace_id, span_id), "tracestate": "vendor=abc"})
    seen = tool_result(response)
    spans = await receiver.wait_for(lambda spans: len(ours(traced, [
        s for s in spans if s.trace_id == trace_id])) >= 5)
    mine = ours(traced, [s for s in spans if s.trace_id == trace_id])
    request = one(mine, kind="server")
    assert request.parent_span_id == span_id and request.links == []
    assert request.attributes["gwc.request_id"] == response.headers["X-Request-Id"]
    upstream_call = one(mine, kind="client")
    # tracestate, parsed and re-encoded, goes on with the node's context
    assert seen["headers"] == {"traceparent": traceparent(trace_id, upstream_call.span_id),
                               "tracestate": "vendor=abc", "baggage": None}
    assert seen["meta"]["traceparent"] == seen["headers"]["traceparent"]
    [record] = records(traced, request_id=response.headers["X-Request-Id"])
    assert (record["trace_id"], record["span_id"]) == (trace_id, request.span_id)


async def test_meta_wins_over_the_header_which_is_linked(traced: Node, receiver: OtlpReceiver
                                                         ) -> None:
    token = traced.idp.token("alice", ["eng"])
    meta_trace, meta_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    header_trace, header_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    body, headers = stateless_call("trace_context", {
        "traceparent": traceparent(meta_trace, meta_span), "baggage": "k=v"})
    response = await raw(traced, "/servers/tools/mcp", body, token, {
        **headers, "traceparent": traceparent(header_trace, header_span)})
    seen = tool_result(response)
    spans = await receiver.wait_for(lambda spans: any(
        s.trace_id == meta_trace and s.kind == "server" for s in ours(traced, spans)))
    request = one(ours(traced, spans), trace_id=meta_trace, kind="server")
    assert request.parent_span_id == meta_span
    assert request.links == [(header_trace, header_span)]
    assert not [s for s in ours(traced, spans) if s.trace_id == header_trace]
    assert seen["meta"]["traceparent"].startswith(f"00-{meta_trace}-")
    assert meta_span not in json.dumps(seen) and header_trace not in json.dumps(seen)
    assert seen["meta"]["baggage"] == "k=v"  # not trace context: the message's, as it came


# --- a client's trace context is untrusted input ----------------------------------------------

GOOD_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
BAD_TRACEPARENTS = {
    "garbage": "not-a-traceparent",
    "uppercase": f"00-{GOOD_ID.upper()}-00F067AA0BA902B7-01",
    "zero trace id": f"00-{'0' * 32}-00f067aa0ba902b7-01",
    "zero span id": f"00-{GOOD_ID}-{'0' * 16}-01",
    "version ff": f"ff-{GOOD_ID}-00f067aa0ba902b7-01",
    "version 00 with more": f"00-{GOOD_ID}-00f067aa0ba902b7-01-extra",
    "short span id": f"00-{GOOD_ID}-00f067aa0ba902-01",
    "too long": f"01-{GOOD_ID}-00f067aa0ba902b7-01-" + "a" * 600,
    "control characters": f"00-{GOOD_ID}-00f067aa0ba902b7-01\x00\x01",
}


@pytest.mark.parametrize("where, value", [
    pytest.param(where, value, id=f"{name}-{where}") for name, value in BAD_TRACEPARENTS.items()
    for where in ("header", "meta") if where == "meta" or value.isprintable()])  # HTTP: printable
async def test_a_malformed_traceparent_is_ignored(traced: Node, receiver: OtlpReceiver,
                                                  where: str, value: str) -> None:
    await _ignored(traced, receiver, {"traceparent": value} if where == "meta" else {},
                   {"traceparent": value} if where == "header" else {})


@pytest.mark.parametrize("meta", [
    {"traceparent": 42}, {"traceparent": ["00-" + GOOD_ID + "-00f067aa0ba902b7-01"]},
    {"traceparent": {"a": 1}}, {"traceparent": None},
    {"traceparent": f"00-{GOOD_ID}-00f067aa0ba902b7-01", "tracestate": 7},
], ids=["number", "list", "object", "null", "tracestate-number"])
async def test_a_trace_context_that_is_no_string_is_ignored(traced: Node, receiver: OtlpReceiver,
                                                            meta: dict) -> None:
    # a string traceparent with a tracestate that is none is still a parent: only the bad key goes
    expect_parent = isinstance(meta["traceparent"], str)
    await _ignored(traced, receiver, meta, {}, parented=expect_parent)


async def test_two_traceparent_headers_are_ignored(traced: Node, receiver: OtlpReceiver) -> None:
    body, headers = stateless_call("trace_context")
    token = traced.idp.token("alice", ["eng"])
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(
            traced.url + "/servers/tools/mcp", content=json.dumps(body).encode(),
            headers=[*{"Content-Type": "application/json", "Authorization": f"Bearer {token}",
                       "Accept": "application/json, text/event-stream", **headers}.items(),
                     ("traceparent", traceparent(GOOD_ID, "00f067aa0ba902b7")),
                     ("traceparent", traceparent(GOOD_ID, "00f067aa0ba902b8"))])
    await _check_root(traced, receiver, response)


async def _ignored(node: Node, receiver: OtlpReceiver, meta: dict, header: dict,
                   parented: bool = False) -> None:
    body, headers = stateless_call("trace_context", meta)
    token = node.idp.token("alice", ["eng"])
    response = await raw(node, "/servers/tools/mcp", body, token, {**headers, **header})
    await _check_root(node, receiver, response, parented)


async def _check_root(node: Node, receiver: OtlpReceiver, response: Any,
                      parented: bool = False) -> None:
    """The call went through as any other (never an error), its span started a trace of its own,
    and the upstream got the node's context, not the client's bytes."""
    seen = tool_result(response)
    request_id = response.headers["X-Request-Id"]
    spans = await receiver.wait_for(lambda spans: any(
        s.attributes.get("gwc.request_id") == request_id for s in spans))
    request = next(s for s in spans if s.attributes.get("gwc.request_id") == request_id)
    if parented:
        assert (request.trace_id, request.parent_span_id) == (GOOD_ID, "00f067aa0ba902b7")
    else:
        assert request.parent_span_id == "" and request.trace_id != GOOD_ID
    spans = await receiver.wait_for(lambda spans: any(
        s.kind == "client" and s.parent_span_id == request.span_id for s in spans))
    upstream_call = one(spans, kind="client", parent_span_id=request.span_id)
    # (a new trace's flags also say its id is random: 03, W3C Trace Context level 2)
    assert seen["headers"]["traceparent"][:-2] == f"00-{request.trace_id}-{upstream_call.span_id}-"
    assert seen["meta"]["traceparent"] == seen["headers"]["traceparent"]
    assert seen["headers"]["tracestate"] is None and seen["meta"]["tracestate"] is None


# --- logs, the audit tools, and off ------------------------------------------------------------

class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_lines() -> Iterator[Lines]:
    lines, logger = Lines(), logging.getLogger("gwc.mcp")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


async def test_a_request_s_log_lines_carry_its_trace_and_span_ids(
        traced: Node, receiver: OtlpReceiver, log_lines: Lines) -> None:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    body, headers = stateless_call("trace_context")
    response = await raw(traced, "/servers/tools/mcp", body, "not-a-token",
                         {**headers, "traceparent": traceparent(trace_id, span_id)})
    assert response.status_code == 401
    [line] = [r for r in log_lines.records
              if getattr(r, "request_id", None) == response.headers["X-Request-Id"]]
    spans = await receiver.wait_for(lambda spans: any(
        s.trace_id == trace_id and s.kind == "server" for s in spans))
    request = one(ours(traced, spans), trace_id=trace_id, kind="server")
    assert request.attributes["http.response.status_code"] == 401
    auth = one(ours(traced, spans), trace_id=trace_id, name="gwc.authenticate")
    assert auth.error and auth.attributes["error.type"] == "unauthenticated"
    written = json.loads(JsonFormatter().format(line))
    assert (written["msg"], written["trace_id"], written["span_id"]) == (
        "refused", trace_id, request.span_id)


async def test_the_audit_tools_read_a_tracing_node_s_trail(traced: Node, signing_key) -> None:
    token = traced.idp.token("alice", ["eng"])
    async with connect(traced.endpoint(), token, "auto") as client:
        await client.call_tool("trace_context", {})
        await client.call_tool("write_thing", {"target": "t", "env": "production"})  # denied
    files = [str(p) for p in trail(traced.audit_path)]
    runner = CliRunner()
    verified = runner.invoke(gwc_main, ["audit", "verify", *files])
    assert verified.exit_code == 0, verified.output
    queried = runner.invoke(gwc_main, ["audit", "query", *files, "--format", "json"])
    assert queried.exit_code == 0, queried.output
    found = [json.loads(line) for line in queried.output.splitlines() if line.startswith("{")]
    calls = [r for r in found if r.get("method") == "tools/call"]
    assert len(calls) == 2 and all(len(r["trace_id"]) == 32 and len(r["span_id"]) == 16
                                   for r in calls)
    replayed = runner.invoke(gwc_main, ["audit", "replay", *files, "--bundles",
                                        str(traced.store_dir), "--trust", str(signing_key[1])])
    assert replayed.exit_code == 0, replayed.output
    assert "0 different" in replayed.output


async def test_a_node_without_otel_variables_does_not_trace(
        untraced: Node, receiver: OtlpReceiver) -> None:
    """No span from the node, no trace fields in its records, nothing added upstream: the client's
    _meta trace context travels in the message as it came (the node is not in the trace)."""
    assert untraced.gateway.tracing is None
    token = untraced.idp.token("alice", ["eng"])
    with in_client_trace():
        async with connect(untraced.endpoint(), token, "auto") as client:
            seen = json.loads(text_of(await client.call_tool("trace_context", {})))
    assert seen["headers"]["traceparent"] is None
    assert seen["meta"]["traceparent"] == traceparent(CLIENT_TRACE, CLIENT_SPAN)
    # the upstream's own span arrives (the receiver works), and none of the node's
    await receiver.wait_for(lambda spans: any(
        s.resource.get("service.name") == "trace-upstream" and s.parent_span_id == CLIENT_SPAN
        for s in spans))
    assert ours(untraced, receiver.spans) == []
    [record] = records(untraced, method="tools/call")
    assert "trace_id" not in record and "span_id" not in record
    verified = CliRunner().invoke(gwc_main, ["audit", "verify",
                                             *map(str, trail(untraced.audit_path))])
    assert verified.exit_code == 0, verified.output


async def test_a_collector_that_is_down_loses_spans_not_requests(
        tmp_path, aiohttp_server, signing_key, trace_upstream, monkeypatch) -> None:
    no_otel(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                       f"http://127.0.0.1:{free_port()}/v1/traces")  # nothing listens there
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    lines, exporter = Lines(), logging.getLogger("opentelemetry.exporter")
    exporter.addHandler(lines)
    try:
        node = await node_for(tmp_path, aiohttp_server, signing_key, trace_upstream,
                              settings_from(os.environ))
        async with connect(node.endpoint(), node.idp.token("alice", ["eng"]), "auto") as client:
            for _ in range(3):
                seen = json.loads(text_of(await client.call_tool("trace_context", {})))
                assert seen["headers"]["traceparent"] is not None
        assert all(len(r["trace_id"]) == 32 for r in records(node, method="tools/call"))
        for _ in range(500):  # the exporter gives up after its 1 s timeout
            if any("Failed to export" in r.getMessage() for r in lines.records):
                break
            await asyncio.sleep(0.02)
        assert [r.levelname for r in lines.records if "Failed to export" in r.getMessage()][:1] == [
            "ERROR"]
    finally:
        exporter.removeHandler(lines)


# --- which OTEL_* turn it on -------------------------------------------------------------------

ENDPOINT = "http://127.0.0.1:4318/v1/traces"


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"OTEL_SERVICE_NAME": "gw", "OTEL_TRACES_SAMPLER": "always_on"}, None),  # nothing to export to
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT}, ENDPOINT),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces"),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, DEFAULT_ENDPOINT),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     DEFAULT_ENDPOINT),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "true"}, None),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"}, None),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "false"}, ENDPOINT),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, None),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_TRACES_EXPORTER": ""}, None),  # empty: unset
])
def test_which_otel_variables_turn_tracing_on(environ: dict, expected: str | None) -> None:
    found = settings_from(environ)
    assert (found.endpoint if found is not None else None) == expected


@pytest.mark.parametrize("environ, says", [
    ({"OTEL_TRACES_EXPORTER": "console"}, "OTEL_TRACES_EXPORTER=console"),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "otlp (OTLP over HTTP) only"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "OTLP protocol grpc"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
     "http/protobuf only"),
])
def test_tracing_the_node_cannot_do_is_refused(environ: dict, says: str) -> None:
    with pytest.raises(TracingError, match=says.replace("(", r"\(").replace(")", r"\)")):
        settings_from(environ)


def _node_args(tmp_path: Path) -> list[str]:
    _, ci_pub, _ = generate_keypair(tmp_path / "ci", force=True)
    gateway_key, _, _ = generate_keypair(tmp_path / "gateway", force=True)
    return ["--bundle", str(tmp_path / "bundle.json"), "--trust", str(ci_pub), "--signing-key",
            str(gateway_key), "--public-url", "http://127.0.0.1:1"]


BUILD_A_NODE = """
import sys
{hide}
from gwc.runtime.app import Gateway
from gwc.runtime.cli import load_private_key
from gwc.runtime.config import ConfigError, load
try:
    config = load({args!r})
except ConfigError as exc:
    sys.exit(f"config: {{exc}}")
Gateway(config, load_private_key(config.signing_key)).app()
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def _build_a_node(tmp_path: Path, env: dict, hide: str = "") -> subprocess.CompletedProcess:
    code = BUILD_A_NODE.format(args=_node_args(tmp_path), hide=hide)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**clean, **env}, timeout=60)


def test_a_node_without_otel_variables_loads_nothing_of_opentelemetry(tmp_path: Path) -> None:
    built = _build_a_node(tmp_path, {})
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[-1] == "[]"
    # the check can fail: asked to trace, the same node loads the SDK and the exporter
    built = _build_a_node(tmp_path, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT})
    assert built.returncode == 0, built.stderr
    loaded = eval(built.stdout.splitlines()[-1])  # a printed list of module names
    assert {"opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http"} <= set(loaded)


def test_asked_to_trace_without_the_sdk_the_node_does_not_start(tmp_path: Path) -> None:
    """Installed without the otel extra (here: the SDK hidden), OTEL_* asking for tracing is a
    startup error that says what to install, not a node that silently does not trace."""
    hide = "sys.modules['opentelemetry.sdk'] = None"
    built = _build_a_node(tmp_path, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT}, hide)
    assert built.returncode == 1 and "pip install 'gwc[otel]'" in built.stderr, built.stderr
    assert "config: the OTEL_* variables ask for tracing" in built.stderr
    assert _build_a_node(tmp_path, {}, hide).returncode == 0  # not asked: no SDK needed


def test_gwc_runtime_says_what_it_cannot_trace_and_exits_2(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    started = subprocess.run(
        [sys.executable, "-c", "import sys; from gwc.runtime.cli import main; main(sys.argv[1:])",
         *_node_args(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**clean, "OTEL_TRACES_EXPORTER": "console"})
    assert started.returncode == 2, started.stderr
    assert started.stderr.startswith("gwc-runtime: OTEL_TRACES_EXPORTER=console: gwc-runtime "
                                     "exports traces with otlp"), started.stderr
