"""`gwc audit verify|query|replay` reading shipped trail files straight from a bucket
(``s3://bucket/prefix``): a real S3 API (moto's server mode, Object Lock on), trails written by the
real AuditWriter with a signing key, each closed file uploaded under the key the layout gives it
(``gwc.runtime.audit.objects``), numbered from its own records.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gwc.compiler.audit import store as audit_store
from gwc.compiler.build.keys import generate_keypair
from gwc.runtime.audit.chain import Head
from gwc.runtime.audit.objects import StoreUrl, TrailObject
from gwc.runtime.audit.writer import AuditWriter, trail
from tests.cli.test_audit_tools import RECORDING, build_bundle, request_ids, trail_records
from tests.support.helpers import gwc
from tests.support.repo import REPO

PREFIX = "prod"
CHAIN = "0123456789abcdef"


@pytest.fixture(autouse=True)
def fresh_clients():
    """Each test's store is a new server: no S3 client is kept from another test."""
    audit_store._clients.clear()
    yield
    audit_store._clients.clear()


async def _write(path: Path, records: list[dict[str, Any]], key, node: str) -> None:
    # A checkpoint after every batch: each closed file ends with one, as a shipping node's do.
    writer = AuditWriter(node, path, max_bytes=2048, signing_key=key, checkpoint_records=1)
    writer.start()
    try:
        for record in records:
            await writer.submit({**record, "node": node})
    finally:
        writer.close()


def numbered(path: Path) -> tuple[TrailObject, Head]:
    """The file's place in its chain, read off its own records as a shipping node reads it: a
    checkpoint's own number is one after the record it signs."""
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    at, checkpoint = next((i, r) for i, r in reversed(list(enumerate(map(orjson.loads, lines), 1)))
                          if r["type"] == "checkpoint")
    first = checkpoint["seq"] + 1 - at + 1
    start = orjson.loads(lines[0])
    chain = start.get("chain") or CHAIN  # a writer before chain ids: the shipper names one
    return TrailObject(start["node"], chain, first, first + len(lines) - 1), Head.of(checkpoint)


def ship(client, files: list[Path], prefix: str = PREFIX, skip: tuple[int, ...] = (),
         heads: bool = True, lock: bool = False, chain: str | None = None,
         shift: int = 0) -> list[str]:
    """Upload each file (and its head object) as a node ships it; the trail keys, in order.
    ``chain`` and ``shift`` make keys that lie (another chain, numbers moved by ``shift``)."""
    store, keys = StoreUrl("gwc-audit", prefix), []
    for index, path in enumerate(files):
        obj, head = numbered(path)
        obj = TrailObject(obj.node, chain or obj.chain, obj.first + shift, obj.last + shift)
        keys.append(obj.trail_key(store))
        if index in skip:
            continue
        extra: dict[str, Any] = {}
        if lock:
            extra = {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate":
                     dt.datetime.now(dt.UTC) + dt.timedelta(days=1)}
        client.put_object(Bucket="gwc-audit", Key=obj.trail_key(store), Body=path.read_bytes(),
                          **extra)
        if heads:
            client.put_object(Bucket="gwc-audit", Key=obj.head_key(store),
                              Body=orjson.dumps(head.fields(), option=orjson.OPT_SORT_KEYS),
                              **extra)
    return keys


@pytest.fixture
def world(tmp_path: Path, s3_server) -> dict[str, Any]:
    """A signed bundle, node-1's trail rotated into several files, and the store."""
    _, pub, key = generate_keypair(tmp_path / "keys" / "ci")
    bundle = build_bundle(tmp_path / "reg", RECORDING, key, tmp_path / "out", 1)
    path = tmp_path / "node-1" / "audit.jsonl"
    records = trail_records(bundle)
    asyncio.run(_write(path, records, key, "node-1"))
    files = trail(path)
    assert len(files) >= 4
    return {"files": files, "chain": numbered(files[0])[0].chain, "key": key, "pub": pub,
            "out": tmp_path / "out", "tmp": tmp_path, "records": records, "s3": s3_server,
            "client": s3_server.client(), "env": s3_server.env(), "url": f"s3://gwc-audit/{PREFIX}"}


