"""How a gwc-runtime process leaves a load balancer: with ``--drain-seconds`` SIGTERM makes it
unready at once while it goes on answering, and it stops when the drain is over (a second SIGTERM
stops it at once); ``--metrics-listen`` takes /metrics off the public port onto one of its own."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from gwc.compiler.build.keys import generate_keypair
from tests.support.e2e import Node, free_port, wait_port

RUNTIME = Path(sys.executable).parent / "gwc-runtime"


def start(tmp_path: Path, node: Node, trust: Path, *flags: str,
          port: int | None = None) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    key_path, _, _ = generate_keypair(tmp_path / f"node-{port}")
    proc = subprocess.Popen([str(RUNTIME), "--bundle", str(node.store_dir / "bundle.json"),
                             "--trust", str(trust), "--listen", f"127.0.0.1:{port}",
                             "--signing-key", str(key_path), "--audit", "none",
                             "--public-url", f"http://127.0.0.1:{port}", *flags],
                            env={**os.environ, "GWC_LOG_LEVEL": "warning"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_port(port, "gwc-runtime")
    return proc, port


def wait_ready(proc: subprocess.Popen, port: int) -> None:
    """Until the node reports ready; a node that stopped instead fails with what it said (a port
    another process took between free_port() and the node's bind, say)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx2.ConnectError:
            if proc.poll() is not None:
                stderr = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"the node stopped with exit code {proc.returncode}: {stderr}")
        assert time.monotonic() < deadline, "the node never became ready"
        time.sleep(0.05)


async def wait_exit(proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait for the process while the test's loop goes on serving the IdP's JWKS."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the node did not stop"
        await asyncio.sleep(0.05)


async def test_sigterm_drains_then_stops_and_metrics_have_their_own_port(node, tmp_path,
                                                                        signing_key) -> None:
    with socket.socket() as held:  # two ports, surely not the same one twice
        held.bind(("127.0.0.1", 0))
        metrics_port, port = held.getsockname()[1], free_port()
    proc, port = start(tmp_path, node, signing_key[1], "--drain-seconds", "3",
                       "--metrics-listen", f"127.0.0.1:{metrics_port}", port=port)
    try:
        wait_ready(proc, port)
        assert httpx2.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        scraped = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200 and "gwc_bundle_serial" in scraped.text

        token = node.idp.token("alice", ["eng"])
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        ready = httpx2.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 503 and ready.json()["status"].startswith("draining")
        # still answering while the balancer takes it out of rotation
        async with httpx2.AsyncClient(timeout=10) as http:  # the JWKS is served by this loop
            catalog = await http.get(f"http://127.0.0.1:{port}/v1/catalog",
                                     headers={"Authorization": f"Bearer {token}"})
        assert catalog.status_code == 200
        assert httpx2.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        await wait_exit(proc, 20)
        stopped = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert 2.5 <= stopped < 10, stopped


def test_a_second_sigterm_stops_a_draining_node_at_once(node, tmp_path, signing_key) -> None:
    proc, port = start(tmp_path, node, signing_key[1], "--drain-seconds", "60")
    try:
        wait_ready(proc, port)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx2.get(f"http://127.0.0.1:{port}/readyz").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        assert time.monotonic() - sent < 10
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0


def test_a_metrics_port_in_use_is_a_clear_start_up_error(node, tmp_path, signing_key) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        key_path, _, _ = generate_keypair(tmp_path / "node")
        started = subprocess.run(
            [str(RUNTIME), "--bundle", str(node.store_dir / "bundle.json"), "--trust",
             str(signing_key[1]), "--listen", f"127.0.0.1:{free_port()}", "--signing-key",
             str(key_path), "--public-url", "http://127.0.0.1:1", "--audit", "none",
             "--metrics-listen", f"127.0.0.1:{busy}"], capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    assert started.stderr.strip().splitlines()[-1].startswith(
        f"gwc-runtime: cannot listen for /metrics on 127.0.0.1:{busy}: "), started.stderr
