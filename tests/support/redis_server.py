"""A real, throw-away ``redis-server`` on a free loopback port, for the tests that need shared state.

No persistence (``--save '' --appendonly no``), its own working directory. ``stop()`` terminates the
process (what "Redis went down" looks like to the runtime) and ``start()`` brings it back on the same port.
When ``redis-server`` is not installed the fixture skips, except in CI (env ``CI`` set), where it fails:
``.ci/run`` installs it, so a missing binary there is a broken pipeline, not a reason to skip.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server_process import ServerProcess, running


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    message = "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: the Redis tests must run in CI", pytrace=False)
    pytest.skip(message)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ServerProcess):
    name = "redis"

    def __init__(self, binary: str, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"]

    def ready(self) -> bool:
        return _ping(self.port)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running redis-server (``.url``, ``.port``, ``.stop()``, ``.start()``), stopped after the test."""
    binary = redis_server_binary()
    with tempfile.TemporaryDirectory(prefix="gwc-redis-") as workdir, \
            running(lambda: RedisServer(binary, Path(workdir))) as server:
        yield server
