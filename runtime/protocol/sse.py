"""Just enough Server-Sent Events framing to read and rewrite JSON-RPC messages inside a stream.

Events are rewritten as they arrive: a stream is cut into complete events (a blank line ends one),
the JSON ``data`` of each goes through a function (which may drop it), and everything else (ids,
comments, retry hints) is kept, so progress notifications keep flowing while the final answer is
being rewritten.
"""
from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from typing import Any

import orjson

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]
# a rewrite that may also drop a message (None): the event is then left out of the stream
Screen = Callable[[dict[str, Any]], dict[str, Any] | None]


def event(message: dict[str, Any]) -> bytes:
    """One JSON-RPC message as a whole SSE event."""
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


def _data_of(lines: list[str]) -> str:
    return "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))


def _events(text: str) -> list[str]:
    return text.replace("\r\n", "\n").split("\n\n")


def messages(body: bytes) -> Iterator[dict[str, Any]]:
    """Every JSON object carried in the ``data`` of a complete SSE body."""
    for event in _events(body.decode("utf-8", errors="replace")):
        data = _data_of(event.split("\n"))
        if data:
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict):
                yield message


class EventRewriter:
    """Feed raw stream chunks, get back the complete events seen so far, rewritten."""

    def __init__(self, rewrite: Screen) -> None:
        self._rewrite = rewrite
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def _event(self, event: str) -> str:
        lines = event.split("\n")
        data = _data_of(lines)
        if data:
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                message = None
            if isinstance(message, dict):
                rewritten = self._rewrite(message)
                if rewritten is None:
                    return ""
                new_data = orjson.dumps(rewritten).decode()
                lines = [line for line in lines if not line.startswith("data:")]
                lines.append(f"data: {new_data}")
        return "\n".join(lines) + "\n\n"

    def feed(self, chunk: bytes) -> bytes:
        """UTF-8 decoding errors raise UnicodeDecodeError: the stream is not text."""
        self._pending = (self._pending + self._decoder.decode(chunk)).replace("\r\n", "\n")
        *complete, self._pending = self._pending.split("\n\n")
        return "".join(self._event(e) for e in complete if e).encode()

    def flush(self) -> bytes:
        """What is left when the stream ends (an event without its final blank line)."""
        rest, self._pending = self._pending + self._decoder.decode(b"", final=True), ""
        return self._event(rest).encode() if rest.strip() else b""

