"""An upstream MCP server whose tools ask the client through the SDK's resolvers:
`python tests/support/resolving_upstream.py PORT`.

Tools: ``ask`` (elicits an answer to ``question``) and ``summarize`` (samples the client's LLM).
At protocol 2026-07-28 the SDK answers the first ``tools/call`` with an ``input_required`` result
(``inputRequests`` plus a ``requestState`` sealed with AES-GCM under a key this process makes at
start) and finishes the call when the client retries with ``inputResponses`` and that same
``requestState``, which it verifies (seal, expiry, tool name and arguments) or refuses with
-32602. On older protocol versions the same resolvers send an ordinary ``elicitation/create`` or
``sampling/createMessage`` request inside the call instead."""
from __future__ import annotations

import sys
from typing import Annotated

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Elicit, ElicitationResult, Resolve, Sample
from mcp.types import CreateMessageResult, SamplingMessage, TextContent
from pydantic import BaseModel

server = MCPServer("resolving-upstream", version="1.0.0")


class Answer(BaseModel):
    answer: str


def ask_user(question: str) -> Elicit[Answer]:
    """The tool's ``question`` argument, asked of the user."""
    return Elicit(question, Answer)


def sample_llm(text: str) -> Sample:
    """The tool's ``text``, to be summarised by the client's LLM."""
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarize: {text}"))],
                  max_tokens=50)


@server.tool()
async def ask(question: str, reply: Annotated[ElicitationResult[Answer], Resolve(ask_user)]) -> str:
    """Ask the user ``question``; the outcome and the answer, if any."""
    answer = reply.data.answer if reply.action == "accept" else None
    return f"{reply.action}: {answer or '-'}"


@server.tool()
async def summarize(text: str, sampled: Annotated[CreateMessageResult, Resolve(sample_llm)]) -> str:
    """Summarise ``text`` with the client's LLM; the sampled text."""
    content = sampled.content
    return content.text if isinstance(content, TextContent) else str(content)


if __name__ == "__main__":
    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
