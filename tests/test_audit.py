"""The audit trail: chained records written off the event loop, rotation, and `gwc audit verify`
finding any edit, deletion or reordering (runtime/audit.py, runtime/audit_sink.py)."""
from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from compiler.cli import main
from runtime.audit import GENESIS, policy_paths, policy_values, shape, verify
from runtime.audit_sink import AuditWriter, in_trail_order, trail
from tests.helpers import compile_root, manifest, rule, write_registry


async def write(path: Path, count: int, **options) -> list[str]:
    """``count`` records, submitted ten at a time as concurrent calls would."""
    writer = AuditWriter("node-1", path, **options)
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
    assert all(b["prev"] == a["hash"] for a, b in zip(records, records[1:]))
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
