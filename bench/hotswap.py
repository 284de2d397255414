"""Hot swap under load: how fast a node moves to a new big bundle, and what requests see meanwhile.

Generates the big registry of bench/compile.py (2,000 servers x 20 tools, 10,000 rules), routes one
server (server-0000) to a minimal local MCP upstream, builds bundles with serials 1..swaps+1 using the
real `gwc build`, and starts gwc-runtime on a file source with a short poll interval. Workers make
tools/call requests for the whole run while the bundle file is replaced (atomically) by the next
serial, several times. For each swap it measures the time from the replacement to /readyz reporting
the new serial, the activation's own duration (the runtime's `activation_s` log field), and the
latency of the requests that overlapped the activation, the longest event-loop stall (a /healthz
probe every few ms from outside; with --log-level debug also the node's own ticker); over the run,
every failed request.

    python bench/hotswap.py [--swaps 5] [--changed 20] [--workers 8] [--rate 0] [--poll-interval 1]
                            [--settle 4] [--servers 2000] [--tools 20] [--rules 10000]
                            [--probe-ms 5] [--log-level info] [--keep DIR] [--runtime PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import yaml
from compile import _manifest, _rules, generate
from overhead import CALL, HEADERS, free_port, pct, serve_upstream, wait_port

SERVER, TOOL, TEAM = "server-0000", "read_0", "team-0"  # generated: team-0 owns server-0000
ISSUER = "https://idp.bench"
STEADY_S = 1.5  # calls in the last 1.5 s before a replacement are the "steady" baseline


def revise(root: Path, i: int, args: argparse.Namespace, serial: int, upstream: str) -> None:
    """Rewrite server i's manifest and policy file as a change merged for ``serial`` would: a new
    description and new rule ids (so its server entry and its rules in the bundle change)."""
    manifest = _manifest(i, args.tools)
    manifest["description"] += f", revision {serial}"
    if manifest["name"] == SERVER:  # the server called: a local upstream, no per-user limit, so
        manifest["upstream"] = upstream  # that the calls are forwarded, not refused as rate limited
        del manifest["limits"]
    rules = _rules(i, args.rules // args.servers, args.tools)
    for rule in rules:
        rule["id"] += f"-r{serial}"
    for old in (root / "registry").glob(f"{manifest['name']}.*"):
        old.unlink()
    (root / "registry" / f"{manifest['name']}.json").write_text(json.dumps(manifest))
    (root / "policies" / manifest["owner"] / f"{manifest['name']}.yaml").write_text(json.dumps(rules))


def prepare(work: Path, args: argparse.Namespace) -> tuple[list[Path], Path, str, int]:
    """The generated registry with a dev IdP and server-0000 routed to a local upstream, built at
    serials 1..swaps+1, each with --changed servers revised. Returns the bundle files, the CI
    public key, a bearer token that may call server-0000 and the upstream's port (it is in the
    bundles). Reuses an earlier build in ``work`` made with the same sizes (--keep)."""
    from gwc.compiler.client.dev_idp import DevIdP

    meta_path = work / "hotswap-build.json"
    sizes = {"servers": args.servers, "tools": args.tools, "rules": args.rules,
             "bundles": args.swaps + 1, "changed": args.changed, "limits": "none on " + SERVER}
    bundles = [work / f"out-{serial}" / "bundle.json" for serial in range(1, args.swaps + 2)]
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("sizes") == sizes and all(b.exists() for b in bundles):
        idp, port = DevIdP.load(work / "idp.key"), meta["upstream_port"]
    else:
        root, port, idp = work / "repo", free_port(), DevIdP.generate()
        upstream = f"http://127.0.0.1:{port}/mcp"
        shutil.rmtree(root, ignore_errors=True)
        generate(root, args.servers, args.tools, args.rules)
        idp.save(work / "idp")
        (root / "idp.jwks.json").write_text(json.dumps(idp.jwks()))
        gateway = yaml.safe_load((root / "gateway.yaml").read_text())
        gateway["identity"] = {"issuer": ISSUER, "audience": "gwc", "jwks_file": "idp.jwks.json",
                               "algorithms": ["ES256"]}
        (root / "gateway.yaml").write_text(yaml.safe_dump(gateway))
        gwc = str(Path(sys.executable).parent / "gwc")
        subprocess.run([gwc, "keygen", "--force", "--out", str(work / "ci")], check=True,
                       capture_output=True)
        for serial, bundle in enumerate(bundles, start=1):
            changed = [0] if serial == 1 else [
                ((serial - 2) * args.changed + j) % args.servers for j in range(args.changed)]
            for i in changed:
                revise(root, i, args, serial, upstream)
            subprocess.run([gwc, "build", str(root), "--key", str(work / "ci.key"), "--out",
                            str(bundle.parent), "--serial", str(serial), "--revision",
                            f"bench-{serial}"], check=True, capture_output=True)
        meta_path.write_text(json.dumps({"sizes": sizes, "upstream_port": port}))
    token = idp.token(issuer=ISSUER, audience="gwc", subject="bench-user", groups=[TEAM],
                      ttl_s=3600)
    return bundles, work / "ci.pub", token, port


def start_runtime(work: Path, bundle: Path, ci_pub: Path, port: int, args: argparse.Namespace,
                  log_path: Path) -> subprocess.Popen:
    from gwc.compiler.build.keys import generate_keypair

    gateway_key, _, _ = generate_keypair(work / "gateway")
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [str(args.runtime or Path(sys.executable).parent / "gwc-runtime"), "--bundle", str(bundle),
             "--trust", str(ci_pub), "--listen", f"127.0.0.1:{port}",
             "--signing-key", str(gateway_key), "--public-url", f"http://127.0.0.1:{port}",
             "--poll-interval", str(args.poll_interval), "--state-dir", str(work / "state"),
             "--log-level", args.log_level],
            stdout=subprocess.DEVNULL, stderr=log_file)


@dataclass
class Run:
    calls: list[tuple[float, float, bool]] = field(default_factory=list)  # start, seconds, ok
    probes: list[tuple[float, float]] = field(default_factory=list)  # /healthz: start, seconds
    failures: list[str] = field(default_factory=list)
    swaps: list[dict] = field(default_factory=list)  # serial, replaced_at, visible_s, rss_mb


async def serial_of(session: aiohttp.ClientSession, base: str) -> int | None:
    try:
        async with session.get(f"{base}/readyz") as resp:
            return (await resp.json()).get("serial") if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load_and_swap(args: argparse.Namespace, base: str, token: str, bundles: list[Path],
                        live: Path, pid: int) -> Run:
    run = Run()
    url = f"{base}/servers/{SERVER}/mcp"
    body = json.dumps({**CALL, "params": {**CALL["params"], "name": TOOL}}).encode()
    headers = {**HEADERS, "Mcp-Name": TOOL, "Authorization": f"Bearer {token}"}
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.workers + 2),
                                     timeout=timeout) as session:
        deadline = time.perf_counter() + 60
        while await serial_of(session, base) != 1:
            if time.perf_counter() > deadline:
                sys.exit("bench: gwc-runtime did not serve serial 1 within 60 s")
            await asyncio.sleep(0.1)

        async def worker(k: int) -> None:
            gap = args.workers / args.rate if args.rate else 0.0
            next_at = time.perf_counter() + k * gap / args.workers  # staggered, not in bursts
            while not stop.is_set():
                if gap:  # paced (open loop), else as fast as the answers come
                    next_at += gap
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                start, wall = time.perf_counter(), time.time()
                ok, why = False, ""
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        data = await resp.read()
                    # a refusal (rate limit, denial) is a tool result with isError: a failure here
                    ok = resp.status == 200 and b'"result"' in data and b'"isError":true' not in data
                    why = f"HTTP {resp.status}: {data[:160]!r}"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    why = f"{exc.__class__.__name__}: {exc}"
                run.calls.append((wall, time.perf_counter() - start, ok))
                if not ok:
                    run.failures.append(why)

        async def probe() -> None:
            """GET /healthz every --probe-ms on its own connection (paced, open loop): it does
            nothing but answer, so its latency is how long the node's event loop could not run."""
            async with aiohttp.ClientSession(timeout=timeout) as own:
                next_at = time.perf_counter()
                while not stop.is_set():
                    next_at += args.probe_ms / 1000
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    start, wall = time.perf_counter(), time.time()
                    try:
                        async with own.get(f"{base}/healthz") as resp:
                            await resp.read()
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        run.failures.append(f"/healthz: {exc.__class__.__name__}: {exc}")
                    run.probes.append((wall, time.perf_counter() - start))
                    next_at = max(next_at, time.perf_counter())  # late: no burst to catch up

        workers = [asyncio.create_task(worker(k)) for k in range(args.workers)]
        if args.probe_ms:
            workers.append(asyncio.create_task(probe()))
        try:
            await asyncio.sleep(args.settle)
            for serial, bundle in enumerate(bundles[1:], start=2):
                os.utime(bundle)  # a fresh mtime: the file source's ETag is size + mtime
                replaced_at, start = time.time(), time.perf_counter()
                os.replace(bundle, live)  # same folder: atomic, as `gwc build` publishes
                deadline = start + 60
                while await serial_of(session, base) != serial:
                    if time.perf_counter() > deadline:
                        sys.exit(f"bench: serial {serial} not served 60 s after the swap")
                    await asyncio.sleep(0.005)
                visible = time.perf_counter() - start
                await asyncio.sleep(args.settle)
                run.swaps.append({"serial": serial, "replaced_at": replaced_at,
                                  "visible_s": visible, "rss_mb": rss_mb(pid)})
        finally:
            stop.set()
            await asyncio.gather(*workers)
    return run


