"""Requests an attacker would send, against a real node and a real SDK upstream: each gets a clean,
recorded refusal (or a closed connection), and nobody else pays for it."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx2
import orjson
import pytest

from tests.support.e2e import LIST, open_session, raw, start_node, upstream_url, write_test_registry  # noqa: F401

STATELESS = "2026-07-28"


def call(tool: str, arguments: dict | bytes, id_: int = 1) -> bytes:
    """A 2026-07-28 tools/call body; ``arguments`` as raw JSON bytes when a test needs exact text."""
    args = arguments if isinstance(arguments, bytes) else orjson.dumps(arguments)
    meta = orjson.dumps({"io.modelcontextprotocol/protocolVersion": STATELESS,
                         "io.modelcontextprotocol/clientCapabilities": {},
                         "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}})
    return (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s",'
            b'"arguments":%s,"_meta":%s}}' % (id_, tool.encode(), args, meta))


def headers(tool: str, **more: str) -> dict[str, str]:
    return {"Mcp-Method": "tools/call", "Mcp-Name": tool, "MCP-Protocol-Version": STATELESS,
            **more}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def records(node) -> list[dict]:
    return [json.loads(line) for line in node.audit_path.read_text().splitlines()]


@pytest.fixture
async def node(tmp_path, aiohttp_server, upstream_url, signing_key):  # noqa: F811
    def write(root: Path, jwks: str) -> Path:
        write_test_registry(root, jwks, upstream_url)
        gateway = root / "gateway.yaml"
        gateway.write_text(gateway.read_text() + "allowed_origins: [https://inspector.test.example]\n")
        return root
    return await start_node(tmp_path, aiohttp_server, signing_key, write,
                            header_timeout_s=0.5, body_timeout_s=0.5)


@pytest.mark.parametrize("depth", [62, 70, 300, 990, 5000])
async def test_deep_arguments_are_refused_with_a_record_and_never_a_500(node, depth) -> None:
    token = node.idp.token("alice", ["eng"])
    body = call("echo", b'{"text":"hi","extra":%s}' % nested(depth))
    response = await raw(node, "/servers/tools/mcp", body, token, headers("echo"))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "Traceback" not in response.text
    if depth < 1000:  # past orjson's own limit the body is not even JSON to the gateway
        assert error["data"]["reason"] == "invalid_params" and "nested deeper" in error["message"]
        [record] = [r for r in records(node) if r.get("type") == "call"]
        assert (record["method"], record["outcome"], record["error"], record["principal"]["subject"]) \
            == ("tools/call", "refused", "invalid_params", "alice")
    # the node still serves, and records, everyone else
    fine = await raw(node, "/servers/tools/mcp", call("echo", {"text": "still"}), token,
                     headers("echo"))
    assert fine.status_code == 200 and "echo: still" in fine.text


async def test_arguments_just_inside_the_depth_limit_go_through(node) -> None:
    # message (1) > params (2) > arguments (3) > extra: 61 more levels = 64
    body = call("echo", b'{"text":"deep","extra":%s}' % nested(61))
    response = await raw(node, "/servers/tools/mcp", body, node.idp.token("alice", ["eng"]),
                         headers("echo"))
    assert response.status_code == 200 and "echo: deep" in response.text, response.text
    [record] = [r for r in records(node) if r.get("type") == "call"]
    assert record["outcome"] == "forwarded"


@pytest.mark.parametrize("number, refused", [
    (b"123456789012345678901234567890", True), (b"-9223372036854775809", True),
    (b"18446744073709551616", True), (b"18446744073709551615", False),
    (b"-9223372036854775808", False), (b"1e30", False)])
async def test_integers_beyond_64_bits_are_refused_not_rounded(node, number, refused) -> None:
    body = call("echo", b'{"text":"n","amount":%s}' % number)
    response = await raw(node, "/servers/tools/mcp", body, node.idp.token("alice", ["eng"]),
                         headers("echo"))
    if refused:
        assert response.status_code == 400
        assert "beyond 64 bits" in response.json()["error"]["message"]
    else:
        assert response.status_code == 200 and "echo: n" in response.text, response.text


async def test_callers_cannot_make_metric_series(node) -> None:
    async with httpx2.AsyncClient() as http:
        for i, method in enumerate(("PROPFIND", "PURGE", "MKCOL", "LOCK", "UNLOCK", "SEARCH",
                                    "REPORT", "COPY", "MOVE", "PATCH")):
            await http.post(f"{node.url}/servers/made-up-{i}/mcp", content=b"{}")
            await http.request(method, f"{node.url}/mcp")
        token = node.idp.token("alice", ["eng"])
        await http.post(f"{node.url}/servers/also-made-up/mcp", content=orjson.dumps(LIST),
                        headers={"Authorization": f"Bearer {token}"})
        metrics = (await http.get(node.url + "/metrics")).text
    assert "made-up" not in metrics and "PROPFIND" not in metrics and "PURGE" not in metrics
    assert 'server="unknown"' in metrics and 'method="other"' in metrics


@pytest.mark.parametrize("origin, status", [
    ("https://evil.example", 403), ("http://127.0.0.1.evil.example", 403), ("null", 403),
    ("https://inspector.test.example", 200), (None, 200), ("self", 200)])
async def test_origin_is_checked_against_gateway_yaml(node, origin, status) -> None:
    token = node.idp.token("alice", ["eng"])
    extra = {} if origin is None else {"Origin": node.url if origin == "self" else origin}
    response = await raw(node, "/servers/tools/mcp", call("echo", {"text": "o"}), token,
                         headers("echo", **extra))
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"]["data"]["reason"] == "origin_not_allowed"
        async with httpx2.AsyncClient() as http:  # the approvals API is guarded too
            api = await http.get(node.url + "/v1/approvals/x", headers={
                "Origin": origin, "Authorization": f"Bearer {token}"})
        assert api.status_code == 403


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the node sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_slow_headers_are_cut_off(node) -> None:
    port = int(node.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        for _ in range(40):  # one header byte every 0.1 s: never complete within 4 s
            writer.write(b"X")
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(trickle())
    try:
        await _closed_within(reader, 3.0)  # header timeout 0.5 s
    finally:
        dripping.cancel()
        writer.close()


async def test_slow_bodies_get_408_and_a_closed_connection(node) -> None:
    port = int(node.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    token = node.idp.token("alice", ["eng"])
    writer.write(b"POST /servers/tools/mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer %s\r\nContent-Length: 1000\r\n\r\n{" % token.encode())
    answer = await _closed_within(reader, 3.0)  # body timeout 0.5 s
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    # a sound request right after is served
    fine = await raw(node, "/servers/tools/mcp", call("echo", {"text": "ok"}), token,
                     headers("echo"))
    assert fine.status_code == 200


async def test_mcp_param_headers_do_not_reach_the_upstream(node) -> None:
    token = node.idp.token("alice", ["eng"])
    response = await raw(node, "/servers/tools/mcp", call("whoami", {}), token,
                         headers("whoami", **{"Mcp-Param-Env": "prod"}))
    assert response.status_code == 200, response.text
    text = response.text
    assert '\\"mcp_param\\": {}' in text or '"mcp_param": {}' in text or "'mcp_param': {}" in text, text


async def test_request_ids_are_the_gateways_and_the_clients_is_kept_beside(node) -> None:
    token = node.idp.token("alice", ["eng"])
    response = await raw(node, "/servers/tools/mcp", call("echo", {"text": "id"}), token,
                         headers("echo", **{"X-Request-Id": "chosen-by-caller"}))
    assert response.headers["X-Client-Request-Id"] == "chosen-by-caller"
    [record] = [r for r in records(node) if r.get("type") == "call"]
    assert record["request_id"] == response.headers["X-Request-Id"] != "chosen-by-caller"
    assert record["client_request_id"] == "chosen-by-caller"


async def test_a_request_without_a_token_gets_no_error_code(node) -> None:
    response = await raw(node, "/servers/tools/mcp", LIST)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer resource_metadata="') and "error=" not in challenge
    bad = await raw(node, "/servers/tools/mcp", LIST, "not-a-jwt")
    assert 'error="invalid_token", error_description="malformed token"' in \
        bad.headers["WWW-Authenticate"]
