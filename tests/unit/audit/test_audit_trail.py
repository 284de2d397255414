"""The audit trail: chained records written off the event loop, rotation, and `gwc audit verify`
finding any edit, deletion or reordering (runtime/audit/chain.py, runtime/audit/writer.py); hostile
arguments that never cost a record, torn writes a restart repairs, signed checkpoints, anchors
that show a cut tail, one trail per node, and a node that says when its trail fails. Long because
these share one writer set-up and one tamper toolkit; each test stays short.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import orjson
import pytest
from click.testing import CliRunner

from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.cli import main
from gwc.runtime.audit.chain import GENESIS, Head, UnencodableRecord, seal, sealed_line, verify
from gwc.runtime.audit.shape import (
    CUT,
    MAX_KEY_CHARS,
    MAX_KEYS,
    MAX_KINDS,
    policy_paths,
    policy_values,
    shape,
)
from gwc.runtime.audit.writer import AuditWriter, in_trail_order, trail
from gwc.runtime.bundle.envelope import jwk_kid
from gwc.runtime.mcp.trail import Auditor, AuditTarget
from gwc.runtime.metrics import Metrics
from gwc.runtime.protocol.errors import RpcError
from tests.support.e2e import (  # noqa: F401
    echo_in_session,
    open_session,
    raw,
    start_node,
    unwritable_trail,
    upstream_url,
    write_test_registry,
)
from tests.support.helpers import compile_root, gwc, manifest, rule, write_registry
from tests.support.repo import REPO


async def write(path: Path, count: int, node: str = "node-1", **options) -> list[str]:
    """``count`` records, submitted ten at a time as concurrent calls would."""
    writer = AuditWriter(node, path, **options)
    writer.start()
    hashes: list[str] = []
    try:
        for first in range(0, count, 10):
            hashes += await asyncio.gather(*(writer.submit({"type": "call", "n": i, "tool": "echo"})
                                             for i in range(first, min(count, first + 10))))
    finally:
        writer.close()
    return hashes


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


async def test_every_record_is_on_disk_and_chained_when_its_future_resolves(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = await write(path, 50)
    records = [orjson.loads(line) for line in lines(path)]
    assert records[0]["type"] == "start" and records[0]["prev"] == GENESIS
    assert [r["hash"] for r in records[1:]] == hashes
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    verdict = verify([path])
    assert verdict.ok and verdict.records == 51 and verdict.from_genesis


@pytest.mark.parametrize("tamper, reason", [
    (lambda ls: ls.__setitem__(5, ls[5].replace(b'"n":4', b'"n":7')), "altered"),
    (lambda ls: ls.pop(5), "chain is broken"),
    (lambda ls: ls.insert(6, ls.pop(5)), "chain is broken"),
    (lambda ls: ls.pop(0), "start record"),
    (lambda ls: ls.__setitem__(3, b"{not json"), "not a JSON record"),
])
async def test_edits_deletions_and_swaps_are_found(tmp_path, tamper, reason) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, 10)
    changed = lines(path)
    tamper(changed)
    path.write_bytes(b"\n".join(changed) + b"\n")
    verdict = verify([path])
    assert not verdict.ok and reason in verdict.broken.reason
    assert verdict.broken.line in (1, 4, 6, 7)


async def test_rotation_chains_files_and_a_missing_file_is_found(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, 200, max_bytes=4096)
    files = trail(path)
    assert len(files) > 3
    assert all(orjson.loads(lines(f)[0])["type"] == "start" for f in files)
    shuffled = files[:]
    random.shuffle(shuffled)
    assert in_trail_order(shuffled) == files
    assert verify(files).ok and verify(files).records == 200 + len(files)
    broken = verify(files[:1] + files[2:])
    assert not broken.ok and broken.broken.file == str(files[2])


@pytest.mark.skipif(not hasattr(os, "O_DSYNC"), reason="the OS has no O_DSYNC: the writer fsyncs")
async def test_every_trail_file_is_written_synchronously(tmp_path, monkeypatch) -> None:
    """Each write returns once the batch is on stable storage (O_DSYNC): no separate fsync for
    the writer thread to wait on, first file and rotated ones alike."""
    import fcntl

    from gwc.runtime.audit import writer as writer_module
    opened = []

    def open_and_look(path):
        file = open_trail_file(path)
        opened.append(fcntl.fcntl(file.fileno(), fcntl.F_GETFL))
        return file
    open_trail_file = writer_module._open_trail_file
    monkeypatch.setattr(writer_module, "_open_trail_file", open_and_look)
    path = tmp_path / "audit.jsonl"
    await write(path, 40, max_bytes=2048)
    assert len(trail(path)) == len(opened) > 2
    assert all(mode & os.O_DSYNC and mode & os.O_APPEND for mode in opened)


async def test_a_restarted_node_continues_the_chain(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, 5)
    await write(path, 5)
    verdict = verify([path])
    assert verdict.ok and verdict.records == 12


async def test_a_failed_write_fails_the_waiting_calls_and_keeps_the_chain(tmp_path, monkeypatch) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter("node-1", path)
    writer.start()
    try:
        assert await writer.submit({"n": 1})
        original = writer._write_lines

        def disk_full(data):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(writer, "_write_lines", disk_full)
        with pytest.raises(OSError):
            await writer.submit({"n": 2})
        assert not writer.healthy
        monkeypatch.setattr(writer, "_write_lines", original)
        assert await writer.submit({"n": 3})
        assert writer.healthy
    finally:
        writer.close()
    assert verify([path]).ok and verify([path]).records == 3


async def test_a_torn_batch_is_cut_back_so_the_file_stays_verifiable(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter("node-1", path)
    writer.start()
    try:
        assert await writer.submit({"n": 1})
        good = writer._file

        class HalfWritten:  # the disk fills up in the middle of the batch
            def __getattr__(self, name):
                return getattr(good, name)

            def write(self, data):
                good.write(bytes(data[:len(data) // 2]))
                raise OSError(28, "No space left on device")
        writer._file = HalfWritten()
        with pytest.raises(OSError):
            await writer.submit({"n": 2, "padding": "x" * 100})
        writer._file = good
        assert await writer.submit({"n": 3})
    finally:
        writer.close()
    assert b'"n":2' not in path.read_bytes()
    assert verify([path]).ok and verify([path]).records == 3


async def test_stdout_trails_start_with_a_start_record_and_a_lost_copy_keeps_the_file(
        tmp_path, capsysbinary, monkeypatch) -> None:
    writer = AuditWriter("node-1", None, stdout=True)
    writer.start()
    try:
        assert await writer.submit({"n": 1})
    finally:
        writer.close()
    out = tmp_path / "stdout.jsonl"
    out.write_bytes(capsysbinary.readouterr().out)
    assert orjson.loads(lines(out)[0])["type"] == "start"
    assert verify([out]).ok and verify([out]).from_genesis

    path = tmp_path / "audit.jsonl"
    both = AuditWriter("node-1", path, stdout=True)
    both.start()
    try:
        class BrokenPipe:
            def write(self, data):
                raise BrokenPipeError(32, "Broken pipe")
        monkeypatch.setattr("sys.stdout", type("S", (), {"buffer": BrokenPipe()})())
        assert await both.submit({"n": 1})  # durable in the file: the call goes on
        assert await both.submit({"n": 2})
    finally:
        both.close()
    assert verify([path]).ok and verify([path]).records == 3


def test_the_shape_of_arguments_keeps_keys_and_types_never_values() -> None:
    arguments = {"sql": "select * from salaries", "limit": 5, "dry": True, "schemas": ["a", "b"],
                 "opts": {"timeout": 3.5, "tags": [1, "x"], "none": None}}
    assert shape(arguments) == {"sql": "string", "limit": "number", "dry": "boolean",
                                "schemas": ["string"], "opts": {
                                    "timeout": "number", "tags": ["number", "string"],
                                    "none": "null"}}
    assert "salaries" not in orjson.dumps(shape(arguments)).decode()


class _Dict(dict):
    """A dict shape() cannot take its quick pass for: the general walk's answer."""


