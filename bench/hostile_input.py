"""What recording a hostile tools/call costs: building the record's argument part (the shape of
the arguments and the values policy reads) and encoding the record, before and after issue 10's
bounds, on the event loop where both happen.

Cases (the arguments of one call; policy reads ``env``, and ``note`` where it is sent):

- ``20k-objects``: a list of 20,000 one-key objects (282 KB), each a new kind;
- ``4mib-objects``: the same up to the node's default body limit (4 MiB, ~270,000 objects);
- ``4mib-same``: 4 MiB of two-key objects all of one kind (big, but ordinary);
- ``4mib-value``: a 4 MiB string in an argument policy reads;
- ``deep-300``: an argument nested 300 levels (orjson writes at most 255).

"Before" is ``runtime/audit.py`` as it was at ``--before`` (read with git); each case and version
runs in a child process, stopped after ``--cap`` seconds. Medians of ``--runs`` runs.

    python bench/hostile_input.py [--runs 5] [--cap 60] [--before dd9b65a^]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LIMIT = 4 * 1024 * 1024  # gwc.runtime.config.DEFAULT_MAX_BODY_BYTES


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def objects(count: int) -> dict[str, Any]:
    return {"env": "staging", "items": [{f"k{i}": i} for i in range(count)]}


def to_limit(make: Callable[[int], dict[str, Any]], per_item: int) -> dict[str, Any]:
    """The largest ``make(n)`` whose JSON fits the body limit (with room for the envelope)."""
    count = (LIMIT - 1024) // per_item
    while len(orjson.dumps(make(count))) > LIMIT - 1024:
        count = count * 99 // 100
    return make(count)


CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "20k-objects": lambda: objects(20_000),
    "4mib-objects": lambda: to_limit(objects, 15),
    "4mib-same": lambda: to_limit(
        lambda n: {"env": "staging", "items": [{"a": i, "b": "x"} for i in range(n)]}, 20),
    "4mib-value": lambda: {"env": "staging", "note": "x" * (LIMIT - 1024)},
    "deep-300": lambda: {"env": "staging", "extra": nested(300)},
}
PATHS = [("env",), ("note",)]


def load(source: Path) -> Any:
    spec = importlib.util.spec_from_file_location("audit_under_test", source)
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(source: Path, case: str, runs: int, out: Connection) -> None:
    """In a child: (build ms, encode ms, record bytes) per run, or the error that stopped it."""
    audit, arguments = load(source), CASES[case]()
    results = []
    for _ in range(runs):
        started = time.perf_counter()
        part = {"shape": audit.shape(arguments), "values": audit.policy_values(PATHS, arguments)}
        built = time.perf_counter()
        record = {"type": "call", "time": "2026-12-07T00:00:00.000000Z", "server": "svc",
                  "tool": "t", "arguments": part, "prev": "0" * 64}
        try:
            size = len(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
        except orjson.JSONEncodeError as exc:
            out.send(f"cannot encode: {exc}")
            return
        results.append(((built - started) * 1000, (time.perf_counter() - built) * 1000, size))
    out.send(results)


def run(source: Path, case: str, runs: int, cap: float) -> list[tuple[float, float, int]] | str:
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.Process(target=measure, args=(source, case, runs, send))
    child.start()
    send.close()  # the child's end only: a child that dies ends the wait
    try:
        if not receive.poll(cap):
            return f"> {cap:g} s (stopped)"
        return receive.recv()
    except EOFError:
        return "failed (see above)"
    finally:
        child.kill()
        child.join()


def cell(result: list[tuple[float, float, int]] | str) -> tuple[str, str, str]:
    if isinstance(result, str):
        return result, "", ""
    build, encode, size = (statistics.median(column) for column in zip(*result, strict=True))
    return f"{build:.2f}", f"{encode:.2f}", f"{size / 1024:.1f} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per case and version")
    parser.add_argument("--before", default="dd9b65a^", help="git revision of the old code")
    parser.add_argument("--cases", default=",".join(CASES), type=lambda v: v.split(","))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "audit_before.py"
        before.write_bytes(subprocess.run(
            ["git", "-C", str(REPO), "show", f"{args.before}:runtime/audit.py"],
            check=True, capture_output=True).stdout)
        print(f"building the argument part / encoding the record, ms, median of {args.runs} "
              f"runs; before = runtime/audit.py at {args.before}")
        print(f"{'case':14s} {'input':>9s} | {'before build':>14s} {'encode':>8s} {'record':>10s}"
              f" | {'after build':>11s} {'encode':>8s} {'record':>9s}")
        for case in args.cases:
            size = len(json.dumps(CASES[case](), separators=(",", ":"))) / 1024  # orjson
            # writes no more than 255 levels
            old = cell(run(before, case, args.runs, args.cap))
            new = cell(run(REPO / "runtime" / "audit" / "chain.py", case, args.runs, args.cap))
            print(f"{case:14s} {size:7.0f}KB | {old[0]:>14s} {old[1]:>8s} {old[2]:>10s} | "
                  f"{new[0]:>11s} {new[1]:>8s} {new[2]:>9s}")


if __name__ == "__main__":
    main()
