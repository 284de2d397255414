"""What the event loop hands the audit writer's thread: everything one turn of the loop submitted,
in one put, so a busy node wakes the thread once per turn rather than once per record; and nothing
submitted in the turn that closes the writer is left behind."""
from __future__ import annotations

import asyncio
import queue
from pathlib import Path
from typing import Any

import orjson

from gwc.runtime.audit.writer import AuditWriter


class CountingQueue:
    """The writer's queue, counting the puts (each one may wake the writer thread)."""

    def __init__(self) -> None:
        self._inner: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.puts = 0

    def put(self, item: Any) -> None:
        self.puts += 1
        self._inner.put(item)

    def get(self, timeout: float | None = None) -> Any:
        return self._inner.get(timeout=timeout)

    def get_nowait(self) -> Any:
        return self._inner.get_nowait()


def calls(path: Path) -> list[int]:
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [record["n"] for record in records if record["type"] == "call"]


async def test_one_turn_of_the_loop_is_one_put_in_the_order_submitted(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter("node-1", path)
    counting = writer._queue = CountingQueue()  # type: ignore[assignment]
    writer.start()
    try:
        first = [writer.submit({"type": "call", "n": n}) for n in range(100)]
        await asyncio.gather(*first)
        assert counting.puts == 1
        second = [writer.submit({"type": "call", "n": n}) for n in range(100, 110)]
        await asyncio.gather(*second)
        assert counting.puts == 2
    finally:
        writer.close()
    assert calls(path) == list(range(110))


async def test_records_submitted_in_the_turn_that_closes_the_writer_are_written(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter("node-1", path)
    writer.start()
    futures = [writer.submit({"type": "call", "n": n}) for n in range(3)]
    writer.close()  # in the same turn: the hand-over has not run yet
    assert calls(path) == [0, 1, 2]
    assert len(set(await asyncio.gather(*futures))) == 3
