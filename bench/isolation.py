"""One bad upstream must not hurt the others: a healthy upstream's latency and throughput through
gwc, alone and then beside a hanging upstream and a failing one that are hammered at the same time.

The healthy upstream is bench/overhead.py's fast responder; the hanging one accepts requests and
never answers (gwc's timeout for it is 300 ms, cap 4); the failing one answers HTTP 500 (its
breaker opens). Prints the healthy path's p50/p99 at concurrency 1, its req/s at concurrency 16,
and how the bad calls ended. Medians of several runs.

    python bench/isolation.py [--runs 3] [--calls 1000] [--seconds 5]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web
from overhead import CALL, HEADERS, _serve, free_port, latency, pct, start_gwc, stop, throughput, wait_port

BAD = {"timeout_ms": 300, "max_concurrency": 4, "tools": {"echo": {"access": "read"}}}


async def serve_bad(kind: str, port: int) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(status=503)

    async def fail(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500, text="internal error")
    app = web.Application()
    app.router.add_post("/mcp", hang if kind == "hang" else fail)
    await _serve(app, port)


async def hammer(urls: list[str], token: str, rate: float, stop_after_s: float) -> Counter[str]:
    """Bad-neighbour traffic at a steady ``rate`` per second, spread over the sick upstreams,
    until SIGTERM (run in its own process, so it does not share the measuring client's loop)."""
    outcomes: Counter[str] = Counter()
    headers = {**HEADERS, "Authorization": f"Bearer {token}", "Mcp-Name": "echo"}
    body = json.dumps(CALL).encode()
    deadline = time.monotonic() + stop_after_s
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        async with session.post(url, data=body, headers=headers) as resp:
            answer = await resp.json(content_type=None)
        outcomes[answer.get("error", {}).get("data", {}).get("reason", "ok")] += 1
    async with aiohttp.ClientSession() as session:
        pending = set()
        i = 0
        while time.monotonic() < deadline and not stop.is_set():
            pending.add(asyncio.create_task(one(session, urls[i % len(urls)])))
            pending = {t for t in pending if not t.done()}
            i += 1
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(asyncio.gather(*pending), 10)
    return outcomes


async def measure(args: argparse.Namespace, port: int, token: str) -> None:
    auth = {**HEADERS, "Authorization": f"Bearer {token}"}
    healthy = f"http://127.0.0.1:{port}/servers/bench/mcp"
    sick = [f"http://127.0.0.1:{port}/servers/{name}/mcp" for name in ("hanging", "failing")]
    rows: dict[str, dict[str, list[float]]] = {k: {"p50": [], "p99": [], "rps": []}
                                               for k in ("alone", "beside bad")}
    outcomes: Counter[str] = Counter()
    for _ in range(args.runs):
        for label in rows:
            noise = None
            if label == "beside bad":
                noise = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--hammer", json.dumps([sick, token, args.bad_rate]),
                    stdout=asyncio.subprocess.PIPE)
                await asyncio.sleep(1.0)
            samples = await latency(healthy, auth, args.calls)
            rows[label]["p50"].append(pct(samples, 0.5))
            rows[label]["p99"].append(pct(samples, 0.99))
            rows[label]["rps"].append(await throughput(healthy, auth, 16, args.seconds))
            if noise is not None:
                noise.terminate()
                out, _ = await noise.communicate()
                outcomes.update(json.loads(out or b"{}"))
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in rows.items()}
    print(f"healthy upstream through gwc, {args.calls} sequential calls and {args.seconds:g} s at "
          f"concurrency 16, median of {args.runs} runs; beside: {args.bad_rate:g} calls/s to the "
          f"hanging and failing upstreams from another process")
    print(f"{'':12s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s @16':>10s}")
    for label, m in med.items():
        print(f"{label:12s} {m['p50']:8.2f} {m['p99']:8.2f} {m['rps']:10.0f}")
    alone, beside = med["alone"], med["beside bad"]
    print(f"beside bad neighbours: p99 x{beside['p99'] / alone['p99']:.2f}, throughput "
          f"{beside['rps'] / alone['rps']:.0%} of alone; healthy calls failed: 0 (any failure "
          f"exits)")
    print(f"bad calls ended as: {dict(outcomes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--bad-rate", type=float, default=200, help="calls per second to the "
                        "bad upstreams (default 200)")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--hammer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hammer:
        urls, token, rate = json.loads(args.hammer)
        print(json.dumps(asyncio.run(hammer(urls, token, rate, 600))))
        return
    if args.serve:
        kind, port = args.serve
        if kind == "upstream":
            from overhead import serve_upstream
            asyncio.run(serve_upstream(int(port)))
        else:
            asyncio.run(serve_bad(kind, int(port)))
        return
    ports = {kind: free_port() for kind in ("upstream", "hang", "fail")}
    procs = [subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)])
             for kind, port in ports.items()]
    url = {kind: f"http://127.0.0.1:{port}/mcp" for kind, port in ports.items()}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            gwc_port = free_port()
            gwc, token = start_gwc(Path(tmp), url["upstream"], gwc_port, "warning", {
                "hanging": {**BAD, "upstream": url["hang"]},
                "failing": {**BAD, "upstream": url["fail"]}})
            procs.append(gwc)
            for port in (*ports.values(), gwc_port):
                wait_port(port)
            asyncio.run(measure(args, gwc_port, token))
        finally:
            stop(procs)


if __name__ == "__main__":
    main()
