"""`make demo`: the whole product on one machine, on embedded defaults.

CI's job (keys, validate, build, verify), then a runtime node serving that bundle in front of real
example MCP servers, with the development identity provider running as a real OIDC provider (the
node fetches its JWKS over HTTP); users connect with the real mcp.Client and see different tools,
calls are allowed and refused; then governance: a rate-limited call, a shadowed denial, an approval
round trip with a second user, a break-glass bypass, and the audit trail verified and queried.
Everything runs on 127.0.0.1 and stops by itself.

    python demo/run.py            # the scripted run, then stop
    python demo/run.py --serve    # the same, then keep everything running until Ctrl-C, print how to
                                  # point a real client at it, and write .demo/endpoints.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import yaml
from browser import MemoryTokens, ScriptedBrowser  # demo/browser.py, beside this script
from mcp import Client, MCPError
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from gwc.compiler.build.locks import is_lock

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


def demo_registry(ports: dict[str, int], idp: str) -> Path:
    """The example registry with its upstreams on this machine and the dev IdP (serving at ``idp``)
    as identity."""
    repo = WORK / "registry-repo"
    shutil.copytree(REPO / "registry", repo / "registry")
    shutil.copytree(REPO / "policies", repo / "policies")
    gateway = yaml.safe_load((REPO / "gateway.yaml").read_text())
    gateway["identity"].update(issuer=idp, jwks_uri=f"{idp}/jwks.json", algorithms=["ES256"])
    (repo / "gateway.yaml").write_text(yaml.safe_dump(gateway, sort_keys=False))
    for manifest in (repo / "registry").iterdir():
        if is_lock(manifest):  # pinned definitions: the same wherever the upstream runs
            continue
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
               quiet: bool = False) -> dict | None:
    """One tools/call on a server's endpoint, or on the aggregate one (server ''); the refusal
    (its structured content), if it was refused. A refusal the model should read (policy, an
    approval, a limit) is a tool result with isError; an unknown tool is a protocol error.
    ``quiet`` prints only a refusal."""
    url = f"{gateway}/servers/{server}/mcp" if server else f"{gateway}/mcp"
    name = f"{server}/{tool}" if server else tool
    shown = f"  {who} calls {name}({json.dumps(args)})"
    async with connect(url, token, "auto") as client:
        try:
            result = await client.call_tool(tool, args)
        except MCPError as error:
            print(f"{shown}: error -> {error.message} (reason: {error.data['reason']})")
            return dict(error.data)
        if result.is_error and result.structured_content:
            refusal = result.structured_content
            print(f"{shown}: refused -> the model reads: {result.content[0].text}\n"
                  f"    (reason: {refusal['reason']})")
            return refusal
        if not quiet:
            print(f"{shown}: allowed -> {result.content[0].text}")
        return None


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
    approval = waiting["approval_id"]
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
    say("Reviewed tool definitions: every server's tools are pinned (registry/*.tools.json, "
        "gwc pin); data-catalog's upstream changed request_export's description after review")
    await show_tools(gateway, alice, "alice", "data-catalog", "auto")
    await call(gateway, alice, "alice", "data-catalog", "request_export", {"table": "orders"})
    print("  arguments are checked against the pinned schema before policy, never coerced:")
    await call(gateway, alice, "alice", "postgres-prod", "query",
               {"sql": "select 1", "schemas": "public"})


IDP_CLIENT_SECRET = "demo-only-gateway-secret"


async def sign_in(gateway: str, idp: str) -> None:
    """What an MCP client does on first connect: the SDK's own OAuth client finds the gateway's
    authorization server from the 401, registers itself, and sends the user's browser (here a
    scripted one pressing buttons) to log in at the IdP and consent; then it has tokens."""
    say("Signing in the way an MCP client does (the SDK's OAuthClientProvider, a scripted browser)")
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    browser = ScriptedBrowser([("sub", "bob"), ("decision", "allow")])
    landed: asyncio.Queue[str] = asyncio.Queue()

    async def open_browser(url: str) -> None:
        print(f"  client opens the browser at the gateway: {url.split('?')[0]}?…")
        await landed.put(await browser.sign_in(url, until=redirect))
        print(f"  browser: the dev IdP's login page ({idp}/authorize), bob pressed; "
              "the gateway's consent page, Allow pressed")

    async def come_back() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(await landed.get()).query)
        print(f"  back at the client's loopback redirect with a code (iss={query['iss'][0]})")
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0],
                                       iss=query["iss"][0])

    storage = MemoryTokens()
    provider = OAuthClientProvider(f"{gateway}/mcp", OAuthClientMetadata(
        client_name="gwc demo client", redirect_uris=[redirect],
        grant_types=["authorization_code", "refresh_token"], response_types=["code"],
        token_endpoint_auth_method="none"), storage, open_browser, come_back)
    try:
        async with (httpx2.AsyncClient(auth=provider, timeout=30) as http,
                    Client(streamable_http_client(f"{gateway}/mcp", http_client=http),
                           read_timeout_seconds=20) as client):
            tools = [tool.name for tool in (await client.list_tools()).tools]
            assert storage.client is not None and storage.tokens is not None
            print(f"  registered as {storage.client.client_id}; access token for "
                  f"{storage.tokens.expires_in} s, refresh token kept")
            print(f"  bob's tools on {gateway}/mcp: {', '.join(tools)}")
            result = await client.call_tool("deploy__get_status", {"service": "api"})
            print(f"  deploy__get_status -> {result.content[0].text[:80]}")
    finally:
        await browser.close()


USERS = (("alice", ["data-platform"]), ("bob", ["engineering"]), ("carol", ["success"]),
         ("dave", ["platform"]), ("sam", ["sre", "sre-oncall"]))


def serve(gateway: str, idp: str, users: dict[str, str], processes: list[subprocess.Popen]) -> None:
    """Keep the node, the IdP and the upstreams running for a real client, until Ctrl-C (or
    SIGTERM); the caller's ``finally`` stops them."""
    tokens = WORK / "tokens"
    tokens.mkdir()
    for user, token in users.items():
        (tokens / f"{user}.txt").write_text(token + "\n")
    (WORK / "endpoints.json").write_text(json.dumps({
        "gateway": gateway, "idp": idp,
        "users": [{"subject": user, "groups": groups} for user, groups in USERS]}, indent=2) + "\n")
    say("Serving until Ctrl-C. Point a client at it:")
    print(f"""  gateway (every tool you may use): {gateway}/mcp
  one server:                       {gateway}/servers/<name>/mcp (e.g. {gateway}/servers/deploy/mcp)
  identity provider (dev, OIDC):    {idp}/.well-known/openid-configuration
  a user's bearer token:            .demo/tokens/<user>.txt ({", ".join(users)}; valid an hour)
  endpoints for scripts:            .demo/endpoints.json

  Clients sign in through the gateway: it sends your browser to the dev IdP (press a user's
  button), asks your consent once, and hands the client its own tokens. For example:
    .venv/bin/gwc connect {gateway}                    (gwc's stdio bridge, e.g. for Claude Desktop)
    npx mcp-remote {gateway}/mcp --allow-http          (another stdio bridge, from npm)
    npx @modelcontextprotocol/inspector                (transport "Streamable HTTP", URL {gateway}/mcp)
    approvals in a browser:                            {gateway}/approvals
  Or skip signing in with a bearer token from the dev IdP:
    curl -s {gateway}/v1/catalog -H "Authorization: Bearer $(cat .demo/tokens/bob.txt)"
    npx mcp-remote {gateway}/mcp --allow-http --header "Authorization:Bearer $(cat .demo/tokens/bob.txt)\"""")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops it as cleanly as Ctrl-C
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        sys.exit("demo: a process of the demo stopped (see .demo/*.log)")
    except KeyboardInterrupt:
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep everything running for a real "
                        "client until Ctrl-C, and write .demo/endpoints.json")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    processes: list[subprocess.Popen] = []
    try:
        say("1. Keys: the CI key that signs bundles, the gateway's own key, a dev identity provider")
        run("gwc", "keygen", "--out", "keys/ci")
        run("gwc", "keygen", "--out", "keys/gateway")
        run("gwc", "dev-idp", "--out", "idp/dev")
        idp_port, gateway_port = free_port(), free_port()
        idp, gateway = f"http://127.0.0.1:{idp_port}", f"http://127.0.0.1:{gateway_port}"
        # the gateway is one confidential client of the IdP: users log in there through it
        processes.append(subprocess.Popen(
            [str(BIN / "gwc"), "dev-idp", "serve", "--idp", "idp/dev.key", "--listen",
             f"127.0.0.1:{idp_port}", "--client",
             f"gwc-gateway:{IDP_CLIENT_SECRET}:{gateway}/oauth/callback"],
            cwd=WORK, stdout=(WORK / "idp.log").open("w"), stderr=subprocess.STDOUT))
        wait_for(idp_port, "the dev identity provider", "/.well-known/openid-configuration")
        print(f"  dev identity provider (OpenID Connect, not for production) at {idp}")

        ports = {name: free_port() for name in
                 ("data-catalog", "deploy", "incidents", "postgres-prod", "zendesk")}
        repo = demo_registry(ports, idp)
        say("2. CI: validate, build and verify the registry (upstreams point at this machine)")
        print(run("gwc", "validate", repo).strip())
        print(run("gwc", "build", repo, "--key", "keys/ci.key", "--out", "store",
                  "--serial", str(int(time.time())), "--revision", "demo").strip())
        print(run("gwc", "verify", "store/bundle.json", "--trust", "keys/ci.pub").strip())

        say("3. Start the example upstream MCP servers and a gwc runtime node")
        for name, port in ports.items():  # data-catalog's owners changed a tool after review
            processes.append(subprocess.Popen(
                [sys.executable, str(REPO / "demo" / "upstreams.py"), name, str(port),
                 *(["--changed-after-review"] if name == "data-catalog" else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        log = (WORK / "runtime.log").open("w")
        session_key = run("gwc", "session-key").strip()  # a fleet shares it: any node, any request
        processes.append(subprocess.Popen(
            [str(BIN / "gwc-runtime"), "--bundle", "store/bundle.json", "--trust", "keys/ci.pub",
             "--listen", f"127.0.0.1:{gateway_port}", "--signing-key", "keys/gateway.key",
             "--public-url", gateway, "--state-dir", "state", "--audit", "file:audit/audit.jsonl"],
            cwd=WORK, stdout=log, stderr=log, env={**os.environ, "PG_MCP_TOKEN": "demo-secret",
                                                   "GWC_SESSION_KEYS": session_key,
                                                   "GWC_IDP_CLIENT_SECRET": IDP_CLIENT_SECRET}))
        for name, port in ports.items():
            wait_for(port, f"upstream {name}")
        wait_for(gateway_port, "the gwc runtime", "/readyz")
        print(f"  runtime ready at {gateway} (logs: .demo/runtime.log)")

        users = {user: run("gwc", "dev-token", "--idp", "idp/dev.key", "--sub", user,
                           *[arg for group in groups for arg in ("--group", group)],
                           "--root", repo).strip()
                 for user, groups in USERS}
        say("What a user pastes into Claude Desktop (gwc client-config)")
        print(run("gwc", "client-config", "--gateway", gateway, "--client", "claude-desktop"))
        asyncio.run(sign_in(gateway, idp))
        asyncio.run(drive(gateway, users["alice"], users["bob"]))
        governance(gateway, users)
        say("The audit trail: every request above, hash-chained, its head signed by the "
            "gateway key (checked against the node's JWKS); who touched what, in one command")
        print(run("gwc", "audit", "verify", "audit/audit.jsonl", "--jwks",
                  f"{gateway}/.well-known/jwks.json").rstrip())
        print(run("gwc", "audit", "query", "audit/audit.jsonl", "--user", "bob").rstrip())
        print("  and what the node noticed itself (a pinned definition that drifted):")
        print(run("gwc", "audit", "query", "audit/audit.jsonl", "--server", "data-catalog")
              .rstrip())
        if args.serve:
            serve(gateway, idp, users, processes)
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