def run(world: dict[str, Any], *args: Any):
    return gwc("audit", *args, env=world["env"])


def url_of(key: str) -> str:
    return f"s3://gwc-audit/{key}"


def erase(client, key: str) -> None:
    """Every version of the key gone (a store's lifecycle rule, or one never uploaded): no delete
    marker left, which verify would call tampering."""
    for version in client.list_object_versions(Bucket="gwc-audit", Prefix=key).get("Versions", []):
        if version["Key"] == key:
            client.delete_object(Bucket="gwc-audit", Key=key, VersionId=version["VersionId"])


def record_count(files: list[Path]) -> int:
    return sum(1 for path in files for line in path.read_bytes().splitlines() if line.strip())


# --- verify ---------------------------------------------------------------------------------------

def test_verify_reads_every_chain_of_the_bucket(world) -> None:
    keys = ship(world["client"], world["files"], lock=True)
    other = world["tmp"] / "node 2" / "audit.jsonl"  # a name the key percent-encodes
    asyncio.run(_write(other, world["records"][:2], world["key"], "node 2/b"))
    ship(world["client"], trail(other))
    result = run(world, "verify", world["url"], "--key", world["pub"])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr == ""
    n, m, chain = record_count(world["files"]), record_count(trail(other)), numbered(other)[0].chain
    assert result.stdout.splitlines() == [  # a checkpoint after every record
        f"ok: node 2/b (chain {chain} in {world['url']}): {m} records in {len(trail(other))} "
        f"object(s), chain intact, from the start of the trail; {m // 2} checkpoint(s) signed by "
        f"the gateway key; {len(trail(other))} head object(s) match their files",
        f"ok: node-1 (chain {world['chain']} in {world['url']}): {n} records in {len(keys)} object(s), "
        f"chain intact, from the start of the trail; {n // 2} checkpoint(s) signed by the "
        f"gateway key; {len(keys)} head object(s) match their files"]
    local = run(world, "verify", *world["files"])  # the same count as the files themselves
    assert f": {n} records in {len(keys)} file(s)" in local.stdout


def test_a_missing_middle_file_is_a_gap_naming_its_records_and_neighbours(world) -> None:
    keys = ship(world["client"], world["files"], skip=(1,))
    before, missing, after = (numbered(world["files"][i])[0] for i in range(3))
    result = run(world, "verify", world["url"], "--key", world["pub"])
    assert result.exit_code == 1
    assert (f"gwc: tampered: node-1 (chain {world['chain']} in {world['url']}): records "
            f"{missing.first}..{missing.last} are missing: no object holds them, between "
            f"{url_of(keys[0])} and {url_of(keys[2])}") in result.stderr
    assert before.last + 1 == missing.first and missing.last + 1 == after.first
    # The records after the gap are checked too: nothing else is wrong.
    assert result.stderr.count("gwc: ") == 1, result.stderr
    assert result.stdout.startswith("tampered: node-1")
    assert "chain intact within 2 runs, 1 gap(s)" in result.stdout
    # The missing file's head object, still there, names it too.
    store = StoreUrl("gwc-audit", PREFIX)
    world["client"].put_object(Bucket="gwc-audit", Key=missing.head_key(store),
                               Body=orjson.dumps(numbered(world["files"][1])[1].fields()))
    again = run(world, "verify", world["url"], "--key", world["pub"])
    assert again.exit_code == 1
    assert (f"gwc: tampered: {url_of(missing.head_key(store))} has no trail object: "
            f"{url_of(missing.trail_key(store))} is missing") in again.stderr


def test_files_gone_from_the_start_make_a_later_segment_not_a_finding(world) -> None:
    ship(world["client"], world["files"], skip=(0, 1))
    first = numbered(world["files"][2])[0].first
    result = run(world, "verify", world["url"], "--key", world["pub"])
    assert result.exit_code == 0, result.stderr
    assert f"from record {first} (the objects before it are not in the store" in result.stdout
    # A head object whose file expired before it: counted, not a finding.
    gone, head = numbered(world["files"][0])
    world["client"].put_object(Bucket="gwc-audit", Key=gone.head_key(StoreUrl("gwc-audit", PREFIX)),
                               Body=orjson.dumps(head.fields()))
    later = run(world, "verify", world["url"], "--key", world["pub"])
    assert later.exit_code == 0 and later.stderr == ""
    assert later.stdout.rstrip().endswith("; 1 head object(s) of files no longer in the store")


