"""gwc against the Python MCP proxies a user might pick instead, on the same load and upstream.
(Long because it installs, configures and drives each peer itself, so one command reproduces the table.)

Paths, all to one fast upstream (an aiohttp MCP responder defined here that speaks initialize,
sessions, tools/list and tools/call in both protocol eras, so the proxies, not the upstream, are
the bottleneck):

- direct:         the client talks to the upstream;
- gwc:            gwc-runtime's per-server endpoint /servers/bench/mcp (JWT, policy, metrics, logs);
- fastmcp:        fastmcp 4.x ``create_proxy(url)``, its default: a fresh upstream session per call;
- fastmcp-shared: ``create_proxy(connected Client)``: one upstream session shared by all callers
                  (faster; fastmcp warns that it mixes callers' request contexts);
- mcp-proxy:      sparfenyuk's mcp-proxy 0.13, which bridges HTTP<->stdio only, so HTTP in and HTTP
                  out is two processes chained over stdio: ``mcp-proxy --port P -- mcp-proxy
                  --transport streamablehttp UPSTREAM`` (the first serves HTTP and spawns the
                  second as its stdio server; the second is a stdio server that calls UPSTREAM).

The peers are installed into throw-away virtualenvs under .bench-peers/ (gitignored; reused by
later runs, --reinstall starts over), never into the project. A peer that cannot be installed or
started is reported and left out. The load is the legacy (2025-11-25) era on every path: each load
worker initializes one session, then sends raw tools/call POSTs with aiohttp; every answer is
checked (a JSON-RPC result echoing the argument) and failures are counted. Prints medians of
several runs and ratios against direct and gwc.

    python bench/peers.py [--runs 3] [--calls 2000] [--concurrency 32] [--seconds 5]
                          [--log-level info] [--gwc-stateless] [--reinstall]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import CALL, HEADERS, _serve, free_port, pct, start_gwc

ROOT = Path(__file__).resolve().parent.parent
LEGACY = "2025-11-25"
MODERN = "2026-07-28"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
ECHO = {"name": "echo", "description": "Echo the text back.", "inputSchema": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}
WARM_UP = 50
LETTERS = str.maketrans("0123456789", "abcdefghij")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15)
MAX_CALLS_PER_WORKER = 200_000  # a bound next to the --seconds deadline
MAX_SESSIONS = 100_000          # the upstream forgets its oldest sessions past this

# --- the upstream -------------------------------------------------------------------------------


def _upstream_result(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to one request, in the era it speaks; None for an unknown method."""
    modern = isinstance(params.get("_meta"), dict) and META_VERSION in params["_meta"]
    info = {"name": "bench-upstream", "version": "1"}
    if method == "tools/call" and params.get("name") == "echo":
        text = str((params.get("arguments") or {}).get("text", ""))
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    elif method == "tools/list":
        result = {"tools": [ECHO]}
    elif method == "initialize":
        asked = params.get("protocolVersion")
        known = asked in ("2025-03-26", "2025-06-18", LEGACY)
        result = {"protocolVersion": asked if known else LEGACY,
                  "capabilities": {"tools": {"listChanged": False}}, "serverInfo": info}
    elif method == "server/discover":
        result = {"supportedVersions": [MODERN, LEGACY], "capabilities": {"tools": {}},
                  "_meta": {"io.modelcontextprotocol/serverInfo": info}}
    elif method == "ping":
        result = {}
    else:
        return None
    if modern:
        result["resultType"] = "complete"
        if method in ("tools/list", "server/discover"):
            result.update(cacheScope="public", ttlMs=0)
    return result


