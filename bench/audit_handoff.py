"""How long a call waits for its audit record to be durable while the event loop is busy, for
several CPython switch intervals (gwc-runtime keeps CPython's default, 5 ms: bench/README.md says
why a shorter one was tried and taken back).

The node's audit writer is a thread: it needs the GIL to chain a batch and again after the
synchronous write, and an event loop busy with requests holds the GIL until the interpreter makes
it let go, every switch interval. Here ``--busy`` coroutines each hold the GIL for 300 us of
pure-Python work at a time (as request handling does), a record is submitted every 0.5 ms to a
real AuditWriter writing to a file in ``--dir``, and the script prints when records became durable.

    python bench/audit_handoff.py [--seconds 3] [--busy 4] [--intervals 5,1,0.5,0.2] [--runs 2]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gwc.runtime.audit.writer import AuditWriter

RECORD = {"type": "call", "node": "bench", "arguments": {"text": "hello"}, "padding": "x" * 600}


async def busy(stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < 0.0003:  # request work, the GIL held
            pass
        await asyncio.sleep(0)


async def measure(interval_s: float, args: argparse.Namespace) -> list[float]:
    """Seconds from submit to durable of each record, with the switch interval given."""
    sys.setswitchinterval(interval_s)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        writer = AuditWriter("bench", Path(folder) / "audit.jsonl")
        writer.start()
        stop = asyncio.Event()
        loads = [asyncio.create_task(busy(stop)) for _ in range(args.busy)]
        waits: list[float] = []

        async def record() -> None:
            started = time.perf_counter()
            await writer.submit(dict(RECORD))
            waits.append(time.perf_counter() - started)
        submitted = []
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline:
            submitted.append(asyncio.create_task(record()))
            await asyncio.sleep(0.0005)
        await asyncio.gather(*submitted)
        stop.set()
        await asyncio.gather(*loads)
        writer.close()
    return sorted(waits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--busy", type=int, default=4, help="coroutines keeping the loop busy")
    parser.add_argument("--intervals", default="5,1,0.5,0.2",
                        type=lambda v: [float(ms) / 1000 for ms in v.split(",")],
                        help="switch intervals to try, in ms")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where the trail is written (a temporary "
                        "folder in it; default: the system's)")
    args = parser.parse_args()
    results: dict[float, list[list[float]]] = {i: [] for i in args.intervals}
    for _ in range(args.runs):
        for interval in args.intervals:
            results[interval].append(asyncio.run(measure(interval, args)))
    print(f"a record every 0.5 ms beside {args.busy} busy coroutines for {args.seconds:g} s; "
          f"ms from submit to durable, median over {args.runs} runs (min-max)")
    print(f"{'switch interval':>16s} {'p50':>16s} {'p90':>16s} {'p99':>16s}")
    for interval, runs in results.items():
        cells = []
        for q in (0.5, 0.9, 0.99):
            values = [waits[min(len(waits) - 1, int(q * len(waits)))] * 1000 for waits in runs]
            cells.append(f"{statistics.median(values):6.2f} ({min(values):.1f}-{max(values):.1f})")
        print(f"{interval * 1000:13.1f} ms " + " ".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    main()
