"""An upstream that asks the client with an ``input_required`` result (protocol 2026-07-28) gets the
client's answers through the gateway: the first ``tools/call`` comes back with ``inputRequests`` and
an AES-GCM sealed ``requestState``, the client's retry carries ``inputResponses`` and that same
``requestState`` back, and the gateway routes the retry, by the tool's name, to the upstream that
sealed it, on a server's endpoint and on the aggregate ``/mcp``. The upstream
(tests/support/resolving_upstream.py) verifies the state, so a tampered one is refused, and the
refusal reaches the client as a JSON-RPC error. In the 2025 era the same tool asks inside the call
instead, which the gateway relays."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx2
import orjson
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CreateMessageResult, ElicitResult, TextContent

from gwc.runtime.audit.writer import trail
from tests.support.e2e import Node, raw, running_upstream, start_node, write_test_registry

pytestmark = pytest.mark.e2e

STATELESS = "2026-07-28"
SERVER, AGGREGATE = "/servers/tools/mcp", "/mcp"


@pytest.fixture(scope="module")
def resolving_upstream():
    with running_upstream("resolving_upstream.py") as url:
        yield url


@pytest.fixture
async def node(tmp_path, aiohttp_server, signing_key, resolving_upstream) -> Node:
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(
                                root, jwks, resolving_upstream, ("ask", "summarize")))


# ---- the wire between the SDK client and the gateway ----

def messages_in(body: bytes, content_type: str) -> list[dict]:
    """The JSON-RPC messages of an answer: a JSON body, or the data of an SSE stream's events."""
    if not body:
        return []
    if content_type.startswith("text/event-stream"):
        found = []
        for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
            data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n")
                              if line.startswith(b"data:"))
            if data.strip():
                found.append(json.loads(data))
        return found
    decoded = json.loads(body)
    return decoded if isinstance(decoded, list) else [decoded]


@dataclass
class Exchange:
    """One HTTP request the client sent the gateway, and the bytes of the answer, as they came."""

    method: str
    sent: bytes
    client_request_id: str
    status: int = 0
    content_type: str = ""
    received: bytearray = field(default_factory=bytearray)

    @property
    def request(self) -> dict:
        return json.loads(self.sent)

    @property
    def answers(self) -> list[dict]:
        return messages_in(bytes(self.received), self.content_type)


class Tee(httpx2.AsyncByteStream):
    """A response's stream, passed on chunk by chunk and kept (so SSE streams still stream)."""

    def __init__(self, inner: httpx2.AsyncByteStream, sink: bytearray) -> None:
        self._inner, self._sink = inner, sink

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._sink.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class Wire(httpx2.AsyncBaseTransport):
    """A transport that keeps every POST and its answer, and gives each POST its own
    ``X-Request-Id`` (``post-1``, ``post-2``, ...) so the audit trail's records can be told apart."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method != "POST":
            return await self._inner.handle_async_request(request)
        exchange = Exchange(request.method, await request.aread(),
                            f"post-{len(self.exchanges) + 1}")
        request.headers["X-Request-Id"] = exchange.client_request_id
        self.exchanges.append(exchange)
        response = await self._inner.handle_async_request(request)
        exchange.status = response.status_code
        exchange.content_type = response.headers.get("content-type", "")
        return httpx2.Response(response.status_code, headers=response.headers,
                               stream=Tee(response.stream, exchange.received),
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def calls(self) -> list[Exchange]:
        """The exchanges that were ``tools/call`` requests, in order."""
        return [e for e in self.exchanges if e.sent and e.request.get("method") == "tools/call"]


@asynccontextmanager
async def connect(node: Node, path: str, mode: str, wire: Wire, **callbacks):
    token = node.idp.token("alice", ["eng"])
    async with (httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, transport=wire,
                                   timeout=httpx2.Timeout(10.0, read=30.0)) as http,
                Client(streamable_http_client(node.url + path, http_client=http), mode=mode,
                       read_timeout_seconds=20, **callbacks) as client):
        # no silent fallback: auto must really speak the stateless era through the gateway
        assert client.protocol_version == (STATELESS if mode == "auto" else "2025-11-25")
        yield client


def the_result(exchange: Exchange) -> dict:
    """The one JSON-RPC result of an exchange (asserting it is one, not an error)."""
    assert exchange.status == 200, (exchange.status, bytes(exchange.received))
    [answer] = [m for m in exchange.answers if "id" in m and ("result" in m or "error" in m)]
    assert answer["id"] == exchange.request["id"]
    assert "result" in answer, answer
    return answer["result"]


def assert_two_rounds(wire: Wire, tool: str, method: str, response: dict) -> tuple[dict, dict]:
    """The client's two ``tools/call`` rounds on the wire: the first answered ``input_required``
    asking ``method`` with a sealed ``requestState``, which the retry sends back byte for byte with
    ``response`` under the same key. Returns the first request's ``params._meta`` and its result."""
    first, retry = wire.calls()  # exactly two rounds, no more
    assert first.request["params"]["name"] == retry.request["params"]["name"] == tool
    assert "requestState" not in first.request["params"]
    asked = the_result(first)
    assert asked["resultType"] == "input_required", asked
    [(key, request)] = asked["inputRequests"].items()
    assert request["method"] == method
    state = asked["requestState"]
    assert isinstance(state, str) and state.startswith("v1.") and len(state) > 100
    params = retry.request["params"]
    assert params["requestState"] == state  # JSON strings: equal text is equal bytes
    assert b'"requestState":"%s"' % state.encode() in retry.sent.replace(b": ", b":")
    assert params["inputResponses"] == {key: response}
    finished = the_result(retry)
    assert finished.get("resultType", "complete") == "complete", finished
    assert "requestState" not in finished
    return first.request["params"]["_meta"], asked