def test_keys_must_number_the_records_as_their_checkpoints_do(world) -> None:
    keys = ship(world["client"], world["files"], shift=10)  # the whole trail, numbered from 11
    result = run(world, "verify", world["url"], "--key", world["pub"])
    assert result.exit_code == 1
    assert (f"gwc: tampered: {url_of(keys[0])}: its key numbers its first record 11, the "
            "chain's checkpoints 1") in result.stderr
    assert "from record 11" not in result.stdout  # the chain itself starts at genesis


def test_an_edited_record_in_an_object_is_named_by_its_url_and_line(world) -> None:
    lines = world["files"][2].read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"node-1"', b'"node-9"', 1)
    world["files"][2].write_bytes(b"".join(lines))  # edited before it was written to the store
    keys = ship(world["client"], world["files"])
    result = run(world, "verify", world["url"])
    assert result.exit_code == 1
    assert (f"gwc: tampered: {url_of(keys[2])}:3: the record was altered: its hash does not "
            "match it") in result.stderr
    assert "/tmp" not in result.stderr and "Traceback" not in result.stderr


def test_a_key_that_miscounts_its_records_is_a_finding(world) -> None:
    keys = ship(world["client"], world["files"][:3])
    obj, head = numbered(world["files"][3])
    wrong = TrailObject(obj.node, obj.chain, obj.first, obj.last + 1)
    store = StoreUrl("gwc-audit", PREFIX)
    world["client"].put_object(Bucket="gwc-audit", Key=wrong.trail_key(store),
                               Body=world["files"][3].read_bytes())
    world["client"].put_object(Bucket="gwc-audit", Key=wrong.head_key(store),
                               Body=orjson.dumps(head.fields()))
    result = run(world, "verify", world["url"])
    assert result.exit_code == 1
    assert (f"gwc: tampered: {url_of(wrong.trail_key(store))}: its key says records "
            f"{obj.first}..{obj.last + 1} ({obj.last - obj.first + 2}), it holds "
            f"{obj.last - obj.first + 1}") in result.stderr
    assert keys


def test_head_objects_must_be_their_files_last_checkpoint(world) -> None:
    keys = ship(world["client"], world["files"])
    store = StoreUrl("gwc-audit", PREFIX)
    # File 1's head object replaced by file 0's (a real, signed head: of another record).
    swapped = numbered(world["files"][1])[0].head_key(store)
    erase(world["client"], swapped)
    world["client"].put_object(Bucket="gwc-audit", Key=swapped, Body=orjson.dumps(
        numbered(world["files"][0])[1].fields()))
    result = run(world, "verify", world["url"], "--key", world["pub"])
    assert result.exit_code == 1
    assert f"gwc: tampered: {url_of(swapped)} is not the last checkpoint of its file" \
        in result.stderr
    assert keys


def test_a_file_without_its_head_object_is_a_cut_shipment(world) -> None:
    ship(world["client"], world["files"])
    store = StoreUrl("gwc-audit", PREFIX)
    newest = numbered(world["files"][-1])[0]
    erase(world["client"], newest.head_key(store))
    result = run(world, "verify", world["url"])
    assert result.exit_code == 3
    assert (f"gwc: crash: {url_of(newest.trail_key(store))} has no head object (.head.json)"
            in result.stderr)
    assert result.stdout.startswith("crash: node-1")