async def serve_mcp_upstream(port: int) -> None:
    """A real, if tiny, MCP server: sessions issued at initialize (unknown ones get 404, requests
    without one are served statelessly), notifications 202, GET 405, DELETE ends a session."""
    sessions: dict[str, None] = {}
    seen: dict[str, int] = {}  # requests by HTTP method and JSON-RPC method, for GET /stats

    async def post(request: web.Request) -> web.Response:
        session_id = request.headers.get("Mcp-Session-Id")
        if session_id is not None and session_id not in sessions:
            seen["POST (unknown session)"] = seen.get("POST (unknown session)", 0) + 1
            return web.json_response({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32001, "message": "session not found"}}, status=404)
        message = json.loads(await request.read())
        key = f"POST {message.get('method', '(response)')}"
        seen[key] = seen.get(key, 0) + 1
        if "id" not in message or "method" not in message:  # a notification or a response
            return web.Response(status=202)
        method, params = message["method"], message.get("params") or {}
        result = _upstream_result(method, params)
        if result is None:
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "error": {
                "code": -32601, "message": f"method {method!r} not found"}}, status=404)
        headers = {}
        if method == "initialize":
            session_id = headers["Mcp-Session-Id"] = uuid.uuid4().hex
            sessions[session_id] = None
            if len(sessions) > MAX_SESSIONS:
                del sessions[next(iter(sessions))]
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result},
                                 headers=headers)

    async def delete(request: web.Request) -> web.Response:
        seen["DELETE"] = seen.get("DELETE", 0) + 1
        sessions.pop(request.headers.get("Mcp-Session-Id", ""), None)
        return web.Response(status=200)

    async def get(_: web.Request) -> web.Response:
        seen["GET"] = seen.get("GET", 0) + 1
        return web.Response(status=405)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(seen)

    app = web.Application()
    app.router.add_post("/mcp", post)
    app.router.add_delete("/mcp", delete)
    app.router.add_get("/mcp", get)
    app.router.add_get("/stats", stats)
    await _serve(app, port)


# --- the peers ----------------------------------------------------------------------------------

FASTMCP_PROXY = """
import asyncio, sys
from fastmcp import Client
from fastmcp.server import create_proxy

async def main(upstream, port, shared):
    run = dict(transport="http", show_banner=False, host="127.0.0.1", port=port, path="/mcp",
               log_level="warning")
    if shared:  # one connected client: its session serves every caller
        async with Client(upstream, mode="legacy") as client:
            await create_proxy(client).run_async(**run)
    else:       # the default: a fresh backend session per request, in the front's era
        await create_proxy(upstream).run_async(**run)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "shared"))
"""


