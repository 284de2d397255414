"""A gwc node of several processes on one port, against the bare hop, at concurrency 32.

Not a feature of gwc-runtime: each process is a plain gwc-runtime started with ``SO_REUSEPORT`` on
its listening socket (through ``--reuse-port-launcher``, this script run as a launcher), so the
kernel spreads connections over them. They serve one bundle, each with its own audit trail and node
id. Rate limits held in node memory are then counted per process (N processes allow N times a
per-user limit), which is why a multi-process node is a design question, not a flag: this script
gives that question its figure (issue 15). Each round measures the hop, then the node, for
``--seconds`` each; the table is the node's share of the hop per round and the median.

    python bench/processes.py [--processes 2] [--rounds 3] [--seconds 5]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import overhead  # bench/overhead.py, beside this script

GWC_RUNTIME = Path(sys.executable).parent / "gwc-runtime"


def run_with_reuse_port() -> None:
    """Launcher mode: gwc-runtime's own main, its listening socket opened with SO_REUSEPORT."""
    import functools

    from aiohttp import web

    from gwc.runtime.cli import main as runtime_main
    web.run_app = functools.partial(web.run_app, reuse_port=True)  # type: ignore[assignment]
    sys.argv = ["gwc-runtime", *sys.argv[3:]]  # after the flag: gwc-runtime's path, its options
    runtime_main()


def main() -> None:
    if sys.argv[1:2] == ["--reuse-port-launcher"]:
        run_with_reuse_port()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, choices=range(1, 9), metavar="1..8")
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 21), metavar="1..20")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per path and round")
    args = parser.parse_args()
    launcher = [sys.executable, __file__, "--reuse-port-launcher"]
    up_port, hop_port, node_port = overhead.free_port(), overhead.free_port(), overhead.free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    serve = [sys.executable, str(Path(overhead.__file__)), "--serve"]
    procs = [subprocess.Popen([*serve, "upstream", str(up_port)]),
             subprocess.Popen([*serve, "hop", str(hop_port), upstream])]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            first, token = overhead.start_gwc(
                work, upstream, node_port, "info", bench_fields={"limits": {"per_user_rpm": 100000}},
                runtime_args=["--audit", f"file:{work / 'audit-0.jsonl'}"], launcher=launcher)
            procs.append(first)
            overhead.wait_port(node_port)
            for i in range(1, args.processes):  # the same bundle and keys as the first
                procs.append(subprocess.Popen(
                    [*launcher, str(GWC_RUNTIME), "--bundle", str(work / "store/bundle.json"),
                     "--trust", str(work / "ci.pub"), "--listen", f"127.0.0.1:{node_port}",
                     "--signing-key", str(work / "gateway.key"),
                     "--public-url", f"http://127.0.0.1:{node_port}", "--log-level", "info",
                     "--audit", f"file:{work / f'audit-{i}.jsonl'}", "--node-id", f"bench-{i}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(3)  # the others bind the same port: nothing to wait for from outside
            if any(proc.poll() is not None for proc in procs):
                sys.exit("bench: a process stopped before the load")
            overhead.wait_port(up_port)
            overhead.wait_port(hop_port)
            asyncio.run(measure(args, node_port, hop_port, token))
        finally:
            overhead.stop(procs)


async def measure(args: argparse.Namespace, node_port: int, hop_port: int, token: str) -> None:
    url, headers, call = (await overhead.gwc_routes(node_port, token))["gwc"]
    hop = f"http://127.0.0.1:{hop_port}/mcp"
    shares = []
    for round_ in range(1, args.rounds + 1):
        await overhead.load(url, headers, 32, 1, call)  # warm every process's connections
        hop_done, hop_s = await overhead.load(hop, overhead.HEADERS, 32, args.seconds, overhead.CALL)
        done, seconds = await overhead.load(url, headers, 32, args.seconds, call)
        shares.append(done / seconds / (hop_done / hop_s))
        print(f"round {round_}: hop {hop_done / hop_s:,.0f} req/s, gwc x{args.processes} "
              f"{done / seconds:,.0f} req/s, {shares[-1]:.0%} of the hop", flush=True)
    print(f"{args.processes} process(es): median {statistics.median(shares):.0%} of the hop "
          f"(min {min(shares):.0%}, max {max(shares):.0%})")


if __name__ == "__main__":
    main()