def activations(log_path: Path) -> dict[int, tuple[float, float, float, float]]:
    """serial -> (wall time the activation ended, activation_s, check_s, loop_stall_ms) from the
    runtime's log (the stall only at debug level, else nan)."""
    found = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if '"bundle activated"' not in line:
            continue
        entry = json.loads(line)
        ended = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC).timestamp()
        found[entry["serial"]] = (ended, entry.get("activation_s", float("nan")),
                                  entry.get("check_s", float("nan")),
                                  entry.get("loop_stall_ms", float("nan")))
    return found


def report(args: argparse.Namespace, run: Run,
           acts: dict[int, tuple[float, float, float, float]]) -> None:
    """Per swap: the calls in flight during the activation (p50/p99/max), the slowest /healthz
    probe in flight meanwhile ("stall": how long the event loop could not answer at all; "tick":
    the node's own measure at debug level) and the slowest call until the next poll has freed
    the replaced bundle ("max after")."""
    calls = run.calls
    rate = f"{args.rate:g} calls/s" if args.rate else "closed loop"
    print(f"hot swap of a {args.servers} x {args.tools} + {args.rules}-rule bundle, {len(run.swaps)} "
          f"swaps of {args.changed} changed servers each, {args.workers} workers ({rate}), "
          f"poll interval {args.poll_interval:g} s, gwc log level {args.log_level} "
          f"({os.cpu_count()} cores, all on this machine)")
    print(f"{'serial':>6s} {'visible s':>10s} {'activation s':>13s} {'check s':>8s} {'calls':>6s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} {'stall ms':>9s} {'tick ms':>8s} "
          f"{'max after':>10s} {'rss MB':>7s}")
    during_all: list[float] = []
    steady_all: list[float] = []
    after_max: list[float] = []
    stalls, steady_probes, ticks = [], [], []
    visible, activation, check = [], [], []
    for swap in run.swaps:
        ended, act_s, check_s, tick = acts.get(swap["serial"], (float("nan"),) * 4)
        freed = ended + 1.2 * args.poll_interval + 0.25  # the next poll round frees the old one
        during = [s for w, s, _ in calls if ended - act_s <= w + s and w <= ended] or [float("nan")]
        after = [s for w, s, _ in calls if ended < w <= freed] or [float("nan")]
        steady_all += [s for w, s, _ in calls
                       if swap["replaced_at"] - STEADY_S <= w and w + s < swap["replaced_at"]]
        during_all += during
        stall = max((s for w, s in run.probes if ended - act_s <= w + s and w <= ended),
                    default=float("nan"))
        steady_probes += [s for w, s in run.probes
                          if swap["replaced_at"] - STEADY_S <= w and w + s < swap["replaced_at"]]
        stalls.append(stall)
        ticks.append(tick)
        after_max.append(max(after))
        visible.append(swap["visible_s"])
        activation.append(act_s)
        check.append(check_s)
        print(f"{swap['serial']:6d} {swap['visible_s']:10.3f} {act_s:13.3f} {check_s:8.3f} "
              f"{len(during):6d} {pct(during, .5):7.1f} {pct(during, .99):7.1f} "
              f"{max(during) * 1000:7.1f} {stall * 1000:9.1f} {tick:8.1f} "
              f"{max(after) * 1000:10.1f} {swap['rss_mb']:7.0f}")
    print(f"median: visible {statistics.median(visible):.3f} s (replace -> /readyz serial, "
          f"includes up to {1.2 * args.poll_interval:g} s of poll wait), activation "
          f"{statistics.median(activation):.3f} s (target < 0.5 s), of which verify + parse "
          f"{statistics.median(check):.3f} s")
    for label, samples in ((f"steady ({STEADY_S:g} s before each swap)", steady_all),
                           ("during activations", during_all)):
        print(f"latency {label}: {len(samples)} calls, p50 {pct(samples, .5):.1f} ms, p99 "
              f"{pct(samples, .99):.1f} ms, max {max(samples) * 1000:.1f} ms")
    if args.probe_ms:
        print(f"event-loop stall (slowest /healthz probe, every {args.probe_ms:g} ms) during an "
              f"activation: median {statistics.median(stalls) * 1000:.1f} ms, max "
              f"{max(stalls) * 1000:.1f} ms (target < 50 ms); steady: max "
              f"{max(steady_probes, default=float('nan')) * 1000:.1f} ms")
    if any(t == t for t in ticks):  # the node's ticker (debug level)
        print(f"event-loop stall by the node's 1 ms ticker: median {statistics.median(ticks):.1f} "
              f"ms, max {max(ticks):.1f} ms")
    print(f"slowest call after an activation, until the old bundle is freed: median "
          f"{statistics.median(after_max) * 1000:.1f} ms, max {max(after_max) * 1000:.1f} ms")
    print(f"requests: {len(calls)} in {len(run.swaps)} swaps, failed {len(run.failures)} (target 0)")
    for why in sorted(set(run.failures))[:5]:
        print(f"  failure: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8, help="concurrent tools/call loops")
    parser.add_argument("--rate", type=float, default=0, help="total calls per second, spread "
                        "over the workers (0: each worker calls again as soon as answered)")
    parser.add_argument("--runtime", type=Path, default=None,
                        help="the gwc-runtime to measure (default: the one beside this Python); "
                        "another version's, or a launcher of it, for a before/after on the same "
                        "bundles")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="gwc-runtime's "
                        "--poll-interval (seconds, +-20%% jitter)")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds of load before the "
                        "first swap and after each one")
    parser.add_argument("--changed", type=int, default=20, help="servers (with their rules) "
                        "revised from one bundle to the next")
    parser.add_argument("--servers", type=int, default=2000)
    parser.add_argument("--tools", type=int, default=20)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--probe-ms", type=float, default=5, help="GET /healthz this often (ms) "
                        "on its own connection to find the event loop's stalls (0: no probe)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info"],
                        help="gwc's log level (the activation line is at info; at debug it also "
                        "has the event loop's longest stall, from a 1 ms ticker in the node)")
    parser.add_argument("--keep", metavar="DIR", help="generate and build into DIR and reuse "
                        "that build next time when the sizes match (the upstream port is in the "
                        "bundles, so it is reused too)")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:  # child process mode
        asyncio.run(serve_upstream(args.serve_upstream))
        return
    if args.swaps < 1 or args.workers < 1 or args.rate < 0 \
            or not 0 <= args.changed <= args.servers \
            or args.settle < 1.2 * args.poll_interval + STEADY_S + 1:
        parser.error("--swaps and --workers must be >= 1, --rate >= 0, --changed between 0 and "
                     "--servers, --settle >= 1.2 x --poll-interval + 2.5 (the old bundle is "
                     "freed at the next poll, before the next swap's steady window)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        bundles, ci_pub, token, up_port = prepare(work, args)
        print(f"{len(bundles)} bundles ({bundles[0].stat().st_size / 1e6:.1f} MB each) ready in "
              f"{time.perf_counter() - start:.0f} s")
        node = Path(tmp)  # the live bundle, its staged successors, state dir, keys and log
        live = node / "store" / "bundle.json"
        live.parent.mkdir()
        staged = [live.with_name(f".staged-{serial}.json") for serial in range(1, len(bundles) + 1)]
        for bundle, stage in zip(bundles, staged, strict=True):  # same folder as the live file: atomic rename
            shutil.copyfile(bundle, stage)
        staged[0].replace(live)
        log_path, gwc_port = node / "gwc-runtime.log", free_port()
        procs = [subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)])]
        try:
            gwc = start_runtime(node, live, ci_pub, gwc_port, args, log_path)
            procs.append(gwc)
            wait_port(up_port)
            wait_port(gwc_port, timeout_s=60)
            run = asyncio.run(load_and_swap(args, f"http://127.0.0.1:{gwc_port}", token, staged,
                                            live, gwc.pid))
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        report(args, run, activations(log_path))


if __name__ == "__main__":
    main()