def test_a_head_object_past_the_last_file_is_a_truncation(world) -> None:
    ship(world["client"], world["files"])
    store = StoreUrl("gwc-audit", PREFIX)
    newest, head = numbered(world["files"][-1])
    erase(world["client"], newest.trail_key(store))
    result = run(world, "verify", world["url"], "--key", world["pub"])
    assert result.exit_code == 4, result.stderr
    assert (f"gwc: truncated: {url_of(newest.head_key(store))} signs record {head.seq}, but the "
            f"chain's objects end at record {newest.first - 1}") in result.stderr
    # A chain of which only head objects are left: every file they sign is gone.
    orphan = TrailObject("node-1", "fedcba9876543210", newest.first, newest.last)
    world["client"].put_object(Bucket="gwc-audit", Key=orphan.head_key(store),
                               Body=orjson.dumps(head.fields()))
    both = run(world, "verify", world["url"], "--key", world["pub"])
    assert both.exit_code == 4
    assert (f"gwc: truncated: node-1 (chain fedcba9876543210 in {world['url']}): 1 head "
            f"object(s), up to record {newest.last}, and none of their files") in both.stderr


def test_an_anchor_checks_the_chain_in_the_bucket(world) -> None:
    ship(world["client"], world["files"][:-1])
    _, head = numbered(world["files"][-1])
    anchor = world["tmp"] / "head.json"
    anchor.write_bytes(orjson.dumps(head.fields()))
    result = run(world, "verify", world["url"], "--anchor", anchor)
    assert result.exit_code == 4
    assert "before the anchored head" in result.stderr


def test_an_anchor_goes_to_the_chain_that_holds_it_not_the_newest(world) -> None:
    ship(world["client"], world["files"])
    other = world["tmp"] / "node-1-again" / "audit.jsonl"  # the node lost its disk: a new chain
    asyncio.run(_write(other, world["records"][:2], world["key"], "node-1"))
    time.sleep(1.1)  # its objects are the newer ones, to the second
    ship(world["client"], trail(other))
    again = numbered(trail(other)[0])[0].chain
    assert again != world["chain"]
    anchor = world["tmp"] / "head.json"  # a head saved from the old chain, before the disk went
    anchor.write_bytes(orjson.dumps(numbered(world["files"][-1])[1].fields()))
    result = run(world, "verify", world["url"], "--key", world["pub"], "--anchor", anchor)
    assert result.exit_code == 0, result.stdout + result.stderr
    old, new = result.stdout.splitlines()[::-1] if again < world["chain"] else \
        result.stdout.splitlines()
    assert old.startswith(f"ok: node-1 (chain {world['chain']} ") and \
        "; 1 anchored head(s) found" in old
    assert new.startswith(f"ok: node-1 (chain {again} ") and "anchored" not in new
    # An anchor no chain holds still goes to the newest, whose check reports it.
    forged = Head.sign(world["key"], "node-1", 1, "0" * 64)
    anchor.write_bytes(orjson.dumps(forged.fields()))
    missing = run(world, "verify", world["url"], "--key", world["pub"], "--anchor", anchor)
    assert missing.exit_code == 1, missing.stdout + missing.stderr
    assert f"tampered: node-1 (chain {again} " in missing.stdout


def test_files_and_a_bucket_side_by_side(world) -> None:
    ship(world["client"], world["files"])
    local = world["tmp"] / "node-2" / "audit.jsonl"
    asyncio.run(_write(local, world["records"][:3], world["key"], "node-2"))
    result = run(world, "verify", *trail(local), world["url"])
    assert result.exit_code == 0, result.stderr
    assert [line.split(":")[0:2] for line in result.stdout.splitlines()] == [
        ["ok", " node-2"], ["ok", f" node-1 (chain {world['chain']} in s3"]]
    lines = local.read_bytes().splitlines(keepends=True)
    local.write_bytes(b"".join([*lines[:2], *lines[3:]]))
    broken = run(world, "verify", *trail(local), world["url"])
    assert broken.exit_code == 1 and f"{local}:3: the chain is broken here" in broken.stderr
    assert f"ok: node-1 (chain {world['chain']}" in broken.stdout


def test_a_key_must_name_the_chain_its_start_record_names(world) -> None:
    keys = ship(world["client"], world["files"], chain="fedcba9876543210")
    assert world["chain"] != "fedcba9876543210"
    result = run(world, "verify", world["url"])
    assert result.exit_code == 1
    assert (f"gwc: tampered: {url_of(keys[0])}: its key names chain fedcba9876543210, its start "
            f"record chain {world['chain']}") in result.stderr