@pytest.mark.parametrize("arguments", [
    {}, {"a": 1, "b": "x", "c": None, "d": True, "e": 2.5},
    {"k" * 64: 1, "k" * 65: 2, "z": 3},  # a key cut
    {"…": 1, "a": 2},  # the caller's own "…" is left out and counted
    {f"{i:063d}": i for i in range(64)},  # 64 keys of 63 characters: over the size bound
    {f"{i:062d}": i for i in range(64)},  # ...and well within it
    {**{f"{i:063d}": i for i in range(63)}, "x" * 61: 1},  # a size of 4095: the last that fits
    {**{f"{i:063d}": i for i in range(63)}, "x" * 62: 1},  # 4096: the last key left out
    {f"k{i}": i for i in range(65)},  # more keys than kept
    {"a": 1, "b": {"c": [1, "x"]}, "d": 2},  # nested
])
def test_the_quick_shape_of_a_flat_object_is_the_general_walks(arguments) -> None:
    assert shape(arguments) == shape(_Dict(arguments))


def test_only_the_values_policy_reads_are_kept(tmp_path) -> None:
    payload = compile_root(write_registry(tmp_path, manifests={"svc.yaml": manifest()}, policies={
        "team-a/p.yaml": [rule(team="team-a", tool="write_it", action="write", conditions={
            "env": ["staging"], "target.region": {"pattern": "eu-.*"}})]}))
    paths = policy_paths(payload, "svc", "write_it")
    assert sorted(paths) == [("env",), ("target", "region")]
    values = policy_values(paths, {"env": "prod", "target": {"region": "eu-1", "id": 7},
                                   "secret": "s3cr3t"})
    assert values == {"env": "prod", "target.region": "eu-1"}
    assert policy_values(paths, {"target": "flat"}) == {}


