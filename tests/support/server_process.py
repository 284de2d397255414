"""A real server in a child process on a free loopback port, for the tests that need one: started
and waited for, stopped (what "the server went down" looks like to the runtime) and started again
on the same port. ``redis_server`` and ``s3_server`` are two."""
from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """Subclasses say how to start the server (:meth:`command`), how to tell it is up
    (:meth:`ready`) and what to do once it is (:meth:`on_start`)."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def on_start(self) -> None:
        """Once it answers: what every start needs (a bucket made again, say)."""

    def start(self, timeout: float = 20.0) -> None:
        log_path = self.workdir / f"{self.name}.log"
        with open(log_path, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ready():
                self.on_start()
                return
            time.sleep(0.02)
        self.stop()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not come up on port {self.port}:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


Server = TypeVar("Server", bound=ServerProcess)


@contextmanager
def running(make: Callable[[], Server], attempts: int = 3) -> Iterator[Server]:
    """A started server, stopped afterwards; tried again on another free port when the one
    chosen was taken between choosing and binding it."""
    for attempt in range(attempts):
        server = make()
        try:
            server.start()
            break
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    try:
        yield server
    finally:
        server.stop()
