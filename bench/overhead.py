"""What gwc adds to a tools/call: latency at concurrency 1 and throughput at concurrency 32.

Paths to the same fast upstream (a minimal aiohttp MCP responder, so the gateway is the
bottleneck): direct, through a bare aiohttp forwarding hop, and through gwc (JWT check, policy
decision, minted upstream token, metrics, the audit record fsynced to a file) on its per-server
endpoint and on the aggregate ``/mcp``, each in both protocol eras: 2026-07-28 (stateless, the
client's bytes go upstream as they are) and 2025-11-25 (a sealed gateway session; gwc's own pooled
upstream session, ids rewritten). Each server runs in its own process; the load comes from this process as raw
JSON-RPC POSTs. Prints medians of several runs.

    python bench/overhead.py [--runs 3] [--calls 2000] [--concurrency 32] [--seconds 5]
                             [--log-level info] [--paths direct,bare-hop,gwc,...]
                             [--per-user-rpm N] [--state redis] [--tracing]
                             [--baseline OTHER_CHECKOUT/.venv/bin/gwc-runtime]

Issue 15's "full governance" node (JWT against a JWKS, a policy rule with an argument condition, a
per-user limit, the audit record durable before the answer, info logs), in memory and in Redis:

    python bench/overhead.py --runs 5 --log-level info --per-user-rpm 100000
    python bench/overhead.py --runs 5 --log-level info --per-user-rpm 100000 --state redis

``cpu us`` is the CPU time (user + system, from /proc) the serving process spent per call during
the throughput phase: the upstream's for ``direct``, the hop's own for ``bare-hop``, the node's for
gwc. On a small shared machine it is much steadier than req/s. ``--baseline`` serves the same bundle
from a second gwc-runtime (another version's) and measures its paths too (``gwc@base``, ...),
interleaved with this one's in every run, so two versions are compared under the same load.
Every run measures the paths in a new random order, so none is always first or last.

``--tracing`` adds a second node of this version with OpenTelemetry tracing on (its paths end in
@otel), measured interleaved with the first: its ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is an
OTLP/HTTP sink on 127.0.0.1 in a process of its own (it answers every export as a collector does,
and keeps nothing), and it gets this process's other ``OTEL_*`` variables (the other nodes get
none). By default every call is sampled (the default sampler, and no client trace context) and the
SDK's batch processor runs with its defaults; to measure 1 call in 100 sampled:

    python bench/overhead.py --runs 5 --log-level info --per-user-rpm 100000 --tracing
    OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 python bench/overhead.py ... --tracing
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

RESULT = {"content": [{"type": "text", "text": "ok"}], "isError": False}
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "echo", "arguments": {"text": "hello"},
    "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
              "io.modelcontextprotocol/clientCapabilities": {},
              "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}}}}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
LEGACY = "2025-11-25"
LEGACY_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "echo", "arguments": {"text": "hello"}}}
LEGACY_HEADERS = {"Content-Type": "application/json",
                  "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": LEGACY}


async def serve_upstream(port: int) -> None:
    """Answers tools/call in either era, plus the 2025-era handshake (with a session id)."""
    async def mcp(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        if message.get("method") == "initialize":
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {
                "protocolVersion": LEGACY, "capabilities": {"tools": {}},
                "serverInfo": {"name": "bench-upstream", "version": "1"}}},
                headers={"Mcp-Session-Id": "bench-session"})
        return web.json_response({"jsonrpc": "2.0", "id": message.get("id"), "result": RESULT})
    app = web.Application()
    app.router.add_post("/mcp", mcp)
    await _serve(app, port)


async def serve_hop(port: int, upstream: str) -> None:
    """The floor for any HTTP proxy written with aiohttp: forward the bytes, relay the answer."""
    session: aiohttp.ClientSession | None = None

    async def forward(request: web.Request) -> web.Response:
        nonlocal session
        session = session or aiohttp.ClientSession()
        async with session.post(upstream, data=await request.read(),
                                headers={"Content-Type": "application/json"}) as resp:
            return web.Response(body=await resp.read(), status=resp.status,
                                content_type=resp.content_type)
    app = web.Application()
    app.router.add_post("/mcp", forward)
    await _serve(app, port)


async def serve_otlp_sink(port: int) -> None:
    """An OTLP/HTTP trace receiver that keeps nothing: an empty ExportTraceServiceResponse (an
    empty protobuf message) for every export, as a collector answers one it accepted."""
    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    await _serve(app, port)


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop the benchmark's child processes, whatever happened."""
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: nothing listening on {port}")


