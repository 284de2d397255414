"""A real node (a gwc-runtime process) under calls ships its trail to an S3 bucket with Object Lock
(moto's server mode): after it shuts down, the record of every call it answered is in the bucket,
in files whose keys, checksums, retention and signed heads hold, and which verify as one chain."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import orjson
import yaml

from gwc.compiler.build.keys import generate_keypair
from gwc.runtime.audit.chain import Head, verify
from gwc.runtime.audit.objects import StoreUrl, parse_key
from gwc.runtime.bundle.envelope import jwk_kid
from gwc.runtime.mcp.trail import AuditTarget
from tests.support.e2e import INITIALIZE, free_port, start_node, wait_port, write_test_registry
from tests.support.s3_server import S3Server

RUNTIME = Path(sys.executable).parent / "gwc-runtime"
NODE = "gwc-e2e-0"
CALLS = 40


def with_store(trail: Path, url: str):
    """The test registry, with gateway.yaml's audit shipping closed files to ``url``."""
    def write(root: Path, jwks: str, upstream: str) -> Path:
        write_test_registry(root, jwks, upstream)
        gateway = yaml.safe_load((root / "gateway.yaml").read_text())
        gateway["audit"] = {"sink": "file", "path": str(trail), "store": {
            "url": url, "object_lock": {"mode": "compliance", "days": 1}, "keep_local_days": 0}}
        (root / "gateway.yaml").write_text(yaml.safe_dump(gateway))
        return root
    return write


async def post(http: httpx2.AsyncClient, url: str, body: dict, session: str | None = None
               ) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream"}
    if session:
        headers["Mcp-Session-Id"] = session
    return await http.post(url, json=body, headers=headers)


async def test_a_node_ships_the_record_of_every_call_it_answered(
        tmp_path: Path, aiohttp_server, signing_key, upstream_url, s3_server: S3Server) -> None:
    trail = tmp_path / "trail" / "audit.jsonl"
    url = s3_server.url + "/gwc"
    # the bundle and the IdP come from an in-process node that writes no trail of its own
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: with_store(trail, url)(root, jwks, upstream_url),
                            audit=AuditTarget("none"))
    port = free_port()
    gateway_key, _, key = generate_keypair(tmp_path / "runtime-key")
    stderr = (tmp_path / "runtime.log").open("wb")
    proc = subprocess.Popen(
        [str(RUNTIME), "--bundle", str(node.store_dir / "bundle.json"),
         "--trust", str(signing_key[1]), "--listen", f"127.0.0.1:{port}",
         "--signing-key", str(gateway_key), "--public-url", f"http://127.0.0.1:{port}",
         "--node-id", NODE, "--audit-max-bytes", "4000"],
        env={**os.environ, **s3_server.env(), "GWC_LOG_LEVEL": "info"},
        stdout=subprocess.DEVNULL, stderr=stderr)
    answered: list[str] = []
    try:
        wait_port(port, "gwc-runtime")
        endpoint = f"http://127.0.0.1:{port}/servers/tools/mcp"
        token = node.idp.token("alice", ["eng"])
        async with httpx2.AsyncClient(timeout=20, headers={
                "Authorization": f"Bearer {token}"}) as http:
            opened = await post(http, endpoint, INITIALIZE)
            assert opened.status_code == 200, opened.text
            session = opened.headers["Mcp-Session-Id"]

            async def call(n: int) -> None:
                response = await post(http, endpoint, {
                    "jsonrpc": "2.0", "id": n, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": f"call {n}"}}}, session)
                assert response.status_code == 200, response.text
                assert f"echo: call {n}" in response.text
                answered.append(response.headers["X-Request-Id"])

            for first in range(0, CALLS, 8):
                await asyncio.gather(*(call(n) for n in range(first, first + 8)))
    finally:
        proc.terminate()
        code = proc.wait(30)
        stderr.close()
    log = (tmp_path / "runtime.log").read_text()
    assert code == 0, log
    assert len(answered) == CALLS

    client, store = s3_server.client(), StoreUrl.parse(url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_server.bucket)["Contents"]]
    parsed = [parse_key(store, k) for k in keys]
    assert None not in parsed
    files = sorted(obj for obj, suffix in parsed if suffix == ".jsonl")  # type: ignore[misc]
    assert len(files) >= 3, log  # rotated under calls, and the last closed at shutdown
    assert {obj.node for obj in files} == {NODE} and len({obj.chain for obj in files}) == 1
    bodies = []
    for number, obj in enumerate(files):
        body = tmp_path / "shipped" / f"{number:03d}.jsonl"
        body.parent.mkdir(exist_ok=True)
        body.write_bytes(client.get_object(Bucket=s3_server.bucket,
                                           Key=obj.trail_key(store))["Body"].read())
        bodies.append(body)
        head = Head.of(json.loads(client.get_object(Bucket=s3_server.bucket,
                                                    Key=obj.head_key(store))["Body"].read()))
        assert head.signed_by(key.public_key()) and head.seq == obj.last - 1
        meta = client.head_object(Bucket=s3_server.bucket, Key=obj.trail_key(store))
        assert meta["ObjectLockMode"] == "COMPLIANCE"
    verdict = verify(bodies, {jwk_kid(key.public_key()): key.public_key()})
    assert verdict.ok and verdict.from_genesis and verdict.last_seq == files[-1].last
    recorded = {r.get("request_id") for body in bodies
                for r in map(orjson.loads, body.read_bytes().splitlines())
                if r.get("type") == "call" and r.get("method") == "tools/call"}
    assert set(answered) <= recorded
    # shipped and confirmed: deleted locally (keep_local_days 0) but for the newest closed file
    assert [p.name for p in trail.parent.iterdir()] == [f"audit.jsonl.{len(files):06d}"]
