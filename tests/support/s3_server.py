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
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server_process import ServerProcess, running

BUCKET = "gwc-audit"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class S3Server(ServerProcess):
    name = "moto"

    def __init__(self, workdir: Path, bucket: str = BUCKET) -> None:
        super().__init__(workdir)
        self.bucket = bucket

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

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def ready(self) -> bool:
        return _listening(self.port)

    def on_start(self) -> None:
        self.client().create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """A running S3 API with an Object Lock bucket (``.url``, ``.env()``, ``.client()``,
    ``.stop()``, ``.start()``), stopped after the test."""
    with tempfile.TemporaryDirectory(prefix="gwc-s3-") as workdir, \
            running(lambda: S3Server(Path(workdir))) as server:
        yield server