def start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    """A throw-away redis-server on loopback (no persistence), and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_gwc(work: Path, upstream: str, port: int, log_level: str,
              neighbours: dict[str, dict] | None = None, *, bench_fields: dict | None = None,
              runtime_args: list[str] | None = None, runtime: Path | None = None,
              launcher: Sequence[str] = (), env: dict[str, str] | None = None
              ) -> tuple[subprocess.Popen, str]:
    """A one-server registry in front of the fast upstream, built, signed and served by gwc;
    ``neighbours`` adds more servers (name -> manifest fields), visible to the same user;
    ``bench_fields`` adds manifest fields to the benchmarked server (limits); ``runtime_args``
    are gwc-runtime flags (default: the audit trail to a file, as production runs); ``runtime`` is
    the gwc-runtime program (default: this venv's), started through ``launcher`` (e.g. valgrind),
    with ``env`` added to this process's environment less its ``OTEL_*`` variables (a node traces
    only when ``env`` says so)."""
    from gwc.compiler.build.bundle import build
    from gwc.compiler.build.keys import generate_keypair
    from gwc.compiler.build.registry import load_registry
    from gwc.compiler.client.dev_idp import DevIdP

    idp = DevIdP.generate()
    repo = work / "repo"
    (repo / "registry").mkdir(parents=True)
    (repo / "idp.jwks.json").write_text(json.dumps(idp.jwks()))
    (repo / "gateway.yaml").write_text(json.dumps({"identity": {
        "issuer": "https://idp.bench", "audience": "gwc", "jwks_file": "idp.jwks.json",
        "algorithms": ["ES256"]}}))
    (repo / "registry" / "bench.json").write_text(json.dumps({
        "name": "bench", "owner": "perf", "upstream": upstream, "visibility": "team:perf",
        "tools": {"echo": {"access": "read"}}, **(bench_fields or {})}))
    for name, fields in (neighbours or {}).items():
        (repo / "registry" / f"{name}.json").write_text(json.dumps({
            "name": name, "owner": "perf", "visibility": "team:perf", **fields}))
    (repo / "policies" / "perf").mkdir(parents=True)
    (repo / "policies" / "perf" / "bench.yaml").write_text(json.dumps([{
        "id": "perf-read", "subject": {"team": "perf"}, "resource": {"server": "bench"},
        "action": "read", "conditions": {"text": {"pattern": "[a-z]+"}}}]))
    _, ci_pub, ci_key = generate_keypair(work / "ci")
    gateway_key, _, _ = generate_keypair(work / "gateway")
    # another version's runtime (--baseline) may predate the JSON-lines bundle: give it the one
    # document every version reads
    build(load_registry(repo), ci_key, work / "store", 1, "bench",
          **({"encoding": "json"} if runtime is not None else {}))
    proc = subprocess.Popen(
        [*launcher, str(runtime or Path(sys.executable).parent / "gwc-runtime"),
         "--bundle", str(work / "store/bundle.json"),
         "--trust", str(ci_pub), "--listen", f"127.0.0.1:{port}", "--signing-key", str(gateway_key),
         "--public-url", f"http://127.0.0.1:{port}", "--log-level", log_level,
         *(runtime_args if runtime_args is not None
           else ["--audit", f"file:{work / 'audit.jsonl'}"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **(env or {})})
    token = idp.token(issuer="https://idp.bench", audience="gwc", subject="bench-user",
                      groups=["perf"], ttl_s=3600)
    return proc, token


async def latency(url: str, headers: dict, calls: int, call: dict = CALL) -> list[float]:
    body = json.dumps(call).encode()
    samples = []
    async with aiohttp.ClientSession() as session:
        for i in range(calls + 50):
            start = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
            if i >= 50:  # warm-up excluded
                samples.append(time.perf_counter() - start)
            if resp.status != 200 or b'"result"' not in data:
                sys.exit(f"bench: {url} answered {resp.status}: {data[:200]!r}")
    return samples


async def throughput(url: str, headers: dict, concurrency: int, seconds: float,
                     call: dict = CALL) -> float:
    done, elapsed = await load(url, headers, concurrency, seconds, call)
    return done / elapsed


async def load(url: str, headers: dict, concurrency: int, seconds: float,
               call: dict = CALL) -> tuple[int, float]:
    """(calls answered, seconds taken) with ``concurrency`` callers for about ``seconds``."""
    body = json.dumps(call).encode()
    done = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        sys.exit(f"bench: {url} answered {resp.status}")
                done += 1
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.perf_counter() - start


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc); None where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1000


Route = tuple[str, dict, dict]  # url, headers, JSON-RPC call


async def legacy_session(url: str, token: str) -> dict:
    """Headers of a 2025-era session opened with the gateway (initialize, then initialized)."""
    headers = {**LEGACY_HEADERS, "Authorization": f"Bearer {token}"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=init, headers=headers) as resp:
            if resp.status != 200:
                sys.exit(f"bench: initialize at {url} answered {resp.status}")
            headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        async with session.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                headers=headers) as resp:
            await resp.read()
    return headers


def renamed(call: dict, name: str) -> dict:
    return {**call, "params": {**call["params"], "name": name}}


async def gwc_routes(port: int, token: str) -> dict[str, Route]:
    """gwc's four ways in: per-server and aggregate endpoints, each in both eras."""
    server, aggregate = f"http://127.0.0.1:{port}/servers/bench/mcp", f"http://127.0.0.1:{port}/mcp"
    auth = {**HEADERS, "Authorization": f"Bearer {token}"}
    return {
        "gwc": (server, auth, CALL),
        "gwc-agg": (aggregate, {**auth, "Mcp-Name": "bench__echo"}, renamed(CALL, "bench__echo")),
        "gwc-legacy": (server, await legacy_session(server, token), LEGACY_CALL),
        "gwc-agg-legacy": (aggregate, await legacy_session(aggregate, token),
                           renamed(LEGACY_CALL, "bench__echo")),
    }


