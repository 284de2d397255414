"""The SSE reader of ``gwc connect``: events from chunks cut anywhere."""
from __future__ import annotations

import pytest

from gwc.compiler.client.event_stream import Event, EventParser, EventStreamError, read_events

STREAM = ("event: message\r\nid: 7\r\nretry: 1500\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
          ": keep-alive\n\n"
          "data: second\rdata: line\r\r"
          "data: \u00e9t\u00e9\n\n")
EXPECTED = [Event("message", '{"a":\n1}', "7", 1500), Event("message", "second\nline", "7", 1500),
            Event("message", "\u00e9t\u00e9", "7", 1500)]


def parse_in(chunks: list[str]) -> list[Event]:
    parser = EventParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_are_the_same_whatever_the_chunks(size: int) -> None:
    assert parse_in([STREAM[i:i + size] for i in range(0, len(STREAM), size)]) == EXPECTED


def test_a_crlf_cut_between_chunks_is_one_line_end() -> None:
    assert parse_in(["data: x\r", "\n\r", "\n"]) == [Event("message", "x", None, None)]


def test_an_event_without_data_is_not_dispatched_and_names_are_kept() -> None:
    assert parse_in(["event: ping\n\n", "event: custom\ndata: y\n\n"]) == [
        Event("custom", "y", None, None)]


def test_an_event_too_large_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gwc.compiler.client.event_stream.MAX_EVENT_CHARS", 10)
    with pytest.raises(EventStreamError):
        parse_in(["data: 0123456789ab\n"])
    with pytest.raises(EventStreamError):
        parse_in(["data: 01234", "56789abcdef"])  # no line end yet, still too large


class Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self):  # what aiohttp's StreamReader offers
        for chunk in self.chunks:
            yield chunk


async def test_bytes_are_decoded_across_chunks_and_a_last_event_is_kept() -> None:
    data = "data: \u00e9\n\ndata: last".encode()
    cut = data.index(b"\xa9")  # inside the two bytes of é
    events = [e async for e in read_events(Content([data[:cut], data[cut:]]))]
    assert [e.data for e in events] == ["\u00e9", "last"]


async def test_bytes_that_are_not_utf8_end_the_stream() -> None:
    with pytest.raises(EventStreamError):
        _ = [e async for e in read_events(Content([b"data: \xff\n\n"]))]
