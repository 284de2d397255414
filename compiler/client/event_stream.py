"""Reading a Server-Sent Events stream (the WHATWG event-stream format) from the gateway, as
``gwc connect`` receives answers and server-initiated messages: events as they complete, from
chunks of any size (a result may be one ``data:`` line of megabytes, longer than a line reader
takes), with ``\\r\\n``, ``\\r`` or ``\\n`` line ends, comments skipped."""
from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

MAX_EVENT_CHARS = 64 * 1024 * 1024  # one event's data; beyond it the stream is refused


class EventStreamError(Exception):
    """The stream is not one this reader accepts (an event too large, not UTF-8)."""


@dataclass(frozen=True)
class Event:
    event: str  # "message" when the stream does not name one
    data: str
    id: str | None
    retry_ms: int | None


class EventParser:
    """Feed decoded text, get complete events."""

    def __init__(self) -> None:
        self._pending = ""
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, text: str) -> Iterator[Event]:
        self._pending += text
        while True:
            cut = min((i for i in (self._pending.find("\n"), self._pending.find("\r")) if i >= 0),
                      default=-1)
            if cut < 0:
                if len(self._pending) > MAX_EVENT_CHARS:
                    raise EventStreamError("an event of the stream is too large")
                return
            if self._pending[cut] == "\r" and cut == len(self._pending) - 1:
                return  # a \r at the end may be the first half of \r\n: wait for the next chunk
            line = self._pending[:cut]
            step = 2 if self._pending.startswith("\r\n", cut) else 1
            self._pending = self._pending[cut + step:]
            event = self._line(line)
            if event is not None:
                yield event

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._size += len(value) + 1
            if self._size > MAX_EVENT_CHARS:
                raise EventStreamError("an event of the stream is too large")
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, self._data, self._size = self._data, [], 0
        name, self._event = self._event, ""
        if not data:
            return None
        return Event(name or "message", "\n".join(data), self._id, self._retry)


async def read_events(content: Any) -> AsyncIterator[Event]:
    """The events of an aiohttp response body (``response.content``) as they arrive."""
    parser = EventParser()
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        async for chunk in content.iter_any():
            for event in parser.feed(decoder.decode(chunk)):
                yield event
        for event in parser.feed(decoder.decode(b"", final=True) + "\n\n"):
            yield event  # a last event the stream did not end with a blank line
    except UnicodeDecodeError:
        raise EventStreamError("the stream is not UTF-8") from None
