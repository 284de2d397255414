"""A real upstream MCP server for the end-to-end tests: `python tests/support/upstream_server.py PORT`.

Tools: echo (read), whoami (reports the credential, Host and cookie it received), slow_count (progress),
write_thing (write), ask (elicits an answer from the client on the call's stream), ask_aside
(the same on the session's own GET stream), ask_later (asks on that stream after the call has
ended; answers tells what came back), grow (adds the tool grown, then says so outside the call,
with an update of the greeting resource) and
secret_tool (deliberately not declared in the test manifest); a resource,
a prompt (review) and completions of its argument. A request whose
body holds ``FAIL_MARKER`` is answered HTTP 500, as an upstream crashed by a caller's input would.
"""
from __future__ import annotations

import asyncio
import secrets
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import Completion, ToolAnnotations
from pydantic import BaseModel

server = MCPServer("test-upstream", version="1.0.0")
FAIL_MARKER = b"please-answer-500"


class SetsCookies:
    """ASGI middleware: every HTTP answer sets a session cookie, as an upstream behind a sticky load
    balancer or with its own sign-in does; whoami reports any cookie a request brings back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                cookie = f"upstream-session={secrets.token_hex(8)}; Path=/; HttpOnly"
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", cookie.encode())]}
            await send(message)
        await self.app(scope, receive, with_cookie)


class FailOnMarker:
    """ASGI middleware: HTTP 500 for a request whose body holds FAIL_MARKER, else the app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if FAIL_MARKER in body:
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"text/plain")]})
            return await send({"type": "http.response.body", "body": b"internal error"})
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, title="Echo"))
def echo(text: str) -> str:
    """Echo the text back (the upstream lies about its annotations on purpose)."""
    return f"echo: {text}"


@server.tool()
def whoami(ctx: Context) -> dict:
    """What this upstream saw of the caller."""
    headers = ctx.headers or {}
    return {"authorization": headers.get("authorization"), "host": headers.get("host"),
            "x_api_key": headers.get("x-api-key"), "cookie": headers.get("cookie"),
            "request_id": headers.get("x-request-id"),
            "mcp_param": {k: v for k, v in headers.items() if k.lower().startswith("mcp-param-")}}


@server.tool()
async def slow_count(n: int, ctx: Context) -> str:
    """Count to n, reporting progress."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"step {i}")
        await anyio.sleep(0.01)
    return f"counted {n}"


class Answer(BaseModel):
    answer: str


@server.tool()
async def ask(question: str, ctx: Context) -> str:
    """Ask the client's user (elicitation) in the middle of the call, and say what came back."""
    reply = await ctx.elicit(question, Answer)
    return f"{reply.action}: {reply.data.answer if reply.data else '-'}"


@server.tool()
async def ask_aside(question: str, ctx: Context) -> str:
    """Ask the client's user outside the call's stream (on the session's own GET stream, as a
    server does that asks on its own initiative), and say what came back."""
    reply = await ctx.session.elicit(question, {"type": "object", "properties": {
        "answer": {"type": "string"}}, "required": ["answer"]}, related_request_id=None)
    return f"{reply.action}: {(reply.content or {}).get('answer', '-')}"


LATER: list[str] = []
BACKGROUND: set[asyncio.Task] = set()


def _after(seconds: float, then: Any) -> None:
    """Run ``then()`` a little after the call has answered: outside any call."""
    async def later() -> None:
        await anyio.sleep(seconds)
        await then()
    task = asyncio.get_running_loop().create_task(later())
    BACKGROUND.add(task)
    task.add_done_callback(BACKGROUND.discard)


@server.tool()
async def ask_later(question: str, ctx: Context) -> str:
    """Answer at once, then ask the client's user on the session's own stream, outside any
    call; ``answers`` says what came back."""
    session = ctx.session

    async def ask() -> None:
        reply = await session.elicit(question, {"type": "object", "properties": {
            "answer": {"type": "string"}}, "required": ["answer"]}, related_request_id=None)
        LATER.append(f"{reply.action}: {(reply.content or {}).get('answer', '-')}")
    _after(0.3, ask)
    return "asked"


@server.tool()
def answers() -> str:
    """What ask_later's questions got back, in order."""
    return ", ".join(LATER) or "none"


def grown() -> str:
    """A tool the upstream only has after grow."""
    return "grown"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool ``grown``, then say (outside the call) that the tools changed and the greeting
    resource was updated: on the session's own stream (2025 era) and to every
    ``subscriptions/listen`` stream (2026-07-28)."""
    session = ctx.session
    if "grown" not in {tool.name for tool in server._tool_manager.list_tools()}:
        server.add_tool(grown, name="grown")
    if (ctx.protocol_version or "") >= "2026":
        await ctx.notify_tools_changed()
        await ctx.notify_resource_updated("test://greeting")
        return "grew"

    async def tell() -> None:
        await session.send_tool_list_changed()
        await session.send_resource_updated("test://greeting")
    _after(0.2, tell)
    return "grew"


@server.tool()
def write_thing(target: str, env: str = "staging") -> str:
    """Change something."""
    return f"wrote {target} in {env}"


@server.tool()
def secret_tool() -> str:
    """Not declared in the manifest: must stay invisible behind the gateway."""
    return "leaked"


@server.resource("test://greeting", name="greeting", mime_type="text/plain")
def greeting() -> str:
    return "hello from the upstream"


@server.prompt(description="Review some code")
def review(code: str) -> str:
    return f"Please review:\n{code}"


@server.completion()
async def complete(ref: Any, argument: Any, context: Any) -> Completion | None:
    """Completes the review prompt's code argument, naming the prompt it was asked about."""
    if getattr(ref, "name", None) == "review":
        return Completion(values=[f"{argument.value}-for-review"])
    return None


if __name__ == "__main__":
    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uvicorn.run(SetsCookies(FailOnMarker(app)), host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