async def test_gwc_audit_verify_reports_ok_and_the_first_broken_record(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, 20, max_bytes=2048)
    files = [str(f) for f in trail(path)]
    ok = CliRunner().invoke(main, ["audit", "verify", *reversed(files)])
    assert ok.exit_code == 0, ok.output
    assert "chain intact" in ok.output and "from the start" in ok.output
    first = Path(files[0])
    tampered = lines(first)
    tampered[1] = tampered[1].replace(b'"tool":"echo"', b'"tool":"drop_db"')
    first.write_bytes(b"\n".join(tampered) + b"\n")
    broken = CliRunner().invoke(main, ["audit", "verify", *files])
    assert broken.exit_code == 1
    assert f"{first}:2: the record was altered" in broken.output


# --- hostile input never costs a record ----------------------------------------------------------

def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_hostile_arguments_are_shaped_quickly_into_a_bounded_encodable_record() -> None:
    many = {"items": [{f"k{i}": i} for i in range(20_000)]}  # 282 KB: held the loop 5.6 s
    deep = nested(300)  # orjson writes at most 255 levels
    wide = {f"key-{i}-" + "x" * 200: [i, str(i)] for i in range(5_000)}
    same = {"items": [{"a": i, "b": "x"} for i in range(270_000)]}  # 4 MiB of one kind
    for arguments in (many, deep, wide, same):
        started = time.perf_counter()
        line = sealed_line({"type": "call", "arguments": {"shape": shape(arguments)}}, GENESIS)
        assert time.perf_counter() - started < 0.25
        assert len(line) < 64 * 1024
    assert shape(many) == {"items": [{f"k{i}": "number"} for i in range(MAX_KINDS)]
                           + [{CUT: f"+{20_000 - MAX_KINDS} more items"}]}
    level = shape(deep)
    for _ in range(7):
        level = level["a"]
    assert level == {"a": {CUT: "depth>8"}}
    kept = shape(wide)  # long keys: the shape's size bound ends the object first
    assert len(kept) < MAX_KEYS and kept[CUT] == f"+{5_000 - (len(kept) - 1)} keys"
    assert all(len(k) == MAX_KEY_CHARS + 1 and k.endswith(CUT) for k in kept if k != CUT)
    short = shape({f"k{i}": i for i in range(5_000)})
    assert len(short) == MAX_KEYS + 1 and short[CUT] == f"+{5_000 - MAX_KEYS} keys"
    escaped = {f"{i}" + "\x01" * 100: [{f"{j}" + "\x01" * 100: [1, "x"]} for j in range(20)]
               for i in range(100)}  # keys JSON writes 6 bytes a character
    assert len(orjson.dumps(shape(escaped))) < 40 * 1024
    kinds = shape(same)["items"]
    assert kinds[0] == {"a": "number", "b": "string"} and kinds[1][CUT].endswith("more items")
    # Large ordinary input keeps its meaning: one kind, however long the list.
    assert shape({"ids": list(range(500_000)), "tags": ["a"] * 1000}) == {
        "ids": ["number"], "tags": ["string"]}
    # A caller's own key "…" is left out (counted), so it never reads as a summary.
    assert shape({CUT: 1, "x": 2}) == {"x": "number", CUT: "+1 keys"}


