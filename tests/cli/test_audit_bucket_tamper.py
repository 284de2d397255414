"""`gwc audit verify|query|replay s3://...` against what someone with a node's own permission
(s3:PutObject, and the gateway signing key every node holds) can do to a bucket under Object Lock:
a newer version over a locked object, an alias key, an unsigned object; and what real nodes ship
that must not read as tampering (files from before closing checkpoints, a node renamed across a
crash restart); and head objects built to crash the reader.

A real node trail (AuditWriter with the gateway key) is shipped by the real Shipper to moto's S3
(Object Lock, COMPLIANCE), as in production.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from gwc.compiler.audit import store as audit_store
from gwc.compiler.build.keys import generate_keypair
from gwc.runtime.audit import shipper as shipping
from gwc.runtime.audit.chain import Head, encode, seal
from gwc.runtime.audit.objects import StoreUrl, TrailObject, parse_key
from gwc.runtime.audit.shipper import Shipper
from gwc.runtime.audit.writer import AuditWriter, rotated
from gwc.runtime.bundle.format import ObjectLock
from tests.cli.test_audit_bucket import fresh_clients  # noqa: F401  (autouse: no client kept)
from tests.support.helpers import gwc
from tests.support.s3_server import S3Server, s3_server  # noqa: F401

NODE = "node-1"
BUCKET = "gwc-audit"


@pytest.fixture
def store(s3_server, monkeypatch):  # noqa: F811
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(shipping, "BACKOFF_S", (0.05, 0.2))
    return s3_server


def _shipper(path: Path, store: S3Server, writer: AuditWriter) -> Shipper:
    shipper = Shipper(path, StoreUrl.parse(store.url + "/gwc"), ObjectLock(mode="compliance", days=2), 1,
                      lambda: writer.chain)
    writer.on_closed, writer.close_rotates = shipper.closed, True
    shipper.start()
    return shipper


async def submit(writer: AuditWriter, count: int, start: int = 0) -> None:
    for first in range(start, start + count, 10):
        await asyncio.gather(*(writer.submit({"type": "call", "n": n, "user": "alice",
                                              "decision": "deny" if n == 7 else "allow"})
                               for n in range(first, min(start + count, first + 10))))


async def shipped_trail(tmp_path: Path, store: S3Server, node: str = NODE):
    _, pub, key = generate_keypair(tmp_path / "gateway")
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(node, path, max_bytes=1500, signing_key=key)
    writer.start()
    shipper = _shipper(path, store, writer)
    await submit(writer, 40)
    writer.close()
    shipper.close()
    assert shipper.stats.pending == 0
    return key, pub, writer, rotated(path)


def listing(store: S3Server) -> list[str]:
    return [o["Key"] for o in store.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def run(store: S3Server, command: str, *args: str):
    audit_store._clients.clear()
    return gwc("audit", command, store.url + "/gwc", *args, env=store.env())


def reseal(files: list[Path], key, mutate) -> list[bytes]:
    """The attacker's rewrite: every record through ``mutate``, chain and checkpoints redone and
    re-signed with the gateway key, each file keeping its number of records."""
    prev, seq, out = None, 0, []
    for file in files:
        lines = []
        for raw in file.read_bytes().splitlines():
            record = orjson.loads(raw)
            if prev is None:
                prev = record["prev"]
            if record["type"] == "checkpoint":
                record = {"type": "checkpoint", **Head.sign(key, record["node"], seq, prev).fields()}
            else:
                record = mutate({k: v for k, v in record.items() if k not in ("hash", "prev")})
            seal(record, prev)
            prev, seq = record["hash"], seq + 1
            lines.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
        out.append(b"".join(lines))
    return out


def last_checkpoint(body: bytes) -> bytes:
    return orjson.dumps(Head.of(orjson.loads(body.splitlines()[-1])).fields(),
                        option=orjson.OPT_SORT_KEYS)


def allow(record: dict) -> dict:
    return {**record, "decision": "allow"} if record.get("decision") == "deny" else record


# --- 1. a newer version over a locked object ------------------------------------------------------

async def test_a_new_version_over_a_locked_object_is_tampering_and_never_read(tmp_path,
                                                                              store) -> None:
    key, pub, _, files = await shipped_trail(tmp_path, store)
    client = store.client()
    keys = sorted(k for k in listing(store) if k.endswith(".jsonl"))
    for k, body in zip(keys, reseal(files, key, allow), strict=True):
        client.put_object(Bucket=BUCKET, Key=k, Body=body)  # no If-None-Match: a new version
        client.put_object(Bucket=BUCKET, Key=k.removesuffix(".jsonl") + ".head.json",
                          Body=last_checkpoint(body))
    result = run(store, "verify", "--key", str(pub))
    assert result.exit_code == 1, result.stdout + result.stderr
    first = client.list_object_versions(Bucket=BUCKET, Prefix=keys[0])["Versions"]
    assert (f"gwc: tampered: s3://{BUCKET}/{keys[0]} has 2 version(s) and 0 delete marker(s) "
            f"(version {first[0]['VersionId']} of ") in result.stderr
    assert first[1]["VersionId"] in result.stderr
    assert result.stderr.count("has 2 version(s)") == 2 * len(keys)
    # What is checked is what the node wrote: the first versions, whose heads match.
    assert result.stdout.startswith("tampered: node-1 (chain ")
    assert f"{len(keys)} head object(s) match their files" in result.stdout
    # query and replay read the first versions too, and say why on stderr.
    query = run(store, "query", "--decision", "deny", "--format", "json")
    assert query.exit_code == 0
    assert [orjson.loads(line)["decision"] for line in query.stdout.splitlines()] == ["deny"]
    assert f"gwc: warning: tampered: s3://{BUCKET}/{keys[0]} has 2 version(s)" in query.stderr


async def test_a_delete_marker_over_a_locked_object_is_a_note_its_version_is_read(tmp_path,
                                                                                  store) -> None:
    """What a lifecycle rule's expiration leaves (a node has no s3:DeleteObject): it hides
    nothing from a reader of versions, so it is said, and the version is checked."""
    _, pub, _, _ = await shipped_trail(tmp_path, store)
    newest = sorted(k for k in listing(store) if k.endswith(".jsonl"))[-1]
    marker = store.client().delete_object(Bucket=BUCKET, Key=newest)["VersionId"]
    result = run(store, "verify", "--key", str(pub))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr.startswith(f"gwc: note: s3://{BUCKET}/{newest}: version ")
    assert (f"delete marker {marker} of " in result.stderr and "deleted (a lifecycle rule's "
            "expiration, or s3:DeleteObject); its version is still read") in result.stderr
    assert result.stdout.startswith("ok: node-1") and "Traceback" not in result.stderr


# --- 2. alias keys ----------------------------------------------------------------------------

async def test_alias_keys_with_other_digits_are_tampering_not_the_file(tmp_path, store) -> None:
    key, pub, _, files = await shipped_trail(tmp_path, store)
    client, url = store.client(), StoreUrl.parse(store.url + "/gwc")
    keys = sorted(k for k in listing(store) if k.endswith(".jsonl"))
    arabic = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    aliases = []
    for k, body in zip(keys, reseal(files, key, allow), strict=True):
        stem, name = k.rsplit("/", 1)
        alias = f"{stem}/{name.removesuffix('.jsonl').translate(arabic)}"
        assert parse_key(url, alias + ".jsonl") is None
        aliases.append(alias + ".jsonl")
        client.put_object(Bucket=BUCKET, Key=alias + ".jsonl", Body=body, IfNoneMatch="*")
        client.put_object(Bucket=BUCKET, Key=alias + ".head.json", Body=last_checkpoint(body),
                          IfNoneMatch="*")
    result = run(store, "verify", "--key", str(pub))
    assert result.exit_code == 1, result.stdout + result.stderr
    assert (f"gwc: tampered: s3://{BUCKET}/{aliases[0]} is not the key of a shipped file but an "
            f"alias of s3://{BUCKET}/{keys[0]} ") in result.stderr
    assert f"{len(keys)} head object(s) match their files" in result.stdout
    query = run(store, "query", "--decision", "deny", "--format", "json")
    assert [orjson.loads(line)["decision"] for line in query.stdout.splitlines()] == ["deny"]
    assert "is not the key of a shipped file" in query.stderr


async def test_alias_keys_by_another_percent_encoding_are_tampering(tmp_path, store) -> None:
    key, pub, _, files = await shipped_trail(tmp_path, store, node="gw-a:8080")
    client = store.client()
    keys = sorted(k for k in listing(store) if k.endswith(".jsonl"))
    assert all("/gw-a%3A8080/" in k for k in keys)
    for k, body in zip(keys, reseal(files, key, allow), strict=True):
        for alias in (k.replace("%3A", ":"), k.replace("%3A", "%3a")):
            client.put_object(Bucket=BUCKET, Key=alias, Body=body)
            client.put_object(Bucket=BUCKET, Key=alias.removesuffix(".jsonl") + ".head.json",
                              Body=last_checkpoint(body))
    result = run(store, "verify", "--key", str(pub))
    assert result.exit_code == 1, result.stdout + result.stderr
    assert (f"gwc: tampered: s3://{BUCKET}/{keys[0].replace('%3A', ':')} is not the key of a "
            f"shipped file but an alias of s3://{BUCKET}/{keys[0]} ") in result.stderr
    assert f"s3://{BUCKET}/{keys[0].replace('%3A', '%3a')} is not the key" in result.stderr
    assert result.stdout.count("ok: ") == 0 and "Traceback" not in result.stderr


def test_node_names_of_dots_are_encoded_and_keys_are_read_only_in_their_one_spelling() -> None:
    store = StoreUrl.parse("s3://gwc-audit/gwc")
    chain = "0123456789abcdef"
    expected = {".": "%2E", "..": "%2E%2E", "...": "%2E%2E%2E", "a.b": "a.b", ".a": ".a",
                "gw-a:8080": "gw-a%3A8080", "node 2/b": "node%202%2Fb", "x%2Fy": "x%252Fy",
                "ünï": "%C3%BCn%C3%AF", "a/../b": "a%2F..%2Fb"}
    for node, segment in expected.items():
        obj = TrailObject(node, chain, 1, 2)
        assert obj.trail_key(store) == f"gwc/{segment}/{chain}/000000000001-000000000002.jsonl"
        assert obj.head_key(store) == f"gwc/{segment}/{chain}/000000000001-000000000002.head.json"
        assert parse_key(store, obj.trail_key(store)) == (obj, ".jsonl")
        assert parse_key(store, obj.head_key(store)) == (obj, ".head.json")
    for alias in (".", "..", "%2e", "gw-a:8080", "gw-a%3a8080", "node 2%2Fb", "%61"):
        key = f"gwc/{alias}/{chain}/000000000001-000000000002.jsonl"
        assert parse_key(store, key) is None, alias
        assert parse_key(store, key, canonical=False) is not None, alias
    arabic = f"gwc/node-1/{chain}/٠٠٠٠٠٠٠٠٠٠٠١-000000000002.jsonl"
    assert parse_key(store, arabic) is None
    assert parse_key(store, arabic, canonical=False) == (TrailObject("node-1", chain, 1, 2),
                                                         ".jsonl")


# --- 3. unsigned objects ----------------------------------------------------------------------

async def test_an_unsigned_object_appended_to_a_chain_is_tampering(tmp_path, store) -> None:
    _, pub, writer, files = await shipped_trail(tmp_path, store)
    prev = orjson.loads(files[-1].read_bytes().splitlines()[-1])["hash"]
    first, lines = writer.sequence + 1, []
    for record in ({"type": "start", "node": NODE, "ts": time.time(), "chain": writer.chain},
                   {"type": "call", "n": 999, "user": "mallory", "decision": "allow"}):
        seal(record, prev)
        prev = record["hash"]
        lines.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
    key = f"gwc/{NODE}/{writer.chain}/{first:012d}-{first + 1:012d}.jsonl"
    store.client().put_object(Bucket=BUCKET, Key=key, Body=b"".join(lines), IfNoneMatch="*")
    for extra in (("--key", str(pub)), ()):  # without a key too: a node never ships it
        result = run(store, "verify", *extra)
        assert result.exit_code == 1, result.stdout + result.stderr
        assert (f"gwc: tampered: s3://{BUCKET}/{key} has no head object (.head.json) and holds no "
                "checkpoint: a node never ships such a file") in result.stderr


async def test_a_whole_chain_without_a_signed_checkpoint_is_tampering_with_a_key(tmp_path,
                                                                                 store) -> None:
    _, pub, _, _ = await shipped_trail(tmp_path, store)
    prev, lines = "0" * 64, []
    for record in ({"type": "start", "node": NODE, "ts": time.time(), "chain": "f" * 16},
                   {"type": "call", "n": 1, "user": "alice", "tool": "delete_everything"}):
        seal(record, prev)
        prev = record["hash"]
        lines.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
    store.client().put_object(Bucket=BUCKET, Body=b"".join(lines),
                              Key=f"gwc/{NODE}/{'f' * 16}/000000000001-000000000002.jsonl")
    result = run(store, "verify", "--key", str(pub))
    assert result.exit_code == 1, result.stdout + result.stderr
    label = f"{NODE} (chain {'f' * 16} in {store.url}/gwc)"
    assert (f"gwc: tampered: {label}: no checkpoint signed by the keys given in its objects"
            in result.stderr)
    assert f"tampered: {label}: 2 records in 1 object(s)" in result.stdout


# --- 4. files from before closing checkpoints ---------------------------------------------------

class OldWriter(AuditWriter):
    """The writer before files named their chain and were closed with a checkpoint."""

    def _begin(self, records):
        start = {"type": "start", "node": self._node, "ts": time.time()}
        self._append([encode(r, self._placeholder) for r in (start, *records)], checkpoint=True)

    def _close_file(self):
        self._file.close()
        number = len(rotated(self._path)) + 1
        self._path.rename(self._path.with_name(f"{self._path.name}.{number:06d}"))


async def test_files_written_before_closing_checkpoints_are_a_note_not_tampering(tmp_path,
                                                                                 store) -> None:
    _, pub, key = generate_keypair(tmp_path / "gateway")
    path = tmp_path / "audit.jsonl"
    old = OldWriter(NODE, path, max_bytes=1500, signing_key=key)
    old.start()
    await submit(old, 30)
    old.close()
    writer = AuditWriter(NODE, path, max_bytes=1500, signing_key=key)
    writer.start()
    shipper = _shipper(path, store, writer)
    await submit(writer, 5, 30)
    writer.close()
    shipper.close()
    assert shipper.stats.pending == 0
    result = run(store, "verify", "--key", str(pub))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "record(s) after its last checkpoint, written before files were closed with a " \
        "checkpoint: not signed" in result.stderr
    assert result.stderr.startswith("gwc: note: s3://") and "tampered" not in result.stderr
    assert result.stdout.startswith("ok: node-1")


# --- 5. a node renamed across a crash restart --------------------------------------------------

async def test_a_node_renamed_across_a_crash_restart_is_not_tampering(tmp_path, store) -> None:
    _, pub, key = generate_keypair(tmp_path / "gateway")
    path = tmp_path / "audit.jsonl"
    before = AuditWriter("gwc-host:8080", path, max_bytes=10**6, signing_key=key)
    before.start()
    await submit(before, 10)
    # a crash: no close, the current file stays; the operator sets GWC_NODE_ID=gwc-0
    after = AuditWriter("gwc-0", path, max_bytes=10**6, signing_key=key)
    after.start()
    shipper = _shipper(path, store, after)
    await submit(after, 10)
    after.close()
    shipper.close()
    assert gwc("audit", "verify", *map(str, rotated(path)), "--key", str(pub)).exit_code == 0
    result = run(store, "verify", "--key", str(pub))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: gwc-0 (chain ") and result.stderr == ""


# --- 6. hostile head objects ---------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    (b"[" * 200_000, "200000 bytes: not a head object (one is a few hundred bytes, at most 4096)"),
    (b"[" * 4000, "not a JSON head ("),
    (b'{"node": "node-1"', "not a JSON head ("),
    (b'"a string"', "not a signed audit head ("),
    (b'{"node": ["x"], "seq": "1"}', "not a signed audit head ("),
])
def test_a_hostile_head_object_is_a_finding_never_a_traceback(s3_server, body,  # noqa: F811
                                                              message) -> None:
    client, url = s3_server.client(), StoreUrl.parse("s3://gwc-audit/gwc")
    obj = TrailObject(NODE, "0123456789abcdef", 1, 2)
    client.put_object(Bucket=BUCKET, Key=obj.trail_key(url), Body=b"")
    client.put_object(Bucket=BUCKET, Key=obj.head_key(url), Body=body)
    result = gwc("audit", "verify", "s3://gwc-audit/gwc", env=s3_server.env())
    assert result.exit_code == 1, result.stdout + result.stderr
    assert f"gwc: tampered: s3://{BUCKET}/{obj.head_key(url)}: {message}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_bucket_without_versioning_is_a_finding_not_a_fallback(tmp_path, store) -> None:
    """No versioning, no Object Lock: any object can have been replaced without a trace."""
    _, pub, _, _ = await shipped_trail(tmp_path, store)
    client = store.client()
    client.create_bucket(Bucket="plain")
    keys = listing(store)
    for key in keys:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        client.put_object(Bucket="plain", Key=key, Body=body)
    audit_store._clients.clear()
    result = gwc("audit", "verify", "s3://plain/gwc", "--key", str(pub), env=store.env())
    assert result.exit_code == 1, result.stdout + result.stderr
    assert (f"gwc: tampered: s3://plain/{keys[0]} has no version id: it was written while the "
            "bucket's versioning was off or suspended, so no Object Lock protects it") \
        in result.stderr
    assert result.stderr.count("has no version id") == len(keys)