@dataclass
class PeerVenv:
    """A throw-away virtualenv for one peer. ``alternatives`` are tried in order until one works;
    each is a list of ``pip install`` argument lists, run one after the other."""
    name: str
    alternatives: list[list[list[str]]]
    version_cmd: list[str]
    root: Path = field(default=Path())
    version: str = ""

    def python(self) -> Path:
        return self.root / "bin" / "python"

    def ensure(self, base: Path, reinstall: bool, timeout_s: float = 900) -> str | None:
        """Create and fill the venv unless a previous run did; None when ready, else why not."""
        self.root = base / self.name
        marker = self.root / ".installed"
        if reinstall or not marker.exists():
            shutil.rmtree(self.root, ignore_errors=True)
            print(f"peers: installing {self.name} into {self.root} ...", flush=True)
            try:
                subprocess.run([sys.executable, "-m", "venv", str(self.root)], check=True,
                               capture_output=True, timeout=timeout_s)
                why = self._install(timeout_s)
            except (subprocess.SubprocessError, OSError) as exc:
                why = f"could not create the virtualenv: {exc}"
            if why:
                return why
            marker.write_text("ok\n")
        try:
            exe, *rest = self.version_cmd
            out = subprocess.run([str(self.root / "bin" / exe), *rest], check=False,
                                 capture_output=True, text=True, timeout=60)
            self.version = (out.stdout or out.stderr).strip().splitlines()[-1]
        except (subprocess.SubprocessError, OSError, IndexError) as exc:
            return f"installed, but its version could not be read: {exc}"
        return None

    def _install(self, timeout_s: float) -> str | None:
        pip = [str(self.python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        failures = []
        for steps in self.alternatives:
            for step in steps:
                done = subprocess.run([*pip, *step], check=False, capture_output=True, text=True,
                                      timeout=timeout_s)
                if done.returncode != 0:
                    errors = [re.sub(r" \(from versions: [^)]*\)", "", ln)[:200]
                              for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
                    failures.append(f"pip install {' '.join(step)}: "
                                    f"{' / '.join(errors[-2:]) or 'failed'}")
                    break
            else:
                if failures:
                    print(f"peers: {self.name}: first attempt failed ({failures[0]}); "
                          f"installed with: {' ; '.join(' '.join(s) for s in steps)}")
                return None
        return "; ".join(failures)


PEER_VENVS = [
    PeerVenv("fastmcp", [
        [["fastmcp==4.1.6"]],
        # 4.1.3+ require certifi>=2026.10.19 (for extras only), newer than some package indexes
        # have: take 4.1.2's dependencies, then 4.1.6's code (fastmcp is a shell over
        # fastmcp-slim) without them.
        [["fastmcp==4.1.2"], ["--no-deps", "fastmcp==4.1.6", "fastmcp-slim==4.1.6"]],
    ], ["python", "-c", ("import fastmcp, importlib.metadata as m; "
                         "print(f'fastmcp {fastmcp.__version__} (mcp {m.version(\"mcp\")})')")]),
    PeerVenv("mcp-proxy", [[["mcp-proxy==0.13.0"]]],
             ["python", "-c", ("import importlib.metadata as m; print(f'mcp-proxy "
                               "{m.version(\"mcp-proxy\")} (mcp {m.version(\"mcp\")})')")]),
]


class Children:
    """Every process this benchmark starts, each in its own process group, all ended at exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[subprocess.Popen, bool]] = []  # (process, leads its own group)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((proc, True))
        return proc

    def adopt(self, proc: subprocess.Popen) -> None:
        self.procs.append((proc, False))

    def tail(self, name: str, lines: int = 6) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(text[-lines:]) or "(no output)"

    def stop_all(self) -> None:
        """SIGTERM to every process (and group: mcp-proxy's stdio child is in its parent's), up
        to 10 s for them to go, then SIGKILL to whatever is left of each group."""
        for proc, group in self.procs:
            self._signal(proc, group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc, group in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._signal(proc, group, signal.SIGKILL)
            proc.wait(5)
        self.procs.clear()

    @staticmethod
    def _signal(proc: subprocess.Popen, group: bool, sig: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            elif proc.poll() is None:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass


def listening(proc: subprocess.Popen, port: int, timeout_s: float = 60) -> str | None:
    """None once something accepts on the port; else why not (the process died, or time ran out)."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return None
        if time.monotonic() > deadline:
            return f"nothing listening on {port} after {timeout_s:g} s"
        time.sleep(0.1)
    return f"exited with code {proc.returncode}"


# --- the load -----------------------------------------------------------------------------------


@dataclass
class Route:
    """One way to reach the echo tool: its URL, the headers every request carries, and the era."""
    url: str
    headers: dict[str, str]
    era: str = LEGACY
    answers_as: str = ""  # the Content-Type of its tools/call answers, seen by probe()


class Failure(Exception):
    pass


CALL_ERRORS = (Failure, TimeoutError, aiohttp.ClientError, ValueError, KeyError)


def answer_of(content_type: str, data: bytes) -> dict[str, Any]:
    """The JSON-RPC answer in a response, whether plain JSON or an SSE stream."""
    if content_type == "text/event-stream":
        for line in data.splitlines():
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if "result" in message or "error" in message:
                    return message
        raise Failure(f"no answer in the event stream: {data[:200]!r}")
    return json.loads(data)


async def rpc(http: aiohttp.ClientSession, route: Route, headers: dict[str, str],
              message: dict[str, Any]) -> tuple[dict[str, Any] | None, aiohttp.ClientResponse]:
    async with http.post(route.url, data=json.dumps(message).encode(), headers=headers,
                         timeout=REQUEST_TIMEOUT) as resp:
        data = await resp.read()
    if "id" not in message:
        if resp.status not in (200, 202):
            raise Failure(f"{message['method']} answered {resp.status}: {data[:200]!r}")
        return None, resp
    if resp.status != 200:
        raise Failure(f"{message['method']} answered {resp.status}: {data[:200]!r}")
    answer = answer_of(resp.content_type, data)
    if "result" not in answer or answer.get("id") != message["id"]:
        raise Failure(f"{message['method']} answered {json.dumps(answer)[:200]}")
    return answer["result"], resp


class Caller:
    """One load worker's session on one path: opened once, then many tools/call."""

    def __init__(self, http: aiohttp.ClientSession, route: Route) -> None:
        self.http, self.route, self.next_id = http, route, 0
        self.headers = dict(route.headers)

    async def open(self) -> None:
        if self.route.era == MODERN:  # stateless: nothing to open
            self.headers.update(HEADERS)
            return
        self.headers.update({"Content-Type": "application/json",
                             "Accept": "application/json, text/event-stream"})
        result, resp = await rpc(self.http, self.route, self.headers, {
            "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": LEGACY, "capabilities": {},
                "clientInfo": {"name": "gwc-bench", "version": "1"}}})
        assert result is not None
        self.headers["MCP-Protocol-Version"] = result["protocolVersion"]
        if "Mcp-Session-Id" in resp.headers:
            self.headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        await rpc(self.http, self.route, self.headers,
                  {"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def call(self) -> None:
        """One tools/call; raises Failure unless the answer is the echoed argument."""
        self.next_id += 1
        text = "hello" + str(self.next_id).translate(LETTERS)  # gwc's rule wants [a-z]+
        if self.route.era == MODERN:
            message = {**CALL, "id": self.next_id,
                       "params": {**CALL["params"], "arguments": {"text": text}}}
        else:
            message = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
                       "params": {"name": "echo", "arguments": {"text": text}}}
        result, resp = await rpc(self.http, self.route, self.headers, message)
        self.route.answers_as = resp.content_type
        content = (result or {}).get("content") or [{}]
        if result.get("isError") or content[0].get("text") != text:
            raise Failure(f"tools/call answered {json.dumps(result)[:200]}")

    async def close(self) -> None:
        if "Mcp-Session-Id" in self.headers:
            try:
                async with self.http.delete(self.route.url, headers=self.headers,
                                            timeout=REQUEST_TIMEOUT) as resp:
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError):
                pass


async def attempt(caller: Caller, errors: list[str]) -> bool:
    try:
        await caller.call()
        return True
    except CALL_ERRORS as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
        return False


async def sequential(route: Route, calls: int, budget_s: float) -> tuple[list[float], list[str]]:
    """Latency at concurrency 1: warm-up, then up to ``calls`` timed calls within ``budget_s``."""
    samples: list[float] = []
    errors: list[str] = []
    async with aiohttp.ClientSession() as http:
        caller = Caller(http, route)
        await caller.open()
        stop = time.perf_counter() + budget_s
        for i in range(WARM_UP + calls):
            if time.perf_counter() > stop:
                break
            began = time.perf_counter()
            ok = await attempt(caller, errors)
            if ok and i >= WARM_UP:
                samples.append(time.perf_counter() - began)
        await caller.close()
    return samples, errors


async def concurrent(route: Route, concurrency: int, seconds: float
                     ) -> tuple[float, int, list[str]]:
    """Throughput: ``concurrency`` workers, each on its own session, for ``seconds``."""
    errors: list[str] = []
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        callers = [Caller(http, route) for _ in range(concurrency)]
        await asyncio.gather(*(c.open() for c in callers))  # sessions open before the clock starts

        async def work(caller: Caller) -> None:
            nonlocal done
            for _ in range(MAX_CALLS_PER_WORKER):
                if time.perf_counter() > stop:
                    return
                ok = await attempt(caller, errors)  # not `done += await`: that reads done first
                done += ok
        began = time.perf_counter()
        stop = began + seconds
        await asyncio.gather(*(work(c) for c in callers))
        elapsed = time.perf_counter() - began
        await asyncio.gather(*(c.close() for c in callers))
    return done / elapsed, done, errors


@dataclass
class Tally:
    """One route's figures over the runs."""
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    calls: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    dropped: str = ""  # why it stopped being measured

    def median(self, what: str) -> float:
        return statistics.median(getattr(self, what))


async def measure(args: argparse.Namespace, routes: dict[str, Route]) -> dict[str, Tally]:
    """Runs interleaved: each run measures every route once, latency then throughput."""
    tallies = {name: Tally() for name in routes}
    for run in range(1, args.runs + 1):
        for name, route in routes.items():
            t = tallies[name]
            if t.dropped:
                continue
            try:
                samples, errors = await sequential(route, args.calls, args.latency_budget)
                rps, done, more = await concurrent(route, args.concurrency, args.seconds)
            except CALL_ERRORS as exc:
                t.dropped = f"run {run}: a session did not open: {type(exc).__name__}: {exc}"[:400]
                print(f"peers: {name} dropped: {t.dropped}", flush=True)
                continue
            if samples:
                t.p50.append(pct(samples, 0.50))
                t.p99.append(pct(samples, 0.99))
            t.rps.append(rps)
            failed = len(errors) + len(more)
            t.failed += failed
            t.calls += len(samples) + done + failed
            t.errors += (errors + more)[:3]
            p50, p99 = (t.p50[-1], t.p99[-1]) if samples else (float("nan"), float("nan"))
            print(f"peers: run {run} {name:15s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                  f"{rps:7.0f} req/s  ({len(samples)} timed calls, {failed} failed)", flush=True)
    return tallies


def report(args: argparse.Namespace, tallies: dict[str, Tally], notes: list[str]) -> None:
    med = {name: {k: t.median(k) for k in ("p50", "p99", "rps")}
           for name, t in tallies.items() if t.p50 and t.rps}
    print()
    print(f"tools/call, legacy sessions ({LEGACY}) unless noted; {args.calls} sequential calls "
          f"(after {WARM_UP} warm-up, at most {args.latency_budget:g} s) and {args.seconds:g} s at "
          f"concurrency {args.concurrency}; median of {args.runs} runs; {os.cpu_count()} cores "
          f"shared by the client, the upstream and the proxy; gwc log level {args.log_level}")
    for note in notes:
        print(f"  {note}")
    print(f"{'route':15s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s @' + str(args.concurrency):>11s} "
          f"{'failed/calls':>14s}")
    for name, t in tallies.items():
        if name not in med:
            print(f"{name:15s} {'-':>8s} {'-':>8s} {'-':>11s}  {t.dropped or 'no figures'}")
            continue
        m = med[name]
        print(f"{name:15s} {m['p50']:8.2f} {m['p99']:8.2f} {m['rps']:11.0f} "
              f"{f'{t.failed}/{t.calls}':>14s}")
    print()
    print("ratios of the medians (latency: times as long; throughput: share of the base)")
    for base in ("direct", "gwc"):
        if base not in med:
            print(f"  no {base} figures: no ratios against it")
            continue
        b = med[base]
        for name, m in med.items():
            if name not in (base, "direct"):
                print(f"  {name:15s} vs {base:6s}  p50 x{m['p50'] / b['p50']:6.2f}  "
                      f"p99 x{m['p99'] / b['p99']:6.2f}  req/s {m['rps'] / b['rps']:6.1%}")
    for name, t in tallies.items():
        for error in t.errors[:3]:
            print(f"  {name}: failure: {error}")


# --- wiring -------------------------------------------------------------------------------------


def start_peers(children: Children, upstream: str, base: Path, reinstall: bool,
                notes: list[str]) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    ready = {}
    for venv in PEER_VENVS:
        why = venv.ensure(base, reinstall)
        if why:
            print(f"peers: {venv.name} left out: could not install: {why}", flush=True)
            notes.append(f"{venv.name}: not installed ({why[:200]})")
        else:
            ready[venv.name] = venv
            notes.append(f"{venv.name}: {venv.version}")
    starts = []
    if "fastmcp" in ready:
        py = str(ready["fastmcp"].python())
        for name, mode in (("fastmcp", "fresh"), ("fastmcp-shared", "shared")):
            port = free_port()
            starts.append((name, port, children.start(
                name, [py, "-c", FASTMCP_PROXY, upstream, str(port), mode])))
    if "mcp-proxy" in ready:
        exe = str(ready["mcp-proxy"].root / "bin" / "mcp-proxy")
        port = free_port()
        starts.append(("mcp-proxy", port, children.start("mcp-proxy", [
            exe, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING", "--",
            exe, "--transport", "streamablehttp", "--log-level", "WARNING", upstream])))
    for name, port, proc in starts:
        why = listening(proc, port)
        if why:
            print(f"peers: {name} left out: {why}: {children.tail(name)}", flush=True)
            notes.append(f"{name}: did not start ({why})")
        else:
            routes[name] = Route(f"http://127.0.0.1:{port}/mcp", {})
    return routes


async def probe(route: Route, upstream_stats: str, calls: int = 10) -> tuple[str | None, str]:
    """One session and a few calls. Returns what went wrong (None if nothing) and what the
    upstream got meanwhile: requests by method for opening the session and the first call, per
    later call, and for closing the session."""
    try:
        async with aiohttp.ClientSession() as http:
            async def seen() -> dict[str, int]:
                await asyncio.sleep(0.2)  # a proxy's requests after its answer (DELETE) land
                async with http.get(upstream_stats, timeout=REQUEST_TIMEOUT) as resp:
                    return await resp.json()
            caller = Caller(http, route)
            marks = [await seen()]
            await caller.open()
            await caller.call()  # a first call may set things up (a proxy may list tools)
            marks.append(await seen())
            for _ in range(calls):
                await caller.call()
            marks.append(await seen())
            await caller.close()
            marks.append(await seen())
    except CALL_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"[:400], ""

    def delta(i: int, per: int = 1) -> str:
        counts = {k: (n - marks[i].get(k, 0)) / per for k, n in marks[i + 1].items()}
        return ", ".join(f"{k} {n:g}" for k, n in sorted(counts.items()) if n) or "nothing"
    return None, (f"open + first call: {delta(0)}; per call: {delta(1, calls)}; "
                  f"close (DELETE): {delta(2)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="timed sequential calls per run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput phase per run")
    parser.add_argument("--latency-budget", type=float, default=120.0,
                        help="at most this many seconds for the sequential calls of one path")
    parser.add_argument("--log-level", default="info", help="gwc's log level (the peers run at "
                        "warning, so none of them logs per call)")
    parser.add_argument("--peers-dir", type=Path, default=ROOT / ".bench-peers",
                        help="where the peers' throw-away virtualenvs live")
    parser.add_argument("--reinstall", action="store_true", help="recreate the peers' virtualenvs")
    parser.add_argument("--gwc-stateless", action="store_true",
                        help=f"also measure gwc in the stateless {MODERN} era (one more row)")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # child process mode: the upstream
        asyncio.run(serve_mcp_upstream(int(args.serve[1])))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below still runs
    args.peers_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        children = Children(Path(tmp))
        try:
            run(args, Path(tmp), children)
        finally:
            children.stop_all()


def gwc_source() -> str:
    """Which gwc this is: the commit, and whether the runtime differs from it (work in progress)."""
    try:
        def git(*argv: str) -> str:
            return subprocess.run(["git", "-C", str(ROOT), *argv], check=False,
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        head, dirty = git("log", "-1", "--format=%h %cs"), git("status", "--porcelain", "runtime")
    except (subprocess.SubprocessError, OSError):
        return "gwc-runtime from this checkout (git not available)"
    return (f"gwc-runtime from this checkout, commit {head}"
            + (", with uncommitted changes under runtime/" if dirty else ""))


def run(args: argparse.Namespace, tmp: Path, children: Children) -> None:
    up_port, gwc_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    up = children.start("upstream", [sys.executable, __file__, "--serve", "upstream", str(up_port)])
    notes = [f"upstream: the aiohttp MCP responder in bench/peers.py at {upstream} (one process)"]
    why = listening(up, up_port)
    if why:
        sys.exit(f"peers: the upstream did not start: {why}: {children.tail('upstream')}")
    notes.append(f"gwc: {gwc_source()}")
    try:  # the registry, bundle and signing keys are built as overhead.py does it
        gwc_proc, token = start_gwc(tmp / "gwc", upstream, gwc_port, args.log_level)
        children.adopt(gwc_proc)
        why = listening(gwc_proc, gwc_port)
    except Exception as exc:
        gwc_proc, why = None, f"could not be built or started: {type(exc).__name__}: {exc}"
    if why:
        print(f"peers: gwc left out: {why}", flush=True)
        notes.append(f"gwc: left out ({why[:300]})")
    routes = {"direct": Route(upstream, {})}
    if gwc_proc is not None and gwc_proc.poll() is None:
        gwc_url = f"http://127.0.0.1:{gwc_port}/servers/bench/mcp"
        routes["gwc"] = Route(gwc_url, {"Authorization": f"Bearer {token}"})
        if args.gwc_stateless:
            routes[f"gwc-{MODERN}"] = Route(gwc_url, {"Authorization": f"Bearer {token}"}, MODERN)
    routes.update(start_peers(children, upstream, args.peers_dir, args.reinstall, notes))
    stats_url = f"http://127.0.0.1:{up_port}/stats"
    for name, route in list(routes.items()):
        why, per_call = asyncio.run(probe(route, stats_url))
        if why and name == "gwc":  # fall back to the stateless era, which gwc also serves
            print(f"peers: gwc's legacy path failed ({why}); trying gwc in {MODERN}", flush=True)
            notes.append(f"gwc: legacy sessions FAILED ({why[:300]}); gwc measured in {MODERN} "
                         f"(stateless, no session) instead")
            route.era = MODERN
            why, per_call = asyncio.run(probe(route, stats_url))
        if why:
            print(f"peers: {name} left out: its first calls failed: {why} | {children.tail(name)}")
            notes.append(f"{name}: left out, its first calls failed ({why[:300]})")
            del routes[name]
        else:
            notes.append(f"{name}: answers {route.answers_as}; the upstream got: {per_call}")
    report(args, asyncio.run(measure(args, routes)), notes)


if __name__ == "__main__":
    main()