def test_values_policy_reads_are_summarised_when_too_large_or_deep() -> None:
    paths = [("env",), ("target",), ("deep",), ("ids",), ("region",)]
    values = policy_values(paths, {"env": "x" * 5000, "target": {"region": "eu-1"},
                                   "deep": nested(20), "ids": list(range(2000)), "region": "eu"})
    assert values == {"env": {CUT: "size>1024"}, "target": {"region": "eu-1"},
                      "deep": {CUT: "depth>8"}, "ids": {CUT: "size>1024"}, "region": "eu"}


async def test_an_unencodable_record_fails_alone_and_the_writer_stays_healthy(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter("node-1", path)

    async def caller(record: dict) -> str:
        return await writer.submit(record)
    # Queued before the writer thread runs, so a writer encoding in its thread would see them
    # as one batch: the bad one would take the good ones from other callers down with it.
    good = [asyncio.ensure_future(caller({"type": "call", "n": n})) for n in range(5)]
    bad = asyncio.ensure_future(caller({"type": "call", "arguments": nested(300)}))
    good += [asyncio.ensure_future(caller({"type": "call", "n": n})) for n in range(5, 10)]
    await asyncio.sleep(0)
    writer.start()
    try:
        await asyncio.gather(*good, bad, return_exceptions=True)
        assert isinstance(bad.exception(), UnencodableRecord)
        assert "cannot be encoded" in str(bad.exception())
        assert all(isinstance(task.result(), str) for task in good)
        assert writer.healthy
    finally:
        writer.close()
    verdict = verify([path])
    assert verdict.ok and verdict.records == 11

    metrics = Metrics()
    auditor = Auditor("node-1", metrics)
    auditor.start(AuditTarget("file", tmp_path / "node" / "audit.jsonl"))
    try:
        with pytest.raises(RpcError) as refused:
            await auditor.write({"type": "call", "arguments": nested(300)})
        assert refused.value.data["reason"] == "audit_unavailable"
        assert not auditor.refusing  # the trail itself is fine
        await auditor.write({"type": "call", "n": 1})
    finally:
        auditor.close()
    assert metrics.registry.get_sample_value("gwc_audit_failures_total") == 1


def test_records_encoded_at_submit_hash_as_before(tmp_path) -> None:
    """The prev spliced into a record encoded at submit gives the bytes sealing gives."""
    record = {"type": "call", "arguments": {"values": {"note": "prev " + "0" * 64}}, "z": 1}
    path = tmp_path / "audit.jsonl"

    async def one() -> None:
        writer = AuditWriter("node-1", path)
        writer.start()
        try:
            await writer.submit(dict(record))
        finally:
            writer.close()
    asyncio.run(one())
    start, written = lines(path)
    assert written + b"\n" == sealed_line(dict(record), orjson.loads(start)["hash"])


# --- crashes -------------------------------------------------------------------------------------

async def test_a_torn_final_line_is_cut_and_recorded_when_the_writer_starts_again(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, 10)
    whole = path.read_bytes()
    torn_at = whole.rindex(b"\n", 0, len(whole) - 1) + 1 + 40  # 40 bytes into the last record
    path.write_bytes(whole[:torn_at])
    before = gwc("audit", "verify", path)
    assert before.exit_code == 3
    assert f"{path}:11: torn final line: 40 bytes without a newline" in before.stderr
    assert "crash: node-1: 10 records in 1 file(s), chain intact before the torn line" in \
        before.stdout

    await write(path, 3)  # the node starts again: it is not refused, the chain goes on
    records = [orjson.loads(line) for line in lines(path)]
    assert [r["type"] for r in records[10:13]] == ["start", "repair", "call"]
    repair = records[11]
    assert (repair["offset"], repair["length"], repair["sha256"], repair["file"]) == (
        torn_at - 40, 40, hashlib.sha256(whole[torn_at - 40:torn_at]).hexdigest(), path.name)
    assert verify([path]).ok and len(verify([path]).repairs) == 1
    after = gwc("audit", "verify", path)
    assert after.exit_code == 3
    assert f"{path}:12: repair: at restart, node node-1 cut a torn line of 40 bytes" in after.stderr
    assert "crash: node-1: 15 records in 1 file(s), chain intact, from the start" in after.stdout
    await write(path, 1)  # nothing torn now: no second repair
    assert sum(orjson.loads(line)["type"] == "repair" for line in lines(path)) == 1


VICTIM = """
import asyncio, sys
from pathlib import Path
from gwc.runtime.audit.writer import AuditWriter

async def main() -> None:
    writer = AuditWriter("victim", Path(sys.argv[1]))
    writer.start()
    print("writing", flush=True)
    note, n = "x" * 262144, 0
    while True:  # batches of about 4 MB: a kill often lands inside a write
        await asyncio.gather(*(writer.submit({"type": "call", "n": n + i, "note": note})
                               for i in range(16)))
        n += 16

asyncio.run(main())
"""


async def test_a_writer_killed_mid_write_comes_back_with_its_chain_whole(tmp_path) -> None:
    script = tmp_path / "victim.py"
    script.write_text(VICTIM)
    for attempt in range(40):
        path = tmp_path / f"run{attempt}" / "audit.jsonl"
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert proc.stdout.readline() == b"writing\n"
            await asyncio.sleep(random.uniform(0.1, 0.4))
        finally:
            proc.kill()  # SIGKILL: no handler, no flush, no goodbye
            proc.wait()
            proc.stdout.close()
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            break
        assert verify([path]).ok  # killed between writes: nothing to repair
        path.unlink()
    else:
        pytest.fail("40 kills never landed inside a write")
    cut = data[data.rindex(b"\n") + 1:]
    assert gwc("audit", "verify", path).exit_code == 3

    await write(path, 5, node="victim")
    repair = next(r for r in map(orjson.loads, lines(path)) if r["type"] == "repair")
    assert (repair["offset"], repair["length"], repair["sha256"]) == (
        len(data) - len(cut), len(cut), hashlib.sha256(cut).hexdigest())
    verdict = verify([path])
    assert verdict.ok and verdict.torn is None and verdict.from_genesis
    result = gwc("audit", "verify", path)
    assert result.exit_code == 3 and "chain intact, from the start of the trail" in result.stdout


# --- one trail per node --------------------------------------------------------------------------

async def test_verify_checks_each_nodes_trail_on_its_own(tmp_path) -> None:
    files: list[Path] = []
    for node in ("node-a", "node-b"):
        path = tmp_path / node / "audit.jsonl"
        await write(path, 30, node=node, max_bytes=2048)
        files += trail(path)
    random.shuffle(files)
    ok = gwc("audit", "verify", *files)
    assert ok.exit_code == 0, ok.stderr
    assert [line.split(" records")[0] for line in ok.stdout.splitlines()] == [
        f"ok: node-a: {len(trail(tmp_path / 'node-a' / 'audit.jsonl')) + 30}",
        f"ok: node-b: {len(trail(tmp_path / 'node-b' / 'audit.jsonl')) + 30}"]

    second = trail(tmp_path / "node-b" / "audit.jsonl")[1]
    tampered = lines(second)
    tampered[1] = tampered[1].replace(b'"tool":"echo"', b'"tool":"drop_db"')
    second.write_bytes(b"\n".join(tampered) + b"\n")
    broken = gwc("audit", "verify", *files)
    assert broken.exit_code == 1
    assert f"gwc: tampered: {second}:2: the record was altered" in broken.stderr
    assert broken.stdout.startswith("ok: node-a: ") and "tampered: node-b: " in broken.stdout


# --- signed checkpoints and anchors --------------------------------------------------------------

async def test_checkpoints_sign_the_head_when_a_file_begins_every_n_records_and_at_shutdown(
        tmp_path) -> None:
    _, pub, key = generate_keypair(tmp_path / "gateway")
    path = tmp_path / "audit.jsonl"
    await write(path, 45, signing_key=key, checkpoint_records=10, max_bytes=4096)
    files = trail(path)
    records = [orjson.loads(line) for file in files for line in lines(file)]
    numbers = [i for i, r in enumerate(records) if r["type"] == "checkpoint"]
    for i in numbers:  # each signs the record before it, numbered from the trail's first
        assert records[i]["head"] == records[i - 1]["hash"] and records[i]["seq"] == i
        assert records[i]["keyid"] == jwk_kid(key.public_key())
    assert all([orjson.loads(line)["type"] for line in lines(f)[:2]] == ["start", "checkpoint"]
               for f in files)
    assert numbers[-1] == len(records) - 1  # at shutdown
    assert max(b - a for a, b in itertools.pairwise(numbers)) <= 11
    verdict = verify(files, {jwk_kid(key.public_key()): key.public_key()})
    assert verdict.ok and verdict.signed == len(numbers) and verdict.last_seq == len(records)
    checked = gwc("audit", "verify", *files, "--key", pub)
    assert checked.exit_code == 0
    assert f"{len(numbers)} checkpoint(s) signed by the gateway key" in checked.stdout
    assert "not checked (no --key or --jwks)" in gwc("audit", "verify", *files).stdout

    # A restarted node goes on counting from its last checkpoint.
    await write(path, 1, signing_key=key)
    records = [orjson.loads(line) for file in trail(path) for line in lines(file)]
    assert records[-1]["type"] == "checkpoint" and records[-1]["seq"] == len(records) - 1

    idle = tmp_path / "idle" / "audit.jsonl"
    writer = AuditWriter("node-1", idle, signing_key=key, checkpoint_s=0.2)
    writer.start()
    try:
        digest = await writer.submit({"type": "call"})
        await asyncio.sleep(0.6)  # no more records: the writer signs the head on its own
        last = orjson.loads(lines(idle)[-1])
        assert last["type"] == "checkpoint" and last["head"] == digest
        assert writer.head.head == digest
        assert writer.sequence == 4  # start, checkpoint, the call, checkpoint
    finally:
        writer.close()


def rewrite(path: Path, change) -> None:
    """Change a file's records and seal its chain again, as someone with write access could."""
    records = [orjson.loads(line) for line in lines(path)]
    change(records)
    prev = GENESIS
    for record in records:
        prev = seal(record, prev)["hash"]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


async def test_a_rewrite_before_a_checkpoint_breaks_its_signature(tmp_path) -> None:
    _, pub, key = generate_keypair(tmp_path / "gateway")
    path = tmp_path / "audit.jsonl"
    await write(path, 12, signing_key=key, checkpoint_records=5)
    pristine = path.read_bytes()

    def edit(records: list[dict]) -> None:
        records[3]["tool"] = "drop_db"
    rewrite(path, edit)  # hashes resealed, checkpoints left as signed
    result = gwc("audit", "verify", path)
    assert result.exit_code == 1 and "the checkpoint does not sign the record before it" in \
        result.stderr

    def edit_and_fix_heads(records: list[dict]) -> None:
        edit(records)
        prev = GENESIS
        for record in records:
            if record["type"] == "checkpoint":
                record["head"] = prev
            prev = seal(record, prev)["hash"]
    path.write_bytes(pristine)
    rewrite(path, edit_and_fix_heads)
    assert gwc("audit", "verify", path).exit_code == 0  # without the key nothing can tell
    forged = gwc("audit", "verify", path, "--key", pub)
    assert forged.exit_code == 1 and "signature does not verify" in forged.stderr

    _, _, stranger = generate_keypair(tmp_path / "stranger")

    def resign(records: list[dict]) -> None:
        edit(records)
        prev = GENESIS
        for record in records:
            if record["type"] == "checkpoint":
                record.update(Head.sign(stranger, record["node"], record["seq"], prev).fields())
            prev = seal(record, prev)["hash"]
    path.write_bytes(pristine)
    rewrite(path, resign)
    other = gwc("audit", "verify", path, "--key", pub)
    assert other.exit_code == 1 and "which is not one of the keys given" in other.stderr


async def test_a_cut_tail_is_truncation_given_an_anchor(tmp_path) -> None:
    _, pub, key = generate_keypair(tmp_path / "gateway")
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter("node-1", path, signing_key=key, checkpoint_records=5)
    writer.start()
    try:
        for n in range(12):
            await writer.submit({"type": "call", "n": n})
        anchor = tmp_path / "head.json"
        anchor.write_text(json.dumps(writer.head.fields()))  # kept somewhere else
        anchored = writer.head.seq
        for n in range(12, 20):
            await writer.submit({"type": "call", "n": n})
    finally:
        writer.close()
    whole = lines(path)
    assert gwc("audit", "verify", path, "--key", pub, "--anchor", anchor).exit_code == 0

    path.write_bytes(b"\n".join(whole[:anchored + 2]) + b"\n")  # a cut after the anchor
    after = gwc("audit", "verify", path, "--anchor", anchor)
    assert after.exit_code == 0 and "1 anchored head(s) found" in after.stdout

    path.write_bytes(b"\n".join(whole[:anchored - 1]) + b"\n")  # a cut through it
    assert gwc("audit", "verify", path).exit_code == 0  # the chain alone cannot tell
    cut = gwc("audit", "verify", path, "--key", pub, "--anchor", anchor)
    assert cut.exit_code == 4
    assert (f"gwc: truncated: node-1: the trail ends at record {anchored - 1}, before the "
            f"anchored head (record {anchored} of") in cut.stderr
    assert cut.stdout.startswith(f"truncated: node-1: {anchored - 1} records")

    path.write_bytes(b"\n".join(whole) + b"\n")

    def edit(records: list[dict]) -> None:
        records[anchored - 1]["n"] = 99
    rewrite(path, edit)
    assert gwc("audit", "verify", path, "--anchor", anchor).exit_code == 1
    _, _, _stranger = generate_keypair(tmp_path / "stranger")
    assert gwc("audit", "verify", path, "--key", tmp_path / "stranger.pub",
               "--anchor", anchor).exit_code == 2


# --- the node: readiness, its published head -----------------------------------------------------

@pytest.mark.parametrize("failure, status", [("closed", 503), ("open", 200)])
async def test_readyz_says_when_a_failing_trail_refuses_calls(
        tmp_path, aiohttp_server, upstream_url, signing_key, failure, status) -> None:  # noqa: F811
    unwritable = tmp_path / "a-directory"
    unwritable.mkdir()
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, upstream_url),
                            audit=AuditTarget("file", unwritable), audit_failure=failure)
    async with httpx2.AsyncClient() as http:
        ready = await http.get(f"{node.url}/readyz")
    assert ready.status_code == status
    if failure == "closed":
        assert ready.json() == {"status": "audit trail failing: calls are refused (audit "
                                          "failure mode: closed)"}


