"""Shipping closed trail files to an S3 bucket under Object Lock (runtime/audit/shipper.py), against a
real S3 API (moto's server mode, tests/support/s3_server.py): the writer's side (a closed file ends
with a checkpoint, one chain id per chain, shutdown closes the file), keys, checksums and retention,
objects the bucket refuses to overwrite or delete, a store that is down for a while, a conflicting
object, a restart with files pending, and what gateway.yaml accepts.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from botocore.exceptions import ClientError

from gwc.compiler.build.keys import generate_keypair
from gwc.runtime.audit import shipper as shipping
from gwc.runtime.audit.chain import GENESIS, Head, seal, verify
from gwc.runtime.audit.objects import StoreUrl, parse_key
from gwc.runtime.audit.shipper import Shipper, read_closed
from gwc.runtime.audit.writer import AuditWriter, rotated, trail
from gwc.runtime.bundle.envelope import jwk_kid
from gwc.runtime.bundle.format import AuditStore, ObjectLock
from gwc.runtime.mcp.trail import Auditor, AuditTarget
from gwc.runtime.metrics import Metrics
from tests.support.helpers import GATEWAY, compile_root, gwc, write_registry
from tests.support.repo import REPO
from tests.support.s3_server import S3Server

NODE = "node-1"
LOCK = ObjectLock(mode="compliance", days=2)


@pytest.fixture
def key(tmp_path: Path):
    """The gateway key: signs the checkpoints."""
    return generate_keypair(tmp_path / "gateway")[2]


@pytest.fixture
def store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, reachable through the SDK's standard environment; retries come fast."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(shipping, "BACKOFF_S", (0.05, 0.2))
    return s3_server


def start_writer(path: Path, key, max_bytes: int = 2000) -> AuditWriter:
    writer = AuditWriter(NODE, path, max_bytes=max_bytes, signing_key=key)
    writer.start()
    return writer


async def submit(writer: AuditWriter, count: int, start: int = 0) -> list[str]:
    hashes: list[str] = []
    for first in range(start, start + count, 10):
        hashes += await asyncio.gather(*(writer.submit({"type": "call", "n": i, "tool": "echo"})
                                         for i in range(first, min(start + count, first + 10))))
    return hashes


async def closed_trail(path: Path, key, count: int) -> AuditWriter:
    """A trail of ``count`` calls written by a node without a store, its writer closed."""
    writer = start_writer(path, key)
    await submit(writer, count)
    writer.close()
    return writer


def start_shipper(writer: AuditWriter, path: Path, url: str, keep_local_days: float = 1,
                  lock: ObjectLock = LOCK, client=None) -> Shipper:
    shipper = Shipper(path, StoreUrl.parse(url), lock, keep_local_days, lambda: writer.chain,
                      client=client)
    writer.on_closed, writer.close_rotates = shipper.closed, True
    shipper.start()
    return shipper


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def objects(server: S3Server) -> dict[str, bytes]:
    client = server.client()
    listed = client.list_objects_v2(Bucket=server.bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=server.bucket, Key=o["Key"])["Body"].read()
            for o in listed}


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- the writer's side --------------------------------------------------------------------------

async def test_closed_files_end_with_a_checkpoint_and_every_start_names_one_chain(
        tmp_path: Path, key) -> None:
    path = tmp_path / "audit.jsonl"
    writer = start_writer(path, key, max_bytes=1500)
    await submit(writer, 40)
    writer.close()
    writer = start_writer(path, key, max_bytes=1500)  # a restart continues the chain and its id
    await submit(writer, 5, 40)
    writer.close()
    files = trail(path)
    assert len(files) >= 4
    for file in files[:-1]:
        *_, before, last = records(file)
        assert last["type"] == "checkpoint" and last["head"] == before["hash"]  # signs all else
    starts = [r for file in files for r in records(file) if r["type"] == "start"]
    assert len(starts) == len(files) + 1  # one per file, and the restart's
    assert len({s["chain"] for s in starts}) == 1 and len(starts[0]["chain"]) == 16
    assert all(records(file)[0].get("chain") == starts[0]["chain"] for file in files)
    assert verify(files, {jwk_kid(key.public_key()): key.public_key()}).ok


async def test_a_trail_from_before_chain_ids_gets_one_at_its_next_start(tmp_path: Path,
                                                                       key) -> None:
    path = tmp_path / "audit.jsonl"
    old = seal({"type": "start", "node": NODE, "ts": 1.0}, GENESIS)  # no chain: an old node's
    path.write_bytes(orjson.dumps(old) + b"\n")
    writer = start_writer(path, key)
    await submit(writer, 3)
    writer.close()
    chain = records(path)[1]["chain"]
    assert records(path)[1]["type"] == "start" and len(chain) == 16
    assert "chain" not in records(path)[0]  # the file's own first start record still has none
    writer = start_writer(path, key)
    writer.close()
    assert writer.chain == chain  # found in the newest start record
    assert verify([path]).ok


async def test_shutdown_with_a_store_closes_the_current_file_and_a_restart_chains_to_it(
        tmp_path: Path, key) -> None:
    path = tmp_path / "audit.jsonl"
    writer = start_writer(path, key, max_bytes=10**6)
    closed: list[Path] = []
    writer.on_closed, writer.close_rotates = closed.append, True
    await submit(writer, 5)
    writer.close()
    assert not path.exists() and closed == [tmp_path / "audit.jsonl.000001"]
    assert records(closed[0])[-1]["type"] == "checkpoint"
    writer = start_writer(path, key, max_bytes=10**6)
    await submit(writer, 2)
    writer.close()  # without a store: the current file stays
    assert path.exists() and records(path)[0]["prev"] == records(closed[0])[-1]["hash"]
    assert verify(trail(path)).ok and verify(trail(path)).from_genesis


# -- shipping ------------------------------------------------------------------------------------

async def test_closed_files_ship_with_their_keys_checksums_retention_and_signed_heads(
        tmp_path: Path, key, store: S3Server) -> None:
    path = tmp_path / "audit.jsonl"
    writer = start_writer(path, key)
    shipper = start_shipper(writer, path, store.url + "/gwc")
    hashes = await submit(writer, 60)
    writer.close()
    shipper.close()
    files = rotated(path)
    assert len(files) >= 4 and not path.exists()  # shutdown closed the current file too
    shipped = objects(store)
    assert len(shipped) == 2 * len(files)
    client, numbered = store.client(), []
    for file in files:
        closed = read_closed(file, writer.chain)
        numbered.append(closed.object)
        stem = f"gwc/{NODE}/{writer.chain}/{closed.object.first:012d}-{closed.object.last:012d}"
        assert shipped[stem + ".jsonl"] == file.read_bytes()
        assert parse_key(StoreUrl.parse(store.url + "/gwc"), stem + ".jsonl") == (
            closed.object, ".jsonl")
        meta = client.head_object(Bucket=store.bucket, Key=stem + ".jsonl", ChecksumMode="ENABLED")
        assert meta["ChecksumSHA256"] == base64.b64encode(
            hashlib.sha256(file.read_bytes()).digest()).decode()
        assert meta["ObjectLockMode"] == "COMPLIANCE"
        until = meta["ObjectLockRetainUntilDate"]
        assert timedelta(days=2) - timedelta(minutes=5) < until - datetime.now(UTC) <= timedelta(
            days=2)
        head = Head.of(json.loads(shipped[stem + ".head.json"]))
        assert head.signed_by(key.public_key()) and head.node == NODE
        assert head.seq == closed.object.last - 1  # the file's last line signs the one before
        assert head.head == records(file)[-2]["hash"]
    assert numbered[0].first == 1
    assert all(b.first == a.last + 1 for a, b in itertools.pairwise(numbered))
    assert numbered[-1].last == writer.sequence
    assert shipper.stats.shipped == len(files) and shipper.stats.pending == 0
    bodies = [tmp_path / f"shipped-{i:03d}.jsonl" for i in range(len(files))]
    for body, obj in zip(bodies, numbered, strict=True):
        body.write_bytes(shipped[obj.trail_key(StoreUrl.parse(store.url + "/gwc"))])
    verdict = verify(bodies, {jwk_kid(key.public_key()): key.public_key()})
    assert verdict.ok and verdict.from_genesis and verdict.last_seq == writer.sequence
    everything = {r["hash"] for body in bodies for r in records(body)}
    assert set(hashes) <= everything


async def test_a_shipped_object_cannot_be_overwritten_or_deleted_under_retention(
        tmp_path: Path, key, store: S3Server) -> None:
    path = tmp_path / "audit.jsonl"
    writer = start_writer(path, key, max_bytes=10**6)
    shipper = start_shipper(writer, path, store.url)
    await submit(writer, 3)
    writer.close()
    shipper.close()
    [name] = [k for k in objects(store) if k.endswith(".jsonl")]
    client = store.client()
    [version] = client.list_object_versions(Bucket=store.bucket, Prefix=name)["Versions"]
    with pytest.raises(ClientError) as refused:  # as the shipper writes: never over an object
        client.put_object(Bucket=store.bucket, Key=name, Body=b"forged\n", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=store.bucket, Key=name, VersionId=version["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # a plain PUT only stacks a newer version on top; the locked one still holds the file
    client.put_object(Bucket=store.bucket, Key=name, Body=b"forged\n")
    kept = client.get_object(Bucket=store.bucket, Key=name, VersionId=version["VersionId"])
    assert kept["Body"].read() == rotated(path)[0].read_bytes()


async def test_while_the_store_is_down_files_wait_and_calls_go_on_then_they_ship(
        tmp_path: Path, key, store: S3Server) -> None:
    path = tmp_path / "audit.jsonl"
    metrics = Metrics()
    auditor = Auditor(NODE, metrics, signing_key=key)
    auditor.start(AuditTarget("file", path), max_bytes=1500)
    store.stop()
    auditor.ship(AuditStore(url=store.url, object_lock=ObjectLock(
        mode="governance", days=1), keep_local_days=0))
    sample = metrics.registry.get_sample_value
    for n in range(60):  # every call is recorded while the store is down
        await auditor.write({"type": "call", "n": n})
    assert len(rotated(path)) >= 3
    wait_for(lambda: (sample("gwc_audit_ship_failures_total", {"reason": "store"}) or 0) >= 2)
    wait_for(lambda: sample("gwc_audit_ship_pending") == len(rotated(path)))  # a rotation
    # follows the batch that filled the file, so it may land just after the last write returned
    await asyncio.sleep(0.3)
    assert sample("gwc_audit_ship_oldest_pending_seconds") >= 0.3
    assert (sample("gwc_audit_shipped_total") or 0) == 0
    store.start()  # back (empty, as moto keeps objects in memory)
    wait_for(lambda: sample("gwc_audit_ship_pending") == 0)
    assert sample("gwc_audit_ship_oldest_pending_seconds") == 0
    shipped = int(sample("gwc_audit_shipped_total"))
    assert shipped >= 3 and len(objects(store)) == 2 * shipped
    wait_for(lambda: len(rotated(path)) == 1)  # keep_local_days 0: deleted, but the newest
    auditor.close()  # the current file closes and ships; the newest closed one is now that
    assert int(sample("gwc_audit_shipped_total")) == shipped + 1
    assert len(rotated(path)) == 1 and not path.exists()
    final = read_closed(rotated(path)[0], auditor._writer.chain).object  # type: ignore[union-attr]
    assert final.last == auditor._writer.sequence  # type: ignore[union-attr]
    assert final.trail_key(StoreUrl.parse(store.url)) in objects(store)


async def test_a_different_object_at_a_file_s_key_is_never_overwritten_and_the_file_is_kept(
        tmp_path: Path, key, store: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    writer = await closed_trail(path, key, 40)
    first, *others = rotated(path)
    taken = read_closed(first, writer.chain).object.trail_key(StoreUrl.parse(store.url))
    client = store.client()
    client.put_object(Bucket=store.bucket, Key=taken, Body=b"someone else's\n",
                      ObjectLockMode="COMPLIANCE",
                      ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1))
    writer = start_writer(path, key)
    shipper = start_shipper(writer, path, store.url, keep_local_days=0)
    wait_for(lambda: shipper.stats.failures.get("conflict") == 1 and shipper.stats.pending == 1)
    writer.close()
    shipper.close()
    assert client.get_object(Bucket=store.bucket, Key=taken)["Body"].read() == b"someone else's\n"
    assert first.exists()  # kept locally, whatever keep_local_days says
    assert shipper.stats.pending == 1 and shipper.stats.shipped == len(others) + 1
    assert any("different bytes" in getattr(r, "reason", "") for r in caplog.records)


async def test_a_restart_ships_what_is_pending_and_does_not_write_twice(
        tmp_path: Path, key, store: S3Server) -> None:
    path = tmp_path / "audit.jsonl"
    # a node without a store (or one that died) left these closed files
    writer = await closed_trail(path, key, 30)
    waiting = rotated(path)
    assert waiting
    writer = start_writer(path, key)
    shipper = start_shipper(writer, path, store.url)
    wait_for(lambda: shipper.stats.shipped == len(waiting))
    writer.close()
    shipper.close()
    before = objects(store)
    writer = start_writer(path, key)  # kept locally (keep_local_days 1): pending again, found
    shipper = start_shipper(writer, path, store.url)
    writer.close()
    shipper.close()
    assert shipper.stats.shipped == len(rotated(path)) and shipper.stats.pending == 0
    client = store.client()
    versions = client.list_object_versions(Bucket=store.bucket)["Versions"]
    assert len(versions) == len(objects(store)) == len(before) + 2  # one object each, ever


async def test_a_file_shipped_before_a_lost_answer_counts_as_shipped(
        tmp_path: Path, key, store: S3Server) -> None:
    """The object is there with the same bytes (the node's PUT landed, its answer was lost): the
    conditional PUT is refused, the checksums agree, the file is confirmed."""
    path = tmp_path / "audit.jsonl"
    writer = start_writer(path, key, max_bytes=10**6)
    await submit(writer, 3)
    writer.close_rotates = True
    writer.close()
    [file] = rotated(path)
    closed = read_closed(file, writer.chain)
    shipper = Shipper(path, StoreUrl.parse(store.url), LOCK, 0, lambda: writer.chain)
    shipper._client = shipping._default_client()
    shipper._pending[file] = file.stat().st_mtime
    shipper._head = lambda key: None  # as if the HEAD before the PUT had found nothing
    store.client().put_object(Bucket=store.bucket, Key=closed.object.trail_key(
        StoreUrl.parse(store.url)), Body=file.read_bytes(), ChecksumAlgorithm="SHA256",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(shipping.StoreError, match="not in the bucket after"):
        shipper._ship(file)  # the stubbed HEAD sees nothing, even after the PUT
    versions = store.client().list_object_versions(Bucket=store.bucket)["Versions"]
    assert len(versions) == 1  # the PUT was refused (If-None-Match): no second version
    del shipper._head
    shipper._ship(file)
    assert shipper.stats.shipped == 1


def test_a_node_without_a_store_does_not_load_boto3() -> None:
    code = ("import sys; import gwc.runtime.app, gwc.runtime.mcp.trail; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('boto3', 'botocore', 'gwc') and ('boto' in m or 'shipper' in m)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_node_writing_no_file_says_it_ships_nothing(tmp_path: Path, key,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    auditor = Auditor(NODE, Metrics(), signing_key=key)
    auditor.start(AuditTarget("stdout"))
    with caplog.at_level(logging.WARNING, "gwc.audit"):
        auditor.ship(AuditStore(url="s3://gwc-audit", object_lock=ObjectLock(
            mode="compliance", days=1), keep_local_days=0))
    auditor.close()
    assert auditor.shipper is None and "ships nothing" in caplog.text


# -- gateway.yaml --------------------------------------------------------------------------------

STORE = {"url": "s3://acme-audit/gwc", "object_lock": {"mode": "compliance", "days": 400}}


@pytest.mark.parametrize("audit, says", [
    ({"sink": "stdout", "store": STORE}, "needs sink 'file' or 'both'"),
    ({"sink": "file", "path": "a.jsonl", "store": {**STORE, "url": "https://acme/audit"}},
     "is not valid (expected matching ^s3://"),
    ({"sink": "file", "path": "a.jsonl", "store": {**STORE, "object_lock": {
        "mode": "legal-hold", "days": 1}}}, "unknown mode 'legal-hold'"),
    ({"sink": "file", "path": "a.jsonl", "store": {**STORE, "object_lock": {
        "mode": "compliance", "days": 0}}}, "days 0 is out of bounds"),
    ({"sink": "file", "path": "a.jsonl", "store": {"url": "s3://acme-audit"}}, "object_lock"),
])
def test_gateway_yaml_refuses_a_store_it_cannot_ship_to(tmp_path: Path, audit: dict,
                                                       says: str) -> None:
    root = write_registry(tmp_path, gateway={**GATEWAY, "audit": audit})
    result = gwc("validate", root)
    assert result.exit_code == 1
    assert "gateway.yaml:" in result.output and says in result.output, result.output


def test_the_store_compiles_into_the_bundle_and_none_leaves_the_bundle_as_it_was(
        tmp_path: Path) -> None:
    audit = {"sink": "both", "path": "/var/log/gwc/audit.jsonl"}
    plain = compile_root(write_registry(tmp_path / "a", gateway={**GATEWAY, "audit": audit}))
    shipped = compile_root(write_registry(tmp_path / "b", gateway={**GATEWAY, "audit": {
        **audit, "store": STORE}}))
    assert "store" not in plain.gateway.audit.model_dump(exclude_none=True)
    assert shipped.gateway.audit.store == AuditStore(url="s3://acme-audit/gwc", object_lock=(
        ObjectLock(mode="compliance", days=400)), keep_local_days=7,
        max_file_age_minutes=60)


@pytest.mark.parametrize("url, ok", [
    ("s3://acme-audit", True), ("s3://acme-audit/gwc/prod/", True), ("s3://a.b-c/x", True),
    ("s3://Acme/x", False), ("s3://ab", False), ("https://acme-audit/x", False),
    ("s3://-acme/x", False), ("s3:///x", False),
])
def test_gateway_yaml_takes_the_urls_nodes_parse(url: str, ok: bool) -> None:
    import re

    from gwc.compiler.build.models import STORE_URL
    from gwc.runtime.audit.objects import StoreUrlError

    assert bool(re.match(STORE_URL, url)) is ok
    try:
        StoreUrl.parse(url)
        parsed = True
    except StoreUrlError:
        parsed = False
    assert parsed is ok


class OldWriter(AuditWriter):
    """A writer from before chain ids and closing checkpoints: its start records have no chain,
    and it rotates without signing the file's end."""

    def _begin(self, records: list[dict]) -> None:
        from gwc.runtime.audit.chain import encode

        start = {"type": "start", "node": self._node, "ts": time.time()}
        self._append([encode(r, self._placeholder) for r in (start, *records)], checkpoint=True)

    def _close_file(self) -> None:
        assert self._file is not None and self._path is not None
        self._file.close()
        number = len(rotated(self._path)) + 1
        self._path.rename(self._path.with_name(f"{self._path.name}.{number:06d}"))


async def test_files_from_before_chain_ids_ship_under_the_chain_the_upgrade_names(
        tmp_path: Path, key, store: S3Server) -> None:
    path = tmp_path / "audit.jsonl"
    old = OldWriter(NODE, path, max_bytes=1500, signing_key=key)
    old.start()
    await submit(old, 30)
    old.close()
    legacy = rotated(path)
    assert legacy and all("chain" not in records(file)[0] for file in legacy)
    assert records(legacy[0])[-1]["type"] != "checkpoint"  # no closing checkpoint then
    writer = start_writer(path, key)  # the upgraded node
    shipper = start_shipper(writer, path, store.url)
    await submit(writer, 5, 30)
    writer.close()
    shipper.close()
    assert shipper.stats.pending == 0 and shipper.stats.shipped == len(rotated(path))
    objs = sorted(o for o, suffix in map(lambda k: parse_key(StoreUrl.parse(store.url), k),
                                         objects(store)) if suffix == ".jsonl")
    assert {o.chain for o in objs} == {writer.chain}
    assert objs[0].first == 1 and objs[-1].last == writer.sequence
    assert all(b.first == a.last + 1 for a, b in itertools.pairwise(objs))


# -- what the review found ----------------------------------------------------------------------

class NoRetentionRead:
    """An S3 client whose HEAD answers as AWS does for a role without s3:GetObjectRetention."""

    def __init__(self) -> None:
        self._client = shipping._default_client()

    def put_object(self, **kwargs):
        return self._client.put_object(**kwargs)

    def head_object(self, **kwargs):
        found = self._client.head_object(**kwargs)
        found.pop("ObjectLockMode", None)
        found.pop("ObjectLockRetainUntilDate", None)
        return found


async def test_a_node_that_cannot_read_retention_still_ships_each_file_with_its_head(
        tmp_path: Path, key, store: S3Server) -> None:
    """Its lock unconfirmed, a file is held (``unlocked``), but the bucket never holds a file
    without its signed head: that would read as a shipment cut short."""
    path = tmp_path / "audit.jsonl"
    writer = start_writer(path, key)
    shipper = start_shipper(writer, path, store.url, 0, client=NoRetentionRead)
    await submit(writer, 30)
    writer.close()
    shipper.close()
    keys = list(objects(store))
    trails = [k for k in keys if k.endswith(".jsonl")]
    assert trails and sorted(k.removesuffix(".jsonl") for k in trails) == sorted(
        k.removesuffix(".head.json") for k in keys if k.endswith(".head.json"))
    assert shipper.stats.failures.get("unlocked") == len(trails) and shipper.stats.shipped == 0


async def test_a_bucket_without_object_lock_is_an_unlocked_failure_not_a_store_one(
        tmp_path: Path, key, store: S3Server) -> None:
    store.client().create_bucket(Bucket="no-lock")
    path = tmp_path / "audit.jsonl"
    writer = start_writer(path, key)
    shipper = start_shipper(writer, path, "s3://no-lock")
    await submit(writer, 30)
    wait_for(lambda: shipper.stats.failures.get("unlocked", 0) >= 1)
    writer.close()
    shipper.close()
    assert "store" not in shipper.stats.failures and shipper.stats.shipped == 0


async def test_a_closed_file_gone_before_it_shipped_is_counted_and_logged(
        tmp_path: Path, key, store: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    writer = await closed_trail(path, key, 40)
    gone = rotated(path)[0]
    shipper = Shipper(path, StoreUrl.parse(store.url), LOCK, 1, lambda: writer.chain)
    shipper._notices.put(gone)  # closed, then removed by hand before the shipper reads it
    gone.unlink()
    shipper.start()
    wait_for(lambda: shipper.stats.failures.get("missing") == 1)
    shipper.close()
    assert any(getattr(r, "failure", "") == "missing" and r.levelname == "ERROR"
               for r in caplog.records)


async def test_a_quiet_node_closes_a_file_that_has_held_records_too_long(
        tmp_path: Path, key, store: S3Server) -> None:
    """Records reach the bucket within the age limit, not only when a file fills."""
    path = tmp_path / "audit.jsonl"
    writer = start_writer(path, key, max_bytes=10**9)
    shipper = start_shipper(writer, path, store.url)
    writer.max_file_age_s = 0.5
    await submit(writer, 3)
    wait_for(lambda: shipper.stats.shipped == 1, timeout=10)
    time.sleep(1.0)  # nothing more written: the new file holds no records, so no more closes
    assert len(rotated(path)) == 1 and shipper.stats.shipped == 1
    writer.close()
    shipper.close()
    shipped = [orjson.loads(line) for key_, body in objects(store).items()
               if key_.endswith(".jsonl") for line in body.splitlines()]
    assert [r["n"] for r in shipped if r["type"] == "call"] == [0, 1, 2]


def test_gateway_yaml_keeps_files_locally_no_longer_than_their_lock(tmp_path: Path) -> None:
    root = write_registry(tmp_path, gateway={**GATEWAY, "audit": {
        "sink": "file", "path": "a.jsonl", "store": {**STORE, "object_lock": {
            "mode": "compliance", "days": 3}, "keep_local_days": 7}}})
    result = gwc("validate", root)
    assert result.exit_code == 1
    assert "keep_local_days (7) must not exceed object_lock.days (3)" in result.output
