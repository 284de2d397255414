"""The official MCP conformance suite, run against its reference server directly and through gwc.

Everything the run needs is installed with npm under a temporary folder: the suite
(``@modelcontextprotocol/conformance``), Node.js 22 (the npm package ``node@22``; the suite needs 22
and the machine's node may be older), and the dependencies of the suite's reference server, which
is not published on npm and ships beside this script (``conformance-everything-server.ts``, copied
from the suite's repository at the same tag). Then, all on 127.0.0.1:

1. the reference server starts, and its ``tools/list`` is read;
2. a one-server registry is written in front of it (every tool it lists declared, ``read`` unless
   its annotations say it writes; visible to one group, a policy allowing that group everything;
   ``gateway.yaml`` trusting a dev IdP's JWK Set as a file), built and signed with ``gwc keygen``,
   ``gwc build``, and served by ``gwc-runtime``;
3. a small aiohttp proxy in front of the gateway adds ``Authorization: Bearer <dev token>`` (the
   suite cannot send one) and passes everything else through untouched, SSE streamed as it comes;
4. every server scenario of the suite runs, one process each, against the reference server, against
   ``<proxy>/servers/everything/mcp`` and (unless ``--no-aggregate``) against ``<proxy>/mcp``.

It prints one row per scenario (checks passed/judged per target) and the checks that fail through
gwc. Exit code 0 when every scenario that passes directly also passes on the per-server endpoint;
the aggregate endpoint is reported but not judged (its tool names are ``everything__<tool>``, which
the suite does not know).

    python bench/conformance.py [--scenarios a,b] [--timeout 120] [--no-aggregate]
                                [--npm-dir DIR] [--keep] [--json OUT]
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

SUITE = "@modelcontextprotocol/conformance@0.1.16"
NODE = "node@22"
# The reference server's dependencies, at the versions of the suite's package-lock.json (v0.1.16).
SERVER_DEPS = ("@modelcontextprotocol/sdk@1.27.1", "express@5.2.1", "zod@4.3.6", "cors@2.8.6",
               "tsx@4.21.0")
REFERENCE = Path(__file__).with_name("conformance-everything-server.ts")
LISTEN_LINE = "app.listen(PORT, () => {"
# Scenarios that suite 0.1.16 leaves out of its default ("active") suite; run here all the same.
PENDING = frozenset({"json-schema-2020-12", "server-sse-polling"})

SERVER = "everything"
GROUP = "conformance"
ISSUER = "https://idp.conformance.test"
TOKEN_ENV = "CONFORMANCE_PROXY_TOKEN"
# Headers that belong to one hop and are not passed on (RFC 9110 7.6.1), plus the lengths aiohttp
# sets itself from what it sends.
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                         "content-length"})


# ---- the proxy that adds the token (run as a child process: --serve-proxy PORT UPSTREAM) ----

async def serve_proxy(port: int, upstream: str, token: str) -> None:
    """Forward every request to ``upstream`` with the bearer token added; stream the answer back."""
    session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(
        total=None, sock_connect=10, sock_read=None))
    skip = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")  # add none of our own

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items()
                   if k.lower() not in HOP_HEADERS and k.lower() != "authorization"]
        headers.append(("Authorization", f"Bearer {token}"))
        body = await request.read()
        async with session.request(request.method, upstream + request.rel_url.raw_path_qs,
                                   headers=CIMultiDict(headers), data=body or None,
                                   allow_redirects=False, skip_auto_headers=skip) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP_HEADERS:
                    resp.headers.add(k, v)
            if "Content-Length" in up.headers and "Transfer-Encoding" not in up.headers:
                resp.content_length = int(up.headers["Content-Length"])
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        await runner.cleanup()


# ---- processes ----

class Processes:
    """The child processes of the run, each in its own session, all stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(10)
        else:  # the leader is gone; its group may not be
            _signal_group(proc, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this script created for the process (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60,
              ok: tuple[int, ...] = (200,), method: str = "GET") -> None:
    """Until ``url`` answers one of ``ok`` (any answer at all when ``ok`` is empty)."""
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"conformance: {proc.args[0]} exited ({proc.returncode}):\n{_tail(log)}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=2) as r:
                if not ok or r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if not ok or e.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"conformance: {url} not up after {timeout_s:g} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(args: list[str], timeout_s: float, what: str, **kwargs) -> str:
    """Run a command to its end (bounded); its stdout, or exit with its output on failure."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL, **kwargs)
    except subprocess.TimeoutExpired:
        sys.exit(f"conformance: {what} took more than {timeout_s:g} s")
    if done.returncode != 0:
        sys.exit(f"conformance: {what} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                 f"{done.stderr[-2000:]}")
    return done.stdout


# ---- installing ----

def install(npm_dir: Path) -> dict[str, Path]:
    """npm install of the suite, Node.js 22 and the reference server's dependencies (skipped when
    ``npm_dir`` already holds them); the paths of what the run uses."""
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("conformance: npm is not installed")
    modules = npm_dir / "node_modules"
    paths = {"node": modules / "node" / "bin" / "node",
             "suite": modules / "@modelcontextprotocol" / "conformance" / "dist" / "index.js",
             "tsx": modules / "tsx" / "dist" / "cli.mjs"}
    if not all(p.exists() for p in paths.values()):
        npm_dir.mkdir(parents=True, exist_ok=True)
        print(f"installing {SUITE}, {NODE} and the reference server's dependencies "
              f"under {npm_dir} ...", flush=True)
        run([npm, "install", "--prefix", str(npm_dir), "--no-audit", "--no-fund", "--no-save",
             "--loglevel", "error", SUITE, NODE, *SERVER_DEPS], 900, "npm install")
    for name, path in paths.items():
        if not path.exists():
            sys.exit(f"conformance: npm install left no {name} at {path}")
    server = npm_dir / "everything-server.ts"  # beside node_modules, so its imports resolve
    source = REFERENCE.read_text()
    if source.count(LISTEN_LINE) != 1:
        sys.exit(f"conformance: {REFERENCE.name} has no single {LISTEN_LINE!r} to bind to 127.0.0.1")
    server.write_text(source.replace(LISTEN_LINE, "app.listen(Number(PORT), '127.0.0.1', () => {"))
    paths["server"] = server
    return paths


def versions(paths: dict[str, Path], npm_dir: Path) -> dict[str, str]:
    def package(name: str) -> str:
        return json.loads((npm_dir / "node_modules" / name / "package.json").read_text())["version"]
    return {"suite": package("@modelcontextprotocol/conformance"),
            "node": run([str(paths["node"]), "--version"], 30, "node --version").strip(),
            "sdk": package("@modelcontextprotocol/sdk"),
            "express": package("express")}


# ---- the reference server's tools ----

async def reference_tools(url: str) -> list[dict]:
    """Every tool of the reference server's tools/list, in a 2025-06-18 session of our own."""
    version = "2025-06-18"
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "gwc-bench-conformance", "version": "1"}}}
        async with session.post(url, json=init, headers=headers) as resp:
            await _result(resp)
            headers = {**headers, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"],
                       "MCP-Protocol-Version": version}
        async with session.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                headers=headers) as resp:
            await resp.read()
        tools: list[dict] = []
        cursor = None
        for page in range(1, 21):
            params = {"cursor": cursor} if cursor else {}
            body = {"jsonrpc": "2.0", "id": page, "method": "tools/list", "params": params}
            async with session.post(url, json=body, headers=headers) as resp:
                result = await _result(resp)
            tools += result["tools"]
            cursor = result.get("nextCursor")
            if not cursor:
                break
        async with session.delete(url, headers=headers) as resp:
            await resp.read()
    return tools


