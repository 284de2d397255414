"""SSE framing (runtime/protocol/sse.py): rewriting JSON-RPC messages inside a stream, however it is cut."""
from __future__ import annotations

from typing import Any

import pytest

from gwc.runtime.protocol.sse import EventRewriter, Rewrite, messages

# CRLF and LF line ends, a comment, id/event/retry fields, multi-byte UTF-8 (2, 3 and 4 bytes),
# non-JSON data, JSON that is not an object, data split over two lines, extra blank lines, and a
# last event without its blank line.
STREAM = (": keep-alive\r\nid: 7\r\nevent: message\r\n"
          'data: {"jsonrpc":"2.0","id":1,"result":{"text":"é€😀"}}\r\n\r\n'
          "retry: 1500\ndata: not json\n\n"
          'data: {"jsonrpc":"2.0",\ndata: "method":"notifications/progress"}\r\n\r\n\r\n\r\n'
          "data: [1, 2]\n\n"
          'id: 9\ndata: {"id":2}').encode()
EXPECTED = (': keep-alive\nid: 7\nevent: message\n'
            'data: {"jsonrpc":"2.0","id":1,"result":{"text":"é€😀"},"seen":1}\n\n'
            "retry: 1500\ndata: not json\n\n"
            'data: {"jsonrpc":"2.0","method":"notifications/progress","seen":1}\n\n'
            "data: [1, 2]\n\n"
            'id: 9\ndata: {"id":2,"seen":1}\n\n').encode()


def mark(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "seen": 1}


def rewrite_events(body: bytes, rewrite: Rewrite) -> bytes:
    """A complete SSE body through one rewriter."""
    rewriter = EventRewriter(rewrite)
    return rewriter.feed(body) + rewriter.flush()


def fed(*chunks: bytes) -> bytes:
    rewriter = EventRewriter(mark)
    return b"".join(rewriter.feed(c) for c in chunks) + rewriter.flush()


def test_one_feed_rewrites_json_and_keeps_everything_else() -> None:
    assert rewrite_events(STREAM, mark) == EXPECTED


def test_any_cut_in_two_gives_the_same_output() -> None:
    for i in range(len(STREAM) + 1):
        assert fed(STREAM[:i], STREAM[i:]) == EXPECTED, i


def test_any_cut_in_three_gives_the_same_output() -> None:
    for i in range(len(STREAM) + 1):
        for j in range(i, len(STREAM) + 1, 3):
            assert fed(STREAM[:i], STREAM[i:j], STREAM[j:]) == EXPECTED, (i, j)


def test_byte_by_byte_gives_the_same_output() -> None:
    assert fed(*(STREAM[i:i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_cuts_inside_a_character_and_inside_a_crlf_are_among_those_tried() -> None:
    emoji = STREAM.index("😀".encode())
    crlf = STREAM.index(b"\r\n\r\n")
    for i in (emoji + 1, emoji + 2, emoji + 3, crlf + 1, crlf + 3):
        assert fed(STREAM[:i], STREAM[i:]) == EXPECTED


def test_an_event_is_emitted_as_soon_as_its_blank_line_arrives() -> None:
    rewriter = EventRewriter(mark)
    assert rewriter.feed(b'data: {"id":1}\r\n') == b""
    assert rewriter.feed(b"\r") == b""
    assert rewriter.feed(b'\nid: 2\ndata: {"id"') == b'data: {"id":1,"seen":1}\n\n'
    assert rewriter.feed(b":2}\n\n") == b'id: 2\ndata: {"id":2,"seen":1}\n\n'
    assert rewriter.flush() == b""


def test_flush_emits_a_last_event_without_its_blank_line() -> None:
    rewriter = EventRewriter(mark)
    assert rewriter.feed(b': c\ndata: {"id":1}') == b""
    assert rewriter.flush() == b': c\ndata: {"id":1,"seen":1}\n\n'
    assert rewriter.flush() == b""


def test_flush_of_nothing_but_white_space_emits_nothing() -> None:
    assert rewrite_events(b"", mark) == b""
    assert rewrite_events(b"\n\n\r\n", mark) == b""


def test_comments_only_and_non_json_events_are_kept_as_they_are() -> None:
    body = b": ping\n\nevent: x\ndata: plain text\n\ndata: {broken\n\ndata: \"str\"\n\n"
    assert rewrite_events(body, mark) == body


def test_the_rewrite_sees_the_whole_message_and_its_result_is_sent() -> None:
    seen = []

    def swap_id(message: dict[str, Any]) -> dict[str, Any]:
        seen.append(message)
        return {**message, "id": "client-7"}

    out = rewrite_events(b'data: {"jsonrpc":"2.0","id":41,"result":{}}\n\n', swap_id)
    assert seen == [{"jsonrpc": "2.0", "id": 41, "result": {}}]
    assert out == b'data: {"jsonrpc":"2.0","id":"client-7","result":{}}\n\n'


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(UnicodeDecodeError):
        EventRewriter(mark).feed(b"data: \xff\xfe\n\n")


def test_a_character_cut_at_the_end_of_the_stream_is_refused() -> None:
    rewriter = EventRewriter(mark)
    rewriter.feed('data: "é'.encode()[:-1])
    with pytest.raises(UnicodeDecodeError):
        rewriter.flush()


# --- messages -------------------------------------------------------------------------------------

def test_messages_extracts_every_json_object() -> None:
    assert list(messages(STREAM)) == [
        {"jsonrpc": "2.0", "id": 1, "result": {"text": "é€😀"}},
        {"jsonrpc": "2.0", "method": "notifications/progress"},
        {"id": 2},
    ]


def test_messages_skips_what_is_not_an_object() -> None:
    body = b": c\n\ndata: nope\n\ndata: [1]\n\ndata: 3\n\ndata: {\"ok\":true}\n\n\xff\n\n"
    assert list(messages(body)) == [{"ok": True}]


def test_messages_of_an_empty_body() -> None:
    assert list(messages(b"")) == []