def records(node: Node) -> list[dict]:
    """The trail's records of MCP requests (not its start and checkpoint records)."""
    found = [orjson.loads(line) for path in trail(node.audit_path)
             for line in path.read_bytes().splitlines()]
    return [r for r in found if r["type"] in ("call", "list")]


def assert_one_record_a_round(node: Node, wire: Wire, endpoint: str, tool: str) -> None:
    """Each round's POST has its own record: a forwarded, allowed call of the upstream's tool."""
    rounds = [e.client_request_id for e in wire.calls()]
    found = [r for r in records(node)
             if r["method"] == "tools/call" and r["client_request_id"] in rounds]
    assert sorted(r["client_request_id"] for r in found) == sorted(rounds)  # one each, no more
    for record in found:
        assert record["type"] == "call"
        assert (record["endpoint"], record["server"], record["tool"]) == (endpoint, "tools", tool)
        assert (record["decision"], record["outcome"], record["error"]) == ("allow", "forwarded",
                                                                            None)
        assert record["upstream_status"] == 200
        assert record["principal"]["subject"] == "alice"
    assert len({r["request_id"] for r in found}) == len(rounds)


# ---- 2026-07-28: input_required, passed through ----

@pytest.mark.parametrize(("path", "tool"), [(SERVER, "ask"), (AGGREGATE, "tools__ask")])
async def test_an_upstream_asks_with_input_required_and_the_retry_reaches_it(node, path, tool):
    asked: list[tuple[str, object]] = []

    async def answer(context, params) -> ElicitResult:
        asked.append((params.message, params.requested_schema["required"]))
        return ElicitResult(action="accept", content={"answer": "blue"})

    wire = Wire()
    async with connect(node, path, "auto", wire, elicitation_callback=answer) as client:
        result = await client.call_tool(tool, {"question": "favourite colour?"})
    assert asked == [("favourite colour?", ["answer"])]
    assert result.is_error is False
    assert result.content[0].text == "accept: blue"
    assert_two_rounds(wire, tool, "elicitation/create",
                      {"action": "accept", "content": {"answer": "blue"}})
    assert_one_record_a_round(node, wire, "tools" if path == SERVER else "", "ask")


@pytest.mark.parametrize(("path", "tool"), [(SERVER, "summarize"), (AGGREGATE, "tools__summarize")])
async def test_an_upstream_samples_with_input_required_and_the_retry_reaches_it(node, path, tool):
    prompts: list[list[str]] = []

    async def sample(context, params) -> CreateMessageResult:
        prompts.append([m.content.text for m in params.messages])
        return CreateMessageResult(role="assistant", model="fake-llm",
                                   content=TextContent(type="text", text="a short summary"))

    wire = Wire()
    async with connect(node, path, "auto", wire, sampling_callback=sample) as client:
        result = await client.call_tool(tool, {"text": "a long text"})
    assert prompts == [["Summarize: a long text"]]
    assert result.is_error is False
    assert result.content[0].text == "a short summary"
    assert_two_rounds(wire, tool, "sampling/createMessage", {
        "role": "assistant", "model": "fake-llm",
        "content": {"type": "text", "text": "a short summary"}})
    assert_one_record_a_round(node, wire, "tools" if path == SERVER else "", "summarize")


