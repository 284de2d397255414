"""`make demo`: the whole product on one machine, on embedded defaults.

CI's job (keys, validate, build, verify), then a runtime node serving that bundle in front of real
example MCP servers, with a dev identity provider; users connect with the real mcp.Client and see
different tools, calls are allowed and refused; then governance: a rate-limited call, a shadowed
denial, an approval round trip with a second user, a break-glass bypass, and the audit trail
verified and queried. Everything runs on 127.0.0.1 and stops by itself.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import yaml
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"
BIN = Path(sys.executable).parent
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}{text}{RESET}", flush=True)


def run(*args: str | Path, as_user: tuple[str, str] | None = None) -> str:
    """Run a gwc command the way CI (or a user, with ``as_user`` = (name, token)) would, and
    show it; a user's token goes in GWC_TOKEN, never on the command line."""
    env = {**os.environ, "GWC_TOKEN": as_user[1]} if as_user else None
    shown = f"GWC_TOKEN=<{as_user[0]}'s token> " if as_user else ""
    print(f"{DIM}$ {shown}{' '.join(str(a) for a in args)}{RESET}", flush=True)
    out = subprocess.run([str(BIN / str(args[0])), *map(str, args[1:])], cwd=WORK,
                         capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        sys.exit(f"demo: {args[0]} {args[1]} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, what: str, path: str | None = None, timeout_s: float = 30) -> None:
    """Until the port accepts connections (and ``path`` answers 200, when given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            else:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"demo: {what} did not come up on port {port}")


def demo_registry(ports: dict[str, int]) -> Path:
    """The example registry with its upstreams on this machine and the dev IdP as identity."""
    repo = WORK / "registry-repo"
    shutil.copytree(REPO / "registry", repo / "registry")
    shutil.copytree(REPO / "policies", repo / "policies")
    shutil.copy(WORK / "idp" / "dev.jwks.json", repo / "dev-idp.jwks.json")
    gateway = yaml.safe_load((REPO / "gateway.yaml").read_text())
    gateway["identity"].pop("jwks_uri")
    gateway["identity"].update(jwks_file="dev-idp.jwks.json", algorithms=["ES256"])
    (repo / "gateway.yaml").write_text(yaml.safe_dump(gateway, sort_keys=False))
    for manifest in (repo / "registry").iterdir():
        text = manifest.read_text()
        name = manifest.stem
        upstream = f"http://127.0.0.1:{ports[name]}/mcp"
        if manifest.suffix == ".json":
            doc = json.loads(text)
            doc["upstream"] = upstream
            manifest.write_text(json.dumps(doc, indent=2))
        else:
            doc = yaml.safe_load(text)
            doc["upstream"] = upstream
            manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return repo


@asynccontextmanager
async def connect(url: str, token: str, mode: str):
    async with (httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                   timeout=httpx2.Timeout(10.0, read=30.0)) as http,
                Client(streamable_http_client(url, http_client=http), mode=mode,
                       read_timeout_seconds=20) as client):
        yield client


async def show_tools(gateway: str, token: str, who: str, server: str, mode: str) -> None:
    """The tools a user sees on one server's endpoint, or on the aggregate one (server '')."""
    url = f"{gateway}/servers/{server}/mcp" if server else f"{gateway}/mcp"
    where = server or "/mcp"
    try:
        async with connect(url, token, mode) as client:
            tools = (await client.list_tools()).tools
            names = ", ".join(f"{t.name}{' (write)' if t.annotations.destructive_hint else ''}"
                              for t in tools)
            print(f"  {who} on {where} [{client.protocol_version}]: {names}")
    except* MCPError as group:  # errors while connecting arrive as (nested) exception groups
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        assert isinstance(error, MCPError)
        print(f"  {who} on {where}: {error.message} (reason: {error.data['reason']})")


async def call(gateway: str, token: str, who: str, server: str, tool: str, args: dict,
               quiet: bool = False) -> MCPError | None:
    """One tools/call on a server's endpoint, or on the aggregate one (server ''); the refusal,
    if it was refused. ``quiet`` prints only a refusal."""
    url = f"{gateway}/servers/{server}/mcp" if server else f"{gateway}/mcp"
    name = f"{server}/{tool}" if server else tool
    async with connect(url, token, "auto") as client:
        try:
            result = await client.call_tool(tool, args)
            if not quiet:
                print(f"  {who} calls {name}({json.dumps(args)}): allowed -> "
                      f"{result.content[0].text}")
            return None
        except MCPError as error:
            extra = "".join(f", {key}: {error.data[key]}" for key in ("retry_after_s",)
                            if key in error.data)
            print(f"  {who} calls {name}({json.dumps(args)}): refused -> {error.message} "
                  f"(reason: {error.data['reason']}{extra})")
            return error


async def show_catalog(gateway: str, token: str, who: str) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        catalog = (await http.get(f"{gateway}/v1/catalog")).json()
    for server in catalog["servers"]:
        tools = ", ".join(f"{t['name']} ({t['access']}, {t['entitlement']})"
                          for t in server["tools"]) or "no tools"
        print(f"  {who} may use {server['name']}: {tools}")


def governance(gateway: str, users: dict[str, str]) -> None:
    """Limits, shadow mode, an approval round trip and break-glass, as users and approvers meet
    them (the gwc CLI talks to the node's API with the caller's own token)."""
    bob, carol = users["bob"], users["carol"]
    say("Rate limits: incidents allows 10 create_incident calls a minute per user: all 10 at "
        "once, then one every 6 s")
    for n in range(1, 12):
        asyncio.run(call(gateway, bob, "bob", "incidents", "create_incident",
                         {"title": f"db latency #{n}"}, quiet=n < 10))
    say("Shadow mode: zendesk enforces reads but only records write denials while support "
        "migrates")
    asyncio.run(call(gateway, carol, "carol (success: read-only)", "zendesk", "update_ticket",
                     {"ticket_id": "T-1", "status": "solved"}))
    print("  (the call went through; the audit trail records it as would_deny)")
    say("Approvals: deploy needs a yes from the owner team (platform) before it reaches the "
        "upstream")
    deploy = {"service": "api", "env": "staging"}
    waiting = asyncio.run(call(gateway, bob, "bob", "deploy", "deploy", deploy))
    assert waiting is not None, "deploy should wait for an approval"
    approval = waiting.data["approval_id"]
    dave = ("dave", users["dave"])
    print(run("gwc", "approvals", "list", "--gateway", gateway, as_user=dave).rstrip())
    print(run("gwc", "approvals", "approve", approval, "--gateway", gateway,
              as_user=dave).rstrip())
    asyncio.run(call(gateway, bob, "bob", "deploy", "deploy", deploy))
    print("  the approval is used up: the same call again waits for a new one")
    asyncio.run(call(gateway, bob, "bob", "deploy", "deploy", deploy))
    say("Break-glass: the on-call SRE opens a bypass of zendesk, a server hidden from him")
    sam = ("sam", users["sam"])
    search = {"query": "outage"}
    asyncio.run(show_tools(gateway, sam[1], "sam", "zendesk", "auto"))
    opened = run("gwc", "bypass", "open", "--server", "zendesk", "--reason",
                 "INC-1234: ticket sync stuck", "--ttl", "300", "--gateway", gateway,
                 "--format", "json", as_user=sam)
    asyncio.run(call(gateway, sam[1], "sam", "zendesk", "search_tickets", search))
    print(run("gwc", "bypass", "close", json.loads(opened)["id"], "--gateway", gateway,
              as_user=sam).rstrip())


async def drive(gateway: str, alice: str, bob: str) -> None:
    say("Two users, one gateway: each sees only what they are entitled to")
    for who, token in (("alice (data-platform)", alice), ("bob (engineering)", bob)):
        for server, mode in (("postgres-prod", "auto"), ("deploy", "legacy")):
            await show_tools(gateway, token, who, server, mode)
    say("Calls are decided before anything reaches an upstream")
    await call(gateway, alice, "alice", "postgres-prod", "query",
               {"sql": "select 1", "schemas": ["public"]})
    await call(gateway, alice, "alice", "postgres-prod", "query",
               {"sql": "select * from salaries", "schemas": ["finance"]})
    await call(gateway, bob, "bob", "deploy", "get_status", {"service": "api"})
    await call(gateway, bob, "bob", "deploy", "drop_cluster", {"env": "production"})
    await call(gateway, bob, "bob", "deploy", "deploy", {"service": "api", "env": "production"})
    say("One URL for everything: the aggregate endpoint /mcp (what goes in a client's config)")
    for who, token in (("alice", alice), ("bob", bob)):
        for mode in ("auto", "legacy"):
            await show_tools(gateway, token, who, "", mode)
    await call(gateway, alice, "alice", "", "postgres-prod__query",
               {"sql": "select 1", "schemas": ["public"]})
    await call(gateway, bob, "bob", "", "postgres-prod__query", {"sql": "select 1"})
    say("The catalog API (GET /v1/catalog) for portals and CLIs")
    await show_catalog(gateway, bob, "bob")


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    processes: list[subprocess.Popen] = []
    try:
        say("1. Keys: the CI key that signs bundles, the gateway's own key, a dev identity provider")
        run("gwc", "keygen", "--out", "keys/ci")
        run("gwc", "keygen", "--out", "keys/gateway")
        run("gwc", "dev-idp", "--out", "idp/dev")

        ports = {name: free_port() for name in
                 ("data-catalog", "deploy", "incidents", "postgres-prod", "zendesk")}
        repo = demo_registry(ports)
        say("2. CI: validate, build and verify the registry (upstreams point at this machine)")
        print(run("gwc", "validate", repo).strip())
        print(run("gwc", "build", repo, "--key", "keys/ci.key", "--out", "store",
                  "--serial", str(int(time.time())), "--revision", "demo").strip())
        print(run("gwc", "verify", "store/bundle.json", "--trust", "keys/ci.pub").strip())

        say("3. Start the example upstream MCP servers and a gwc runtime node")
        for name, port in ports.items():
            processes.append(subprocess.Popen(
                [sys.executable, str(REPO / "demo" / "upstreams.py"), name, str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        gateway_port = free_port()
        gateway = f"http://127.0.0.1:{gateway_port}"
        log = (WORK / "runtime.log").open("w")
        session_key = run("gwc", "session-key").strip()  # a fleet shares it: any node, any request
        processes.append(subprocess.Popen(
            [str(BIN / "gwc-runtime"), "--bundle", "store/bundle.json", "--trust", "keys/ci.pub",
             "--listen", f"127.0.0.1:{gateway_port}", "--signing-key", "keys/gateway.key",
             "--public-url", gateway, "--state-dir", "state", "--audit", "file:audit/audit.jsonl"],
            cwd=WORK, stdout=log, stderr=log, env={**os.environ, "PG_MCP_TOKEN": "demo-secret",
                                                   "GWC_SESSION_KEYS": session_key}))
        for name, port in ports.items():
            wait_for(port, f"upstream {name}")
        wait_for(gateway_port, "the gwc runtime", "/readyz")
        print(f"  runtime ready at {gateway} (logs: .demo/runtime.log)")

        users = {user: run("gwc", "dev-token", "--idp", "idp/dev.key", "--sub", user,
                           *[arg for group in groups for arg in ("--group", group)],
                           "--root", repo).strip()
                 for user, groups in (("alice", ["data-platform"]), ("bob", ["engineering"]),
                                      ("carol", ["success"]), ("dave", ["platform"]),
                                      ("sam", ["sre", "sre-oncall"]))}
        say("What a user pastes into Claude Desktop (gwc client-config)")
        print(run("gwc", "client-config", "--gateway", gateway, "--client", "claude-desktop"))
        asyncio.run(drive(gateway, users["alice"], users["bob"]))
        governance(gateway, users)
        say("The audit trail: every request above, hash-chained, its head signed by the "
            "gateway key (checked against the node's JWKS); who touched what, in one command")
        print(run("gwc", "audit", "verify", "audit/audit.jsonl", "--jwks",
                  f"{gateway}/.well-known/jwks.json").rstrip())
        print(run("gwc", "audit", "query", "audit/audit.jsonl", "--user", "bob").rstrip())
        say(f"Done. Logs in .demo/runtime.log, the trail in .demo/audit/; metrics at "
            f"{gateway}/metrics while running.")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