async def _result(resp: aiohttp.ClientResponse) -> dict:
    """The JSON-RPC result in a JSON or SSE answer."""
    text = await resp.text()
    if resp.content_type == "text/event-stream":
        messages = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")
                    and line[5:].strip()]
    else:
        messages = [json.loads(text)]
    for message in messages:
        if "result" in message:
            return message["result"]
        if "error" in message:
            sys.exit(f"conformance: the reference server answered {message['error']}")
    sys.exit(f"conformance: no result in the reference server's answer ({resp.status}): {text[:300]}")


def access(tool: dict) -> str:
    """``write`` when the tool's annotations say it changes something, else ``read`` (the reference
    server's tools return canned content or ask the client; none has annotations)."""
    annotations = tool.get("annotations") or {}
    if annotations.get("destructiveHint") or annotations.get("readOnlyHint") is False:
        return "write"
    return "read"


# ---- the registry, the bundle, the node ----

def gwc_tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def build_registry(work: Path, upstream: str, tools: list[dict]) -> tuple[Path, Path, str]:
    """Registry, keys and signed bundle; returns (bundle, trusted key, dev token)."""
    gwc = gwc_tool("gwc")
    repo = work / "repo"
    (repo / "registry").mkdir(parents=True)
    (repo / "policies" / GROUP).mkdir(parents=True)
    run([gwc, "dev-idp", "--out", str(work / "idp" / "dev")], 60, "gwc dev-idp")
    shutil.copy(work / "idp" / "dev.jwks.json", repo / "idp.jwks.json")
    (repo / "gateway.yaml").write_text(json.dumps({
        "identity": {"issuer": ISSUER, "audience": "gwc", "jwks_file": "idp.jwks.json",
                     "algorithms": ["ES256"]},
        "owners": [GROUP]}, indent=2))
    (repo / "registry" / f"{SERVER}.json").write_text(json.dumps({
        "name": SERVER, "owner": GROUP, "upstream": upstream, "visibility": f"group:{GROUP}",
        "description": "The MCP conformance suite's reference server (everything-server).",
        "tools": {tool["name"]: {"access": access(tool)} for tool in tools}}, indent=2))
    (repo / "policies" / GROUP / f"{SERVER}.yaml").write_text(json.dumps([{
        "id": "conformance-all", "subject": {"group": GROUP}, "resource": {"server": SERVER},
        "action": "*"}], indent=2))
    run([gwc, "keygen", "--out", str(work / "keys" / "ci")], 60, "gwc keygen")
    run([gwc, "build", str(repo), "--key", str(work / "keys" / "ci.key"), "--out",
         str(work / "store"), "--serial", "1", "--revision", "conformance"], 120, "gwc build")
    token = run([gwc, "dev-token", "--idp", str(work / "idp" / "dev.key"), "--sub", "conformance-user",
                 "--group", GROUP, "--ttl", "86400", "--root", str(repo)], 60, "gwc dev-token").strip()
    return work / "store" / "bundle.json", work / "keys" / "ci.pub", token


