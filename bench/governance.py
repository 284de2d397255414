"""What governance costs on the hot path: the audit trail and rate limits, each on and off, and
the Redis state backend against the in-memory one.

The same fast upstream and the same stateless tools/call as bench/overhead.py, through gwc's
per-server endpoint, with gwc-runtime started once per configuration:

- ``baseline``: ``--audit none``, no limits (what gwc costs without governance);
- ``audit-file``: every call's record fsynced to a JSONL file before the answer (the default);
- ``audit-stdout``: records to stdout (here /dev/null), as a SIEM collector would read them;
- ``limits-memory``: an upstream-wide limit checked per call in node memory, no audit;
- ``limits-redis``: the same limit in a real redis-server (``--state redis://``), no audit;
- ``all-redis``: audit file and Redis limits together (a production fleet node).

The limit (1,000,000/min) is never reached: what is measured is the check. Prints medians of
several runs and each configuration against the baseline.

    python bench/governance.py [--runs 3] [--calls 2000] [--concurrency 32] [--seconds 5]
                               [--configs baseline,audit-file,...]
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from overhead import (
    CALL,
    HEADERS,
    free_port,
    load_parser,
    measure_path,
    start_gwc,
    start_redis,
    stop,
    wait_port,
)

LIMITS = {"limits": {"upstream_rpm": 1_000_000}}
CONFIGS = ("baseline", "audit-file", "audit-stdout", "limits-memory", "limits-redis", "all-redis")


def settings(config: str, work: Path, redis_url: str) -> tuple[dict | None, list[str]]:
    """(manifest fields of the benchmarked server, gwc-runtime flags) of one configuration."""
    audit_file = ["--audit", f"file:{work / 'audit.jsonl'}"]
    return {
        "baseline": (None, ["--audit", "none"]),
        "audit-file": (None, audit_file),
        "audit-stdout": (None, ["--audit", "stdout"]),
        "limits-memory": (LIMITS, ["--audit", "none"]),
        "limits-redis": (LIMITS, ["--audit", "none", "--state", redis_url]),
        "all-redis": (LIMITS, [*audit_file, "--state", redis_url]),
    }[config]


def main() -> None:
    parser = load_parser(__doc__)
    parser.add_argument("--configs", default=",".join(CONFIGS), type=lambda v: v.split(","),
                        help=f"comma-separated subset of {', '.join(CONFIGS)}")
    args = parser.parse_args()
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).parent / "overhead.py"),
                               "--serve", "upstream", str(up_port)])]
    results: dict[str, dict[str, list[float]]] = {c: {"p50": [], "p99": [], "rps": []}
                                                   for c in args.configs}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            wait_port(up_port)
            redis_proc, redis_url = start_redis(Path(tmp))
            procs.append(redis_proc)
            for run in range(args.runs):
                for config in args.configs:
                    work = Path(tmp) / f"{config}-{run}"
                    fields, flags = settings(config, work, redis_url)
                    port = free_port()
                    gwc, token = start_gwc(work, upstream, port, "warning", bench_fields=fields,
                                           runtime_args=flags)
                    try:
                        wait_port(port)
                        url = f"http://127.0.0.1:{port}/servers/bench/mcp"
                        got = asyncio.run(measure_path(
                            url, {**HEADERS, "Authorization": f"Bearer {token}"}, CALL, args))
                    finally:
                        stop([gwc])
                    for key, value in got.items():
                        results[config][key].append(value)
        finally:
            stop(procs)
    med = {c: {k: statistics.median(v) for k, v in r.items()} for c, r in results.items()}
    base = med.get("baseline")
    print(f"tools/call through gwc, {args.calls} sequential calls and {args.seconds:g} s at "
          f"concurrency {args.concurrency}, median of {args.runs} runs ({os.cpu_count()} cores)")
    print(f"{'config':14s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'+p50 ms':>8s} "
          f"{'+p99 ms':>8s} {'rps vs base':>11s}")
    for config, m in med.items():
        extra = (f"{m['p50'] - base['p50']:+8.2f} {m['p99'] - base['p99']:+8.2f} "
                 f"{m['rps'] / base['rps']:11.0%}" if base else "")
        print(f"{config:14s} {m['p50']:8.2f} {m['p99']:8.2f} {m['rps']:8.0f} {extra}")


if __name__ == "__main__":
    main()