def load_parser(doc: str) -> argparse.ArgumentParser:
    """The options every load benchmark shares: how many runs, calls, and how hard."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    return parser


async def measure_path(url: str, headers: dict, call: dict, args: argparse.Namespace,
                       pid: int | None = None) -> dict[str, float]:
    """p50 and p99 of sequential calls, requests/s at the given concurrency, and (given the
    serving process) its CPU microseconds per call under that load."""
    samples = await latency(url, headers, args.calls, call)
    before = cpu_seconds(pid) if pid is not None else None
    done, elapsed = await load(url, headers, args.concurrency, args.seconds, call)
    after = cpu_seconds(pid) if pid is not None else None
    result = {"p50": pct(samples, 0.50), "p99": pct(samples, 0.99), "rps": done / elapsed}
    if before is not None and after is not None and done:
        result["cpu_us"] = (after - before) / done * 1e6
    return result


async def measure(args: argparse.Namespace, fixed: dict[str, Route], pids: dict[str, int],
                  gwcs: list[tuple[str, int, str, int]]) -> None:
    """``gwcs``: (suffix of its path names, port, token, pid) of each gwc node measured."""
    paths = dict(fixed)
    for suffix, port, token, pid in gwcs:
        for name, route in (await gwc_routes(port, token)).items():
            paths[name + suffix], pids[name + suffix] = route, pid
    paths = {name: route for name, route in paths.items() if name.partition("@")[0] in args.paths}
    results: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    order = list(paths)
    shares: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.runs):
        random.shuffle(order)
        this_run = {}
        for name in order:
            url, headers, call = paths[name]
            this_run[name] = await measure_path(url, headers, call, args, pids.get(name))
            for key, value in this_run[name].items():
                results[name].setdefault(key, []).append(value)
        if "bare-hop" in this_run:
            for name, measured in this_run.items():
                shares[name].append(measured["rps"] / this_run["bare-hop"]["rps"])
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    print(f"tools/call, {args.calls} sequential calls and {args.seconds:g} s at concurrency "
          f"{args.concurrency}, median of {args.runs} runs in shuffled order ({os.cpu_count()} "
          f"cores, all on this machine; gwc log level {args.log_level}, per-user limit "
          f"{args.per_user_rpm or 'none'}, state {'redis' if args.state else 'memory'})")
    direct, hop = med.get("direct"), med.get("bare-hop")
    print(f"{'path':20s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s @' + str(args.concurrency):>12s}"
          f" {'+p50 ms':>8s} {'+p99 ms':>8s} {'% of hop':>9s} {'min-max':>9s} {'cpu us':>7s}")
    for name, m in med.items():
        added = (f"{m['p50'] - direct['p50']:+8.2f} {m['p99'] - direct['p99']:+8.2f}"
                 if direct else f"{'':8s} {'':8s}")
        share = f"{m['rps'] / hop['rps']:9.0%}" if hop else f"{'':9s}"
        spread = (f"{min(shares[name]):4.0%}-{max(shares[name]):4.0%}".replace(" ", "")
                  if shares[name] else "")
        cpu = f"{m['cpu_us']:7.0f}" if "cpu_us" in m else ""
        print(f"{name:20s} {m['p50']:8.2f} {m['p99']:8.2f} {m['rps']:12.0f} {added} {share} "
              f"{spread:>9s} {cpu}")
        p50s, p99s = results[name]["p50"], results[name]["p99"]
        print(f"{'':20s} p50 {min(p50s):.2f}-{max(p50s):.2f}, p99 {min(p99s):.2f}-{max(p99s):.2f}, "
              f"req/s {min(results[name]['rps']):.0f}-{max(results[name]['rps']):.0f} over runs")
    print("targets for gwc rows: +p50 <= 1 ms, +p99 <= 3 ms over direct; >= 70% of the bare hop "
          "(>= 60% with --state redis); min-max: each run's share of that run's hop")


PATHS = ("direct", "bare-hop", "gwc", "gwc-agg", "gwc-legacy", "gwc-agg-legacy")


def main() -> None:
    parser = load_parser(__doc__)
    parser.add_argument("--log-level", default="warning", help="gwc's log level (info and debug "
                        "write request lines, to /dev/null here)")
    parser.add_argument("--paths", default=",".join(PATHS), type=lambda v: v.split(","),
                        help=f"comma-separated subset of {', '.join(PATHS)}")
    parser.add_argument("--baseline", type=Path, metavar="GWC_RUNTIME",
                        help="another gwc-runtime (e.g. another checkout's .venv/bin/gwc-runtime) "
                             "measured beside this one, interleaved: its paths end in @base")
    parser.add_argument("--per-user-rpm", type=int, metavar="N",
                        help="a per-user limit of N calls a minute on the benchmarked server (the "
                             "check is measured; 100000 is never reached here)")
    parser.add_argument("--state", choices=["redis"],
                        help="limits and approvals in a throw-away local redis-server instead of "
                             "node memory")
    parser.add_argument("--tracing", action="store_true",
                        help="also measure a node with OpenTelemetry tracing on, exporting to an "
                             "OTLP/HTTP sink on 127.0.0.1 (its paths end in @otel)")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # child process mode
        kind, port, *rest = args.serve
        asyncio.run(serve_upstream(int(port)) if kind == "upstream" else
                    serve_otlp_sink(int(port)) if kind == "sink" else serve_hop(int(port), rest[0]))
        return
    up_port, hop_port, gwc_port, base_port = free_port(), free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    me = [sys.executable, __file__, "--serve"]
    procs = [subprocess.Popen([*me, "upstream", str(up_port)]),
             subprocess.Popen([*me, "hop", str(hop_port), upstream])]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fields = {"limits": {"per_user_rpm": args.per_user_rpm}} if args.per_user_rpm else None
            runtime_args = ["--audit", f"file:{Path(tmp) / 'audit.jsonl'}"]
            if args.state:
                redis_proc, redis_url = start_redis(Path(tmp))
                procs.append(redis_proc)
                runtime_args += ["--state", redis_url]
            gwc_proc, token = start_gwc(Path(tmp), upstream, gwc_port, args.log_level,
                                        bench_fields=fields, runtime_args=runtime_args)
            procs.append(gwc_proc)
            gwcs = [("", gwc_port, token, gwc_proc.pid)]
            if args.baseline:
                base_args = ["--audit", f"file:{Path(tmp) / 'baseline-audit.jsonl'}",
                             *runtime_args[2:]]
                base_proc, base_token = start_gwc(Path(tmp) / "baseline", upstream, base_port,
                                                  args.log_level, bench_fields=fields,
                                                  runtime_args=base_args, runtime=args.baseline)
                procs.append(base_proc)
                gwcs.append(("@base", base_port, base_token, base_proc.pid))
            if args.tracing:
                sink_port, otel_port = free_port(), free_port()
                procs.append(subprocess.Popen([*me, "sink", str(sink_port)]))
                wait_port(sink_port)
                otel_env = {**{k: v for k, v in os.environ.items() if k.startswith("OTEL_")},
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                                f"http://127.0.0.1:{sink_port}/v1/traces"}
                otel_args = ["--audit", f"file:{Path(tmp) / 'otel-audit.jsonl'}", *runtime_args[2:]]
                otel_proc, otel_token = start_gwc(Path(tmp) / "otel", upstream, otel_port,
                                                  args.log_level, bench_fields=fields,
                                                  runtime_args=otel_args, env=otel_env)
                procs.append(otel_proc)
                gwcs.append(("@otel", otel_port, otel_token, otel_proc.pid))
            for port in (up_port, hop_port, *(port for _, port, _, _ in gwcs)):
                wait_port(port)
            fixed = {"direct": (upstream, HEADERS, CALL),
                     "bare-hop": (f"http://127.0.0.1:{hop_port}/mcp", HEADERS, CALL)}
            pids = {"direct": procs[0].pid, "bare-hop": procs[1].pid}
            asyncio.run(measure(args, fixed, pids, gwcs))
        finally:
            stop(procs)


if __name__ == "__main__":
    main()