def test_only_the_layout_under_the_prefix_is_read(world) -> None:
    ship(world["client"], world["files"])
    ship(world["client"], world["files"][:1], prefix="staging")
    client = world["client"]
    for key in (f"{PREFIX}/README.md", f"{PREFIX}/node-1/{CHAIN}/notes.jsonl",
                f"{PREFIX}/node-1/not-a-chain/000000000001-000000000002.jsonl",
                f"{PREFIX}x/node-1/{CHAIN}/000000000001-000000000002.jsonl"):
        client.put_object(Bucket="gwc-audit", Key=key, Body=b"not a trail\n")
    prod = run(world, "verify", world["url"])
    assert prod.exit_code == 0, prod.stderr
    assert f"{len(world['files'])} object(s)" in prod.stdout and len(prod.stdout.splitlines()) == 1
    staging = run(world, "verify", "s3://gwc-audit/staging/")
    assert staging.exit_code == 0 and "in 1 object(s)" in staging.stdout
    whole = run(world, "verify", "s3://gwc-audit")  # keys one level deeper are not its layout
    assert whole.exit_code == 2 and "no trail files in it" in whole.stderr


@pytest.mark.parametrize("argument, env, message", [
    ("gs://gwc-audit/prod", {}, "'gs://gwc-audit/prod' is not an s3://bucket/prefix URL"),
    ("s3://Not_A_Bucket/prod", {}, "is not an S3 bucket name"),
    ("s3://no-such-bucket/prod", {}, "s3://no-such-bucket/prod: cannot list it: no such bucket"),
    ("s3://gwc-audit/empty", {}, "s3://gwc-audit/empty: no trail files in it"),
    ("s3://gwc-audit/prod", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
     "cannot list it: no AWS credentials found"),
    ("s3://gwc-audit/prod", {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"},
     "cannot list it: cannot reach the store at http://127.0.0.1:9\n"),
])
def test_a_store_that_cannot_be_read_is_a_usage_error(tmp_path, s3_server, argument, env,
                                                      message) -> None:
    for command in ("verify", "query", "replay"):
        extra = ("--bundles", tmp_path, "--no-verify") if command == "replay" else ()
        result = gwc("audit", command, argument, *extra, env={**s3_server.env(), **env})
        assert result.exit_code == 2, result.stdout + result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


# --- query and replay -----------------------------------------------------------------------------

@pytest.mark.parametrize("filters", [(), ("--user", "alice"), ("--server", "deploy", "--since",
                                                                "2026-11-20"),
                                     ("--decision", "deny", "--decision", "not_found")])
def test_query_from_the_bucket_is_query_from_the_files(world, filters) -> None:
    ship(world["client"], world["files"])
    from_files = run(world, "query", *reversed(world["files"]), "--format", "json", *filters)
    from_bucket = run(world, "query", world["url"], "--format", "json", *filters)
    assert from_bucket.exit_code == from_files.exit_code == 0, from_bucket.stderr
    assert from_bucket.stdout == from_files.stdout and from_files.stdout.strip()
    assert from_bucket.stderr == from_files.stderr  # the count: records, files, bytes
    assert request_ids(run(world, "query", world["url"], world["files"][0], "--format", "json",
                           "--user", "bob").stdout) == ["r5", "a1"]  # files first, then stores


def test_a_corrupt_line_in_an_object_is_named_by_its_url(world) -> None:
    keys = ship(world["client"], world["files"], skip=(1,))  # file 1 goes in corrupt, once
    lines = world["files"][1].read_bytes().splitlines(keepends=True)
    world["client"].put_object(Bucket="gwc-audit", Key=keys[1],
                               Body=b"".join([*lines[:1], b'{"type":"call",oops\n', *lines[1:]]))
    result = run(world, "query", world["url"], "--format", "json")
    assert result.exit_code == 1
    assert f"gwc: {url_of(keys[1])}:2: not a JSON record" in result.stderr


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_replay_from_the_bucket_is_replay_from_the_files(world, jobs) -> None:
    keys = ship(world["client"], world["files"])
    args = ("--bundles", world["out"], "--trust", world["pub"], "--jobs", jobs, "--format", "json")
    from_files = run(world, "replay", *world["files"], *args)
    from_bucket = run(world, "replay", world["url"], *args)
    assert from_files.exit_code == from_bucket.exit_code == 0, from_bucket.stderr
    assert from_bucket.stdout == from_files.stdout  # no findings: the summaries
    assert orjson.loads(from_bucket.stdout)["same"] == 8
    assert from_bucket.stderr == from_files.stderr
    # Findings name the object: the proposed bundle is replaced by a stranger's signing key.
    _, stranger, _ = generate_keypair(world["tmp"] / "keys" / "stranger")
    refused = run(world, "replay", world["url"], "--bundles", world["out"], "--trust", stranger,
                  "--jobs", jobs, "--format", "json")
    found = [orjson.loads(line) for line in refused.stdout.splitlines()][:-1]
    assert refused.exit_code == 1 and len(found) == 8
    assert {f["file"] for f in found} <= {url_of(key) for key in keys}
    assert [f["request_id"] for f in found] == ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"]


@pytest.mark.parametrize("command", ["verify", "query"])
def test_reading_files_loads_nothing_of_the_store(world, command) -> None:
    code = ("import sys; from click.testing import CliRunner; from gwc.compiler.cli import main; "
            f"r = CliRunner().invoke(main, ['audit', {command!r}, {str(world['files'][0])!r}]); "
            "assert r.exit_code == 0, r.output; "
            "loaded = {'boto3', 'botocore', 'gwc.compiler.audit.store', "
            "'gwc.runtime.audit.objects'} & set(sys.modules); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


async def _write_and_ship(path: Path, records: list[dict[str, Any]], key, url: str) -> AuditWriter:
    """A node's writer and shipper, as gwc-runtime wires them (audit.store in gateway.yaml)."""
    from gwc.runtime.audit.shipper import Shipper
    from gwc.runtime.bundle.format import ObjectLock

    writer = AuditWriter("node-7", path, max_bytes=2048, signing_key=key)
    writer.close_rotates = True
    shipper = Shipper(path, StoreUrl.parse(url), ObjectLock(mode="governance", days=1), 1,
                      lambda: writer.chain)
    writer.on_closed = shipper.closed
    shipper.start()
    writer.start()
    try:
        for record in records:
            await writer.submit({**record, "node": "node-7"})
    finally:
        writer.close()
        shipper.close()
    return writer


def test_what_a_node_shipped_reads_back_as_its_files(world, monkeypatch) -> None:
    for name, value in world["env"].items():
        monkeypatch.setenv(name, value)
    path, url = world["tmp"] / "node-7" / "audit.jsonl", "s3://gwc-audit/fleet"
    writer = asyncio.run(_write_and_ship(path, world["records"], world["key"], url))
    files = trail(path)  # closed and kept locally (keep_local_days 1)
    assert len(files) >= 3 and not path.exists()
    result = run(world, "verify", url, "--key", world["pub"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(
        f"ok: node-7 (chain {writer.chain} in {url}): {record_count(files)} records in "
        f"{len(files)} object(s), chain intact, from the start of the trail; ")
    assert result.stdout.rstrip().endswith(f"; {len(files)} head object(s) match their files")
    from_files = run(world, "query", *files, "--format", "json", "--user", "alice")
    assert run(world, "query", url, "--format", "json", "--user", "alice").stdout == \
        from_files.stdout and request_ids(from_files.stdout) == ["r1", "r2", "l1", "r3", "r4",
                                                                "r8", "a1"]


def test_an_object_gone_since_the_listing_is_an_error_naming_it(world, monkeypatch) -> None:
    from gwc.compiler.audit.query import Query, select
    from gwc.compiler.audit.trail import TrailError

    for name, value in world["env"].items():
        monkeypatch.setenv(name, value)
    keys = ship(world["client"], world["files"][:2])
    listed = audit_store.trail_objects([StoreUrl("gwc-audit", PREFIX)])
    assert [str(obj) for obj in listed] == [url_of(key) for key in keys]
    erase(world["client"], keys[1])  # the version listed is gone
    with pytest.raises(TrailError, match=f"^{url_of(keys[1])}: cannot read: NoSuchVersion"):
        list(select(listed, Query()))