async def test_readyz_follows_a_trail_that_fails_and_recovers(node) -> None:
    token = node.idp.token("alice", ["eng"])
    call, headers = await echo_in_session(node, token)
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{node.url}/readyz")).status_code == 200
        with unwritable_trail(node):
            await raw(node, "/servers/tools/mcp", call, token, headers)
            assert (await http.get(f"{node.url}/readyz")).status_code == 503
        await raw(node, "/servers/tools/mcp", call, token, headers)  # the probe
        assert (await http.get(f"{node.url}/readyz")).status_code == 200


async def test_a_node_publishes_its_signed_head_and_sequence(node, tmp_path) -> None:
    token = node.idp.token("alice", ["eng"])
    session = await open_session(node, "/servers/tools/mcp", token)
    for n in range(3):
        await raw(node, "/servers/tools/mcp", {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                               "params": {"name": "echo",
                                                          "arguments": {"text": "x"}}},
                  token, {"Mcp-Session-Id": session})
    metrics = node.gateway.metrics.registry
    assert metrics.get_sample_value("gwc_audit_sequence") == len(lines(node.audit_path))
    node.gateway.auditor.close()  # shutdown: the head is signed once more
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{node.url}/v1/audit/head")).status_code == 401
        head = (await http.get(f"{node.url}/v1/audit/head",
                               headers={"Authorization": f"Bearer {token}"})).json()
    last = orjson.loads(lines(node.audit_path)[-1])
    assert last["type"] == "checkpoint"
    assert head == {k: last[k] for k in ("node", "seq", "head", "time", "keyid", "sig")}
    anchor = tmp_path / "head.json"
    anchor.write_text(json.dumps(head))

    jwks = f"{node.url}/.well-known/jwks.json"  # fetched while this loop serves it: a thread
    whole = await asyncio.to_thread(gwc, "audit", "verify", node.audit_path, "--jwks", jwks,
                                    "--anchor", anchor)
    assert whole.exit_code == 0, whole.stderr
    assert "checkpoint(s) signed by the gateway key; 1 anchored head(s) found" in whole.stdout
    node.audit_path.write_bytes(b"\n".join(lines(node.audit_path)[:-2]) + b"\n")
    cut = await asyncio.to_thread(gwc, "audit", "verify", node.audit_path, "--jwks", jwks,
                                  "--anchor", anchor)
    assert cut.exit_code == 4 and "records were cut from its end" in cut.stderr


@pytest.mark.parametrize("ts", [0.0, 1.5, 1_796_000_000.0, 1_796_000_000.9999995, 1_796_000_000.9999994,
                                1_796_000_000.0000005, 1_796_000_059.999999, 4_102_444_799.9999996,
                                *(random.Random(7).uniform(0, 4e9) for _ in range(200))])
def test_record_times_read_as_datetime_writes_them(ts) -> None:
    """The second's text is kept between calls; the time must still be exactly what
    datetime.strftime gives, rounding of microseconds into the next second included."""
    from datetime import UTC, datetime

    from gwc.runtime.audit.chain import TIME_FORMAT, utc_time
    utc_time(ts - 1)  # another second formatted just before
    assert utc_time(ts) == datetime.fromtimestamp(ts, UTC).strftime(TIME_FORMAT)
    assert utc_time(ts) == datetime.fromtimestamp(ts, UTC).strftime(TIME_FORMAT)  # from the cache
