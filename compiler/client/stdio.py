"""The stdio side of ``gwc connect``: MCP's stdio transport, newline-delimited JSON-RPC messages on
stdin and stdout, UTF-8, no embedded newlines.

stdin and stdout are read and written by threads, not asyncio pipes: those do not work with the
console and pipe handles Windows gives a process, and a client slow to read must block only the
writer, never the relay. Messages are written whole and in order; stdout carries nothing else.
"""
from __future__ import annotations

import asyncio
import json
import threading
from typing import IO, Any


def encode(message: Any) -> bytes:
    """One line: compact JSON (which never holds a raw newline) and ``\\n``."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class StdioPeer:
    """The local client at the other end of stdin and stdout."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self._stdin, self._stdout = stdin, stdout
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def read() -> None:
            try:
                for line in self._stdin:
                    loop.call_soon_threadsafe(self._lines.put_nowait, line)
            except (OSError, ValueError):
                pass  # stdin closed under us: the same as its end
            finally:
                try:
                    loop.call_soon_threadsafe(self._lines.put_nowait, None)
                except RuntimeError:
                    pass  # the loop is gone: nobody waits for the end any more

        # a daemon: a read blocked on a client that never closes stdin must not hold the exit
        self._reader = threading.Thread(target=read, name="gwc-connect-stdin", daemon=True)
        self._reader.start()

    async def read(self) -> bytes | None:
        """The next non-empty line, or None at the end of stdin."""
        while True:
            line = await self._lines.get()
            if line is None or line.strip():
                return line

    async def write(self, message: Any) -> None:
        data = encode(message)
        async with self._write_lock:
            await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        self._stdout.write(data)
        self._stdout.flush()