# ---- 2025-11-25: the resolver asks inside the call instead ----

@pytest.mark.parametrize(("path", "tool"), [(SERVER, "ask"), (AGGREGATE, "tools__ask")])
async def test_in_the_2025_era_the_same_tool_asks_inside_the_call(node, path, tool):
    asked: list[str] = []

    async def answer(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"answer": "green"})

    wire = Wire()
    async with connect(node, path, "legacy", wire, elicitation_callback=answer) as client:
        result = await client.call_tool(tool, {"question": "favourite colour?"})
    assert asked == ["favourite colour?"]
    assert result.content[0].text == "accept: green"
    [call] = wire.calls()  # one round: the question travelled on the call's own stream
    assert [m["method"] for m in call.answers if "method" in m] == ["elicitation/create"]
    assert the_result(call).get("resultType", "complete") == "complete"
    assert not [e for e in wire.exchanges if b"requestState" in e.sent + bytes(e.received)]
    assert_one_record_a_round(node, wire, "tools" if path == SERVER else "", "ask")


# ---- a retry whose requestState was tampered with ----

def tampered(state: str) -> str:
    """``state`` with one character in the middle of its ciphertext changed."""
    middle = len(state) // 2
    return state[:middle] + ("A" if state[middle] != "A" else "B") + state[middle + 1:]


async def test_a_tampered_request_state_is_refused_by_the_upstream(node) -> None:
    async def answer(context, params) -> ElicitResult:
        return ElicitResult(action="accept", content={"answer": "blue"})

    wire = Wire()
    async with connect(node, SERVER, "auto", wire, elicitation_callback=answer) as client:
        assert (await client.call_tool("ask", {"question": "q?"})).content[0].text == "accept: blue"
    meta, asked = assert_two_rounds(wire, "ask", "elicitation/create",
                                    {"action": "accept", "content": {"answer": "blue"}})
    [key] = asked["inputRequests"]
    token = node.idp.token("alice", ["eng"])
    headers = {"Mcp-Method": "tools/call", "Mcp-Name": "ask", "MCP-Protocol-Version": STATELESS}

    async def retry(state: str, id_: int) -> httpx2.Response:
        return await raw(node, SERVER, {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {
            "name": "ask", "arguments": {"question": "q?"}, "_meta": meta,
            "inputResponses": {key: {"action": "accept", "content": {"answer": "red"}}},
            "requestState": state}}, token, {**headers, "X-Request-Id": f"raw-{id_}"})

    # the control: the same raw retry with the state as sealed goes through
    good = await retry(asked["requestState"], 41)
    [ok] = messages_in(good.content, good.headers.get("content-type", ""))
    assert good.status_code == 200 and ok["id"] == 41, good.text
    assert ok["result"]["content"][0]["text"] == "accept: red"

    forged = tampered(asked["requestState"])
    assert forged != asked["requestState"]
    bad = await retry(forged, 42)  # raw() gives up after 10 s: a hang fails here
    assert bad.status_code == 400, bad.text  # the upstream's own status, relayed; not a 500
    [refused] = messages_in(bad.content, bad.headers.get("content-type", ""))
    assert refused["id"] == 42 and "result" not in refused, refused
    assert refused["error"]["code"] == -32602
    assert refused["error"]["message"] == "Invalid or expired requestState"
    assert refused["error"]["data"] == {"reason": "invalid_request_state"}

    # each round has its record; the refused one says what the upstream answered
    rounds = [r for r in records(node) if r["client_request_id"] in ("raw-41", "raw-42")]
    assert [(r["client_request_id"], r["method"], r["tool"], r["decision"], r["outcome"],
             r["upstream_status"]) for r in rounds] == [
        ("raw-41", "tools/call", "ask", "allow", "forwarded", 200),
        ("raw-42", "tools/call", "ask", "allow", "forwarded", 400)]
