"""A real S3 API on a free loopback port: moto's server mode (``moto[server]``), in its own process,
with a bucket that has Object Lock on, as the audit trail's store is in production.

moto keeps objects in memory: ``stop()`` is the store going down (and losing what it held, as a
bucket behind a broken network looks to a node until it is back), ``start()`` brings it back on the
same port with the bucket made again. The environment a node or the ``gwc`` command needs to reach
it (static test credentials, the endpoint, a region) is :meth:`S3Server.env`; the same variables
are what an operator sets for any S3-compatible store.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BUCKET = "gwc-audit"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class S3Server:
    def __init__(self, workdir: Path, bucket: str = BUCKET) -> None:
        self.workdir, self.bucket = workdir, bucket
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The store URL of the bucket, as gateway.yaml and ``gwc audit`` take it."""
        return f"s3://{self.bucket}"

    def env(self) -> dict[str, str]:
        """What a process needs in its environment to reach this store: the standard AWS
        variables (``AWS_ENDPOINT_URL_S3`` points the SDK at an S3-compatible endpoint)."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self) -> Any:
        """A boto3 S3 client of this store, for a test to look at or tamper with the bucket."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def start(self, timeout: float = 20.0) -> None:
        with open(self.workdir / "moto.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if _listening(self.port):
                self.client().create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
                return
            time.sleep(0.05)
        self.stop()
        tail = (self.workdir / "moto.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"moto server did not come up on port {self.port}:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """A running S3 API with an Object Lock bucket (``.url``, ``.env()``, ``.client()``,
    ``.stop()``, ``.start()``), stopped after the test."""
    with tempfile.TemporaryDirectory(prefix="gwc-s3-") as workdir:
        server = None
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            server = S3Server(Path(workdir))
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield server
        finally:
            server.stop()