# ---- the suite ----

def scenarios(paths: dict[str, Path]) -> list[str]:
    out = run([str(paths["node"]), str(paths["suite"]), "list", "--server"], 60, "conformance list")
    return re.findall(r"^\s+- (\S+)", out, re.MULTILINE)


def run_scenario(procs: Processes, paths: dict[str, Path], url: str, scenario: str, out: Path,
                 timeout_s: float) -> dict:
    """One scenario in its own process (bounded); its checks, or what went wrong."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{scenario}.log"
    started = time.monotonic()
    proc = procs.start([str(paths["node"]), str(paths["suite"]), "server", "--url", url, "--scenario",
                        scenario, "--output-dir", str(out)], log,
                       env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"})
    try:
        proc.wait(timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    procs.stop(proc)
    seconds = time.monotonic() - started
    found = sorted(out.glob(f"server-{scenario}-*/checks.json"))
    if timed_out or not found:
        why = f"timed out after {timeout_s:g} s" if timed_out else f"exit {proc.returncode}, no checks"
        return {"status": "error", "error": why, "log": _tail(log, 15), "seconds": seconds,
                "checks": []}
    checks = json.loads(found[-1].read_text())
    failed = [c for c in checks if c.get("status") == "FAILURE"]
    return {"status": "fail" if failed or not checks else "pass", "checks": checks,
            "seconds": seconds}


def cell(result: dict | None) -> str:
    if result is None:
        return "-"
    if result["status"] == "error":
        return "ERROR"
    checks = result["checks"]
    judged = [c for c in checks if c.get("status") in ("SUCCESS", "FAILURE")]
    passed = sum(c.get("status") == "SUCCESS" for c in judged)
    warnings = sum(c.get("status") == "WARNING" for c in checks)
    text = f"{'pass' if result['status'] == 'pass' else 'FAIL'} {passed}/{len(judged)}"
    return text + (f" {warnings}w" if warnings else "")


def report(names: list[str], results: dict[str, dict[str, dict]], targets: list[str],
           labels: dict[str, str]) -> bool:
    """The table and the failures; True when everything that passes directly passes per-server."""
    width = max(len(n) for n in names) + len(" (pending)")
    cols = {t: max(16, len(labels[t])) for t in targets}
    print()
    print(f"{'scenario':{width}s} " + " ".join(f"{labels[t]:>{cols[t]}s}" for t in targets))
    for name in names:
        shown = name + (" (pending)" if name in PENDING else "")
        print(f"{shown:{width}s} " + " ".join(f"{cell(results[t].get(name)):>{cols[t]}s}" for t in targets))
    passed = {t: f"{sum(r['status'] == 'pass' for r in results[t].values())} of {len(results[t])}"
              for t in targets}
    print(f"{'scenarios passed':{width}s} " + " ".join(f"{passed[t]:>{cols[t]}s}" for t in targets))
    checks = {t: _checks_total(results[t]) for t in targets}
    print(f"{'checks passed':{width}s} " + " ".join(f"{checks[t]:>{cols[t]}s}" for t in targets))
    print("(cells: checks passed / checks judged; 'w' = warnings, which the suite does not fail on)")
    lost = [n for n in names if results["direct"].get(n, {}).get("status") == "pass"
            and results["server"].get(n, {}).get("status") != "pass"]
    for target in targets[1:]:
        regressions = [n for n in names if results["direct"].get(n, {}).get("status") == "pass"
                       and results[target].get(n, {}).get("status") != "pass"]
        if not regressions:
            continue
        print(f"\npassing directly, failing through {labels[target]}:")
        for name in regressions:
            result = results[target][name]
            if result["status"] == "error":
                print(f"  {name}: {result['error']}\n    " + result["log"].replace("\n", "\n    "))
                continue
            for check in result["checks"]:
                if check.get("status") == "FAILURE":
                    why = check.get("errorMessage") or check.get("description")
                    print(f"  {name}: {check.get('id')}: {why}")
    return not lost


def _checks_total(results: dict[str, dict]) -> str:
    judged = [c for r in results.values() for c in r["checks"] if c.get("status") in ("SUCCESS", "FAILURE")]
    return f"{sum(c['status'] == 'SUCCESS' for c in judged)}/{len(judged)}"


# ---- main ----

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=lambda v: v.split(","),
                        help="comma-separated scenarios (default: every server scenario of the suite)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per scenario run")
    parser.add_argument("--no-aggregate", action="store_true", help="skip the aggregate /mcp runs")
    parser.add_argument("--npm-dir", type=Path, help="install into (or reuse) this folder instead of "
                        "the temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, "
                        "checks.json of every run, the registry, the audit trail)")
    parser.add_argument("--json", type=Path, help="write every check of every run to this file")
    parser.add_argument("--serve-proxy", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:  # child process mode
        port, upstream = args.serve_proxy
        asyncio.run(serve_proxy(int(port), upstream, os.environ[TOKEN_ENV]))
        return

    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    work = Path(tempfile.mkdtemp(prefix="gwc-conformance-"))
    procs = Processes()
    try:
        ok = _run(args, work, procs)
    except KeyboardInterrupt:
        print("\nconformance: interrupted; stopping", file=sys.stderr)
        ok = False
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


def _run(args: argparse.Namespace, work: Path, procs: Processes) -> bool:
    npm_dir = args.npm_dir.resolve() if args.npm_dir else work / "npm"
    paths = install(npm_dir)
    found = versions(paths, npm_dir)
    names = scenarios(paths)
    if args.scenarios:
        unknown = sorted(set(args.scenarios) - set(names))
        if unknown:
            sys.exit(f"conformance: unknown scenarios {unknown}; the suite has {names}")
        names = [n for n in names if n in args.scenarios]

    ref_port, gwc_port, proxy_port = free_port(), free_port(), free_port()
    reference = f"http://127.0.0.1:{ref_port}/mcp"
    node_bin = str(paths["node"].parent)
    ref_log = work / "reference-server.log"
    ref = procs.start([str(paths["node"]), str(paths["tsx"]), str(paths["server"])], ref_log,
                      cwd=npm_dir, env={**os.environ, "PORT": str(ref_port),
                                        "PATH": node_bin + os.pathsep + os.environ.get("PATH", "")})
    wait_http(f"http://127.0.0.1:{ref_port}/health", ref, ref_log, ok=())
    tools = asyncio.run(asyncio.wait_for(reference_tools(reference), 60))

    bundle, trust, token = build_registry(work, reference, tools)
    gwc_log = work / "gwc-runtime.log"
    gateway = procs.start([gwc_tool("gwc-runtime"), "--bundle", str(bundle), "--trust", str(trust),
                           "--listen", f"127.0.0.1:{gwc_port}",
                           "--signing-key", str(_gateway_key(work)),
                           "--public-url", f"http://127.0.0.1:{proxy_port}",
                           "--audit", f"file:{work / 'audit.jsonl'}", "--log-level", "info"], gwc_log)
    wait_http(f"http://127.0.0.1:{gwc_port}/readyz", gateway, gwc_log)
    proxy_log = work / "proxy.log"
    proxy = procs.start([sys.executable, str(Path(__file__).resolve()), "--serve-proxy", str(proxy_port),
                         f"http://127.0.0.1:{gwc_port}"], proxy_log, env={**os.environ, TOKEN_ENV: token})
    wait_http(f"http://127.0.0.1:{proxy_port}/healthz", proxy, proxy_log)

    found["gwc"] = gwc_revision()
    print(f"suite {SUITE.rpartition('@')[0]} {found['suite']}, node {found['node']}, reference server "
          f"everything-server.ts (suite v0.1.16) on @modelcontextprotocol/sdk {found['sdk']}, express "
          f"{found['express']}; gwc {found['gwc']}; {len(tools)} tools: "
          f"{', '.join(t['name'] for t in tools)}")
    proxied = f"http://127.0.0.1:{proxy_port}"
    targets = {"direct": reference, "server": f"{proxied}/servers/{SERVER}/mcp"}
    labels = {"direct": "direct", "server": f"gwc /servers/{SERVER}", "aggregate": "gwc /mcp"}
    if not args.no_aggregate:
        targets["aggregate"] = f"{proxied}/mcp"
    results: dict[str, dict[str, dict]] = {t: {} for t in targets}
    for target, url in targets.items():
        print(f"running {len(names)} scenarios against {url} ...", flush=True)
        for name in names:
            results[target][name] = run_scenario(procs, paths, url, name, work / "results" / target,
                                                 args.timeout)
            print(f"  {name}: {cell(results[target][name])}", flush=True)
    ok = report(names, results, list(targets), labels)
    if args.json:
        args.json.write_text(json.dumps({"versions": found, "targets": targets, "results": results},
                                        indent=2))
    print(f"\n{'every scenario that passes directly passes through gwc' if ok else 'REGRESSIONS through gwc'}"
          f" (per-server endpoint)")
    return ok


def gwc_revision() -> str:
    """Which gwc runs: the git commit of the checkout it is imported from (and whether its
    runtime/ has changes), or the folder it is installed in."""
    import gwc.runtime
    source = Path(gwc.runtime.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head = dirty = ""
    if not head:
        return f"installed in {source.parent.parent}"
    return head + (" with runtime/ changed" if dirty else "")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: through the cleanup


def _gateway_key(work: Path) -> Path:
    run([gwc_tool("gwc"), "keygen", "--out", str(work / "keys" / "gateway")], 60, "gwc keygen")
    return work / "keys" / "gateway.key"


if __name__ == "__main__":
    main()
