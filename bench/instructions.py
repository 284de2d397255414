"""Instructions a gwc node executes per tools/call, counted by callgrind: a figure that does not move
with the machine's load, for comparing two versions of the runtime where req/s and CPU time move by
10-15 % from run to run on a small shared machine.

Each runtime runs under ``valgrind --tool=callgrind`` with instrumentation off while it starts; per
path, after warm-up calls, the counters are zeroed, instrumentation is switched on, ``--calls``
sequential calls are made, and the node's instruction count (``Ir``, user space of every thread,
the audit writer's included) is read with ``callgrind_control``. Paths and calls are those of
``overhead.py`` (the same bundle, policy and audit trail to a file). Needs valgrind.

    python bench/instructions.py [--calls 300] [--warmup 50] [--log-level info] [--per-user-rpm N]
                                 [--audit file|stdout|none]
                                 [--baseline OTHER_CHECKOUT/.venv/bin/gwc-runtime]
"""
from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from overhead import PATHS, free_port, gwc_routes, start_gwc, stop, wait_port

GWC_PATHS = [path for path in PATHS if path.startswith("gwc")]


def control(pid: int, *args: str) -> str:
    return subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def instructions(pid: int) -> tuple[int, int]:
    """The node's ``Ir`` count since the last zeroing: of every thread, and of its main thread
    (the event loop's, which bounds a node's throughput)."""
    counters = control(pid, "-e", "Ir")  # "Totals: Ir" then a line per thread: "Th 1  39,313,126"
    threads = {int(th): int(n.replace(",", "")) for th, n in
               re.findall(r"^\s*Th\s+(\d+)\s+([\d,]+)", counters, re.M)}
    return sum(threads.values()), threads.get(1, 0)


async def calls(url: str, headers: dict, call: dict, count: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for _ in range(count):
            async with session.post(url, json=call, headers=headers) as resp:
                body = await resp.read()
                if resp.status != 200 or b'"result"' not in body:
                    sys.exit(f"bench: {url} answered {resp.status}: {body[:200]!r}")


async def count_paths(port: int, token: str, pid: int, args: argparse.Namespace) -> dict[str, float]:
    per_call = {}
    for name, (url, headers, call) in (await gwc_routes(port, token)).items():
        if name not in args.paths:
            continue
        await calls(url, headers, call, args.warmup)
        control(pid, "--instr=on")
        control(pid, "--zero")
        await calls(url, headers, call, args.calls)
        every, main = instructions(pid)
        per_call[name], per_call[name + " (loop)"] = every / args.calls, main / args.calls
        control(pid, "--instr=off")
    return per_call


def measure(runtime: Path | None, upstream: str, work: Path, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    launcher = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--vgdb=yes",
                f"--callgrind-out-file={work / 'callgrind.out.%p'}"]
    fields = {"limits": {"per_user_rpm": args.per_user_rpm}} if args.per_user_rpm else None
    audit = ["--audit", f"file:{work / 'audit.jsonl'}" if args.audit == "file" else args.audit]
    proc, token = start_gwc(work, upstream, port, args.log_level, runtime=runtime, launcher=launcher,
                            bench_fields=fields, runtime_args=audit)
    try:
        wait_port(port, timeout_s=300)
        return asyncio.run(count_paths(port, token, proc.pid, args))
    finally:
        stop([proc])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--paths", default=",".join(GWC_PATHS), type=lambda v: v.split(","))
    parser.add_argument("--baseline", type=Path, metavar="GWC_RUNTIME",
                        help="another gwc-runtime (e.g. another checkout's .venv/bin/gwc-runtime)")
    parser.add_argument("--log-level", default="warning", help="gwc's log level (info writes a "
                        "request line per call, to /dev/null here)")
    parser.add_argument("--per-user-rpm", type=int, metavar="N",
                        help="a per-user limit on the benchmarked server, as overhead.py's")
    parser.add_argument("--audit", choices=["file", "stdout", "none"], default="file",
                        help="where the node writes its audit trail (file: fsynced before each "
                             "answer, the default)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench: needs valgrind (apt-get install valgrind)")
    up_port = free_port()
    upstream_proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "overhead.py"),
                                      "--serve", "upstream", str(up_port)])
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    try:
        wait_port(up_port)
        runtimes = {"this": None, **({"baseline": args.baseline} if args.baseline else {})}
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for label, runtime in runtimes.items():
                started = time.monotonic()
                results[label] = measure(runtime, upstream, Path(tmp) / label, args)
                print(f"# {label}: {time.monotonic() - started:.0f} s under callgrind", file=sys.stderr)
    finally:
        stop([upstream_proc])
    print(f"instructions per tools/call in the gwc node (callgrind Ir, {args.calls} sequential calls "
          f"after {args.warmup} warm-up calls)")
    print(f"{'path':23s} " + " ".join(f"{label:>12s}" for label in results)
          + ("   change" if len(results) == 2 else ""))
    print("(loop): the main thread's share, the event loop's; the rest is the audit writer's")
    for path in (name for given in args.paths for name in (given, given + " (loop)")):
        counts = [results[label].get(path) for label in results]
        change = (f" {counts[0] / counts[1] - 1:+8.1%}" if len(counts) == 2 and all(counts) else "")
        print(f"{path:23s} " + " ".join(f"{c:12,.0f}" if c else f"{'-':>12s}" for c in counts) + change)


if __name__ == "__main__":
    main()
