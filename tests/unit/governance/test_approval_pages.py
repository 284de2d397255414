"""The approval pages on a real aiohttp server on 127.0.0.1: browser sessions in a real auth store,
real approvals backends (memory; Redis on a real redis-server), the governance API beside them, and an
audit list. Who sees which approval, deciding with a form and its CSRF token, the record a decision
writes (the API's), and every refusal answered as a page with its status and the page headers."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from gwc.runtime.api.approval_pages import ApprovalPages, pretty_arguments
from gwc.runtime.api.governance import GovernanceApi
from gwc.runtime.auth.browser import BrowserSessions
from gwc.runtime.auth.store import MemoryAuthStore, RedisAuthStore
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.approvals import Approval, MemoryApprovals, arguments_digest
from gwc.runtime.governance.approvals_redis import RedisApprovals
from gwc.runtime.governance.backend import connect
from gwc.runtime.governance.state import State
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import UNAUTHENTICATED, RpcError
from tests.support.e2e import free_port, start_node, write_governed_registry
from tests.support.fake_upstream import FakeUpstream
from tests.support.helpers import compile_root, manifest, write_registry
from tests.support.state_fixtures import ALICE, BOB, BOT, CAROL, AuditList, redis_clients_fixture  # noqa: F401
from tests.unit.mcp.test_pipeline import call_tool, refused

SECRET = "s3cr3t-token-value"
ARGS = {"version": 41, "env": "prod", "target": "prod", "token": SECRET}
OLGA = Principal("olga", frozenset({"ops"}))  # another approver


def compiled(root: Path) -> Bundle:
    deploy = manifest("deploy", "ops", visibility=["team:eng", "team:ops"],
                      tools={"status": {"access": "read"},
                             "rollback": {"access": "write", "approval": "required",
                                          "sensitive": ["token"]}})
    write_registry(root, manifests={"deploy.yaml": deploy})
    return Bundle(compile_root(root), "sha256:" + "ab" * 32, None)


class Node(AuditList):
    """The governance API and the approval pages on one app, sharing one decide; an audit list."""

    def __init__(self, bundle: Bundle | None, state: State) -> None:
        self.bundle, self.state = bundle, state
        super().__init__()
        self.sessions = BrowserSessions(MemoryAuthStore(), "http://127.0.0.1")

    async def caller(self, request: web.Request) -> tuple[Bundle, Principal]:
        raise RpcError(UNAUTHENTICATED, "these tests use the pages", 401)

    def app(self) -> web.Application:
        app = web.Application()
        api = GovernanceApi(self.caller, self.state, self.audit, self.base_record)
        api.add_routes(app)
        ApprovalPages(self.sessions, self.state.approvals, api.decide, lambda: self.bundle).add_routes(app)
        return app

    async def ask(self, who: Principal = ALICE, arguments: dict | None = None) -> Approval:
        arguments = ARGS if arguments is None else arguments
        tool = self.bundle.payload.servers["deploy"].tools["rollback"]
        return (await self.state.approvals.redeem_or_request(
            who, "deploy", "rollback", arguments_digest(arguments), tool.approval.approvers,
            arguments=arguments, sensitive=tool.sensitive)).approval

    async def session(self, who: Principal) -> tuple[dict[str, str], str]:
        """A signed-in browser: its Cookie header and its CSRF token."""
        response = web.Response()
        user = await self.sessions.start(response, who)
        return {"Cookie": f"{self.sessions.cookie}={response.cookies[self.sessions.cookie].value}"}, user.csrf


@pytest.fixture(params=["memory", "redis"])
def state(request) -> State:
    if request.param == "memory":
        return State("memory", None, MemoryApprovals(), None)  # type: ignore[arg-type]
    clients = request.getfixturevalue("redis_clients")
    return State("redis", None, RedisApprovals(clients()), None)  # type: ignore[arg-type]


@pytest.fixture
def memory_state() -> State:
    return State("memory", None, MemoryApprovals(), None)  # type: ignore[arg-type]


@pytest.fixture
def node(tmp_path, memory_state) -> Node:
    return Node(compiled(tmp_path / "reg"), memory_state)


@pytest.fixture
async def http(node, aiohttp_client):
    return await aiohttp_client(node.app())  # a test server on 127.0.0.1


def has_page_headers(response) -> bool:
    return (response.headers["X-Frame-Options"] == "DENY"
            and "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            and response.headers["X-Content-Type-Options"] == "nosniff")


def links(page: str) -> list[str]:
    return re.findall(r'href="/approvals/(apv_[A-Za-z0-9_-]+)"', page)


def sections(page: str) -> tuple[str, str]:
    """(waiting for your decision, your requests) of the list page."""
    waiting, own = page.split("<h2>Your requests</h2>")
    return waiting, own


async def page_of(response, status: int) -> str:
    body = await response.text()
    assert response.status == status, body
    assert response.content_type == "text/html" and has_page_headers(response)
    assert "Traceback" not in body
    return body


async def test_an_anonymous_browser_is_sent_to_sign_in(node, http):
    pending = await node.ask()
    for method, path in (("GET", "/approvals"), ("GET", f"/approvals/{pending.id}"),
                         ("POST", f"/approvals/{pending.id}")):
        response = await http.request(method, path, allow_redirects=False,
                                      data={"decision": "approve"} if method == "POST" else None)
        assert response.status in (302, 303) and has_page_headers(response)
        assert response.headers["Location"] == "/login?next=" + path.replace("/", "%2F")
    unknown = {"Cookie": f"{node.sessions.cookie}=not-a-session"}
    response = await http.get("/approvals", headers=unknown, allow_redirects=False)
    assert response.status in (302, 303) and response.headers["Location"].startswith("/login?next=")
    assert (await node.state.approvals.get(pending.id)).status == "pending" and node.records == []


async def test_the_list_shows_each_user_the_approvals_that_are_theirs_to_see(node, http):
    first = await node.ask()
    second = await node.ask(arguments={"version": 40})
    bots = await node.ask(BOT, arguments={"version": 39})  # alice's agent: hers too
    bob, _ = await node.session(BOB)
    waiting, own = sections(await page_of(await http.get("/approvals", headers=bob), 200))
    assert links(waiting) == [first.id, second.id, bots.id] and links(own) == []
    assert "rollback" in waiting and "deploy" in waiting and "bot (agent) for alice" in waiting

    alice, _ = await node.session(ALICE)
    waiting, own = sections(await page_of(await http.get("/approvals", headers=alice), 200))
    assert links(waiting) == [] and links(own) == [first.id, second.id, bots.id]
    assert "bot (agent) for alice" in own

    carol, _ = await node.session(CAROL)
    waiting, own = sections(await page_of(await http.get("/approvals", headers=carol), 200))
    assert links(waiting) == links(own) == []
    assert "Nothing is waiting for your decision" in waiting

    await node.state.approvals.decide(first.id, OLGA, True)  # decided: no longer waits for bob
    waiting, _ = sections(await page_of(await http.get("/approvals", headers=bob), 200))
    assert links(waiting) == [second.id, bots.id]


async def test_an_approver_reads_the_call_with_its_sensitive_arguments_masked(node, http):
    pending = await node.ask()
    bob, csrf = await node.session(BOB)
    page = html.unescape(await page_of(await http.get(f"/approvals/{pending.id}", headers=bob), 200))
    assert SECRET not in page
    assert pretty_arguments(pending.arguments) in page and '"token": "***"' in page
    assert '"env": "prod"' in page and pending.arguments_digest in page
    assert "alice" in page and "human" in page and "waiting for a decision" in page
    assert f'name="csrf" value="{csrf}"' in page
    assert 'value="approve"' in page and 'value="deny"' in page
    # the API shows the same arguments, masked too
    assert json.loads(pending.arguments) == {**ARGS, "token": "***"}


async def test_the_requester_sees_their_request_but_no_buttons_and_strangers_see_nothing(node, http):
    pending = await node.ask(arguments={"version": 7})
    alice, _ = await node.session(ALICE)
    page = await page_of(await http.get(f"/approvals/{pending.id}", headers=alice), 200)
    assert "This is your request" in page and 'value="approve"' not in page
    carol, carol_csrf = await node.session(CAROL)
    for path in (f"/approvals/{pending.id}", "/approvals/apv_doesnotexist0000000000",
                 "/approvals/not-an-id"):
        hidden = await page_of(await http.get(path, headers=carol), 404)
        assert "rollback" not in hidden and "alice" not in hidden
        assert "Approval not found" in hidden and 'href="/approvals"' in hidden
    # deciding is no different: invisible = not found (the API says 403 not_an_approver)
    refused = await http.post(f"/approvals/{pending.id}", headers=carol,
                              data={"decision": "approve", "csrf": carol_csrf})
    await page_of(refused, 404)
    assert (await node.state.approvals.get(pending.id)).status == "pending" and node.records == []


async def test_an_approver_approves_with_the_form_and_the_decision_is_audited(
        state, tmp_path, aiohttp_client):
    node = Node(compiled(tmp_path / "reg"), state)
    http = await aiohttp_client(node.app())
    pending = await node.ask()
    bob, csrf = await node.session(BOB)
    response = await http.post(f"/approvals/{pending.id}", headers=bob, allow_redirects=False,
                               data={"decision": "approve", "csrf": csrf})
    assert response.status == 303 and has_page_headers(response)
    assert response.headers["Location"] == f"/approvals/{pending.id}"
    decided = await state.approvals.get(pending.id)
    assert (decided.status, decided.decided_by) == ("approved", "bob")
    # the API's record, exactly
    assert node.records == [{
        "type": "approval", "bundle": {"digest": node.bundle.digest, "serial": 1},
        "principal": {"subject": "bob", "kind": "human"}, "event": "approved", "approval": pending.id,
        "server": "deploy", "tool": "rollback",
        "requester": {"subject": "alice", "kind": "human", "acting_for": None},
        "arguments_digest": arguments_digest(ARGS)}]
    page = await page_of(await http.get(f"/approvals/{pending.id}", headers=bob), 200)
    assert "You approved this" in page and 'value="approve"' not in page
    # the approval works: alice's retry of the same call is redeemed
    assert (await node.ask()).status == "used"


async def test_a_deny_is_recorded_and_shown(node, http):
    pending = await node.ask()
    bob, csrf = await node.session(BOB)
    response = await http.post(f"/approvals/{pending.id}", headers=bob,
                               data={"decision": "deny", "csrf": csrf})  # follows the 303
    page = await page_of(response, 200)
    assert str(response.url).endswith(f"/approvals/{pending.id}") and "You denied this" in page
    assert (await node.state.approvals.get(pending.id)).status == "denied"
    assert [(r["event"], r["principal"]["subject"]) for r in node.records] == [("denied", "bob")]


async def test_a_form_without_this_sessions_csrf_token_decides_nothing(node, http):
    pending = await node.ask()
    bob, csrf = await node.session(BOB)
    _, other_csrf = await node.session(OLGA)  # a genuine token of another session
    for form in ({"decision": "approve"}, {"decision": "approve", "csrf": ""},
                 {"decision": "approve", "csrf": csrf + "x"}, {"decision": "approve", "csrf": other_csrf}):
        page = await page_of(await http.post(f"/approvals/{pending.id}", headers=bob, data=form), 403)
        assert "nothing was decided" in page
    # a JSON body is not a form: no token either
    await page_of(await http.post(f"/approvals/{pending.id}", headers=bob,
                                  json={"decision": "approve", "csrf": csrf}), 403)
    await page_of(await http.post(f"/approvals/{pending.id}", headers=bob,
                                  data={"decision": "maybe", "csrf": csrf}), 400)
    assert (await node.state.approvals.get(pending.id)).status == "pending" and node.records == []


async def test_the_requester_cannot_approve_their_own_request(node, http):
    pending = await node.ask()
    for who in (ALICE, Principal("alice", frozenset({"ops"}))):  # even when alice is an approver
        headers, csrf = await node.session(who)
        page = await page_of(await http.post(f"/approvals/{pending.id}", headers=headers,
                                             data={"decision": "approve", "csrf": csrf}), 403)
        assert "cannot be approved or denied by its requester" in page
        assert "waiting for a decision" in page and 'value="approve"' not in page
    assert (await node.state.approvals.get(pending.id)).status == "pending" and node.records == []


async def test_a_decided_approval_cannot_be_decided_again(node, http):
    pending = await node.ask()
    bob, csrf = await node.session(BOB)
    olga, olga_csrf = await node.session(OLGA)
    await http.post(f"/approvals/{pending.id}", headers=bob, data={"decision": "deny", "csrf": csrf})
    page = await page_of(await http.post(f"/approvals/{pending.id}", headers=olga,
                                         data={"decision": "approve", "csrf": olga_csrf}), 409)
    assert "already denied by bob" in page
    assert (await node.state.approvals.get(pending.id)).status == "denied" and len(node.records) == 1


async def test_nothing_is_decided_when_its_record_cannot_be_written(node, http):
    pending = await node.ask()
    bob, csrf = await node.session(BOB)
    node.audit_fails = OSError("disk full")
    page = await page_of(await http.post(f"/approvals/{pending.id}", headers=bob,
                                         data={"decision": "approve", "csrf": csrf}), 503)
    assert "could not be written" in page and "disk full" not in page
    node.bundle = None  # no bundle yet: a decision cannot be recorded either
    node.audit_fails = None
    await page_of(await http.post(f"/approvals/{pending.id}", headers=bob,
                                  data={"decision": "approve", "csrf": csrf}), 503)
    assert (await node.state.approvals.get(pending.id)).status == "pending" and node.records == []


async def test_unreachable_state_is_a_page_not_a_trace(tmp_path, aiohttp_client):
    client = connect(f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    node = Node(compiled(tmp_path / "reg"), State("redis", None, RedisApprovals(client), None))  # type: ignore[arg-type]
    http = await aiohttp_client(node.app())
    bob, csrf = await node.session(BOB)
    try:
        for response in (await http.get("/approvals", headers=bob),
                         await http.get("/approvals/apv_0123456789abcdef0123", headers=bob),
                         await http.post("/approvals/apv_0123456789abcdef0123", headers=bob,
                                         data={"decision": "approve", "csrf": csrf})):
            assert "shared state is unreachable" in await page_of(response, 503)
        # sessions live in the same shared state: without it nobody is known, and nothing is shown
        node.sessions = BrowserSessions(RedisAuthStore(client), "http://127.0.0.1")
        http = await aiohttp_client(node.app())
        response = await http.get("/approvals", headers=bob, allow_redirects=False)
        assert "shared state is unreachable" in await page_of(response, 503)
    finally:
        await client.aclose()


async def test_arguments_are_shown_as_they_are(node, http):
    """Markup is text, and characters that hide or reorder text are escaped, not rendered."""
    tricky = {"note": "<script>alert(1)</script>", "path": "safe\u202etxt.exe", "zw": "a\u200bb",
              "emoji": "\U000e0041"}
    pending = await node.ask(arguments=tricky)
    bob, _ = await node.session(BOB)
    raw = await page_of(await http.get(f"/approvals/{pending.id}", headers=bob), 200)
    assert "<script>" not in raw and "&lt;script&gt;" in raw
    assert "\u202e" not in raw and "\\u202e" in raw and "\u200b" not in raw and "\\u200b" in raw
    assert "\\udb40\\udc41" in raw  # a tag character, as the JSON escape it would be
    assert json.loads(pretty_arguments(pending.arguments)) == tricky  # still the same JSON


async def test_arguments_too_large_to_keep_show_the_digest(node, http):
    big = {"blob": "z" * 20_000}
    pending = await node.ask(arguments=big)
    bob, _ = await node.session(BOB)
    page = await page_of(await http.get(f"/approvals/{pending.id}", headers=bob), 200)
    assert "arguments too large to show" in page and arguments_digest(big) in page and "zzzz" not in page


def with_sign_in(root: Path, jwks: str, upstream: str) -> Path:
    """The governed registry with sign-in on (browser sessions) and ops/write_thing's token sensitive."""
    write_governed_registry(root, jwks, upstream)
    settings = yaml.safe_load((root / "gateway.yaml").read_text())
    settings["sign_in"] = {"idp_client_id": "gwc-gateway", "idp_scopes": ["openid", "groups"]}
    (root / "gateway.yaml").write_text(yaml.safe_dump(settings))
    ops = yaml.safe_load((root / "registry" / "ops.yaml").read_text())
    ops["tools"]["write_thing"]["sensitive"] = ["token"]
    (root / "registry" / "ops.yaml").write_text(yaml.safe_dump(ops))
    return root


async def test_a_gateway_sends_approvers_to_the_page_and_decides_there(tmp_path, aiohttp_server,
                                                                       signing_key):
    """The node as app.py wires it: approve_url is the page when the gateway signs browsers in; the
    page reads the approval admission created, deciding there writes the node's trail."""
    fake = FakeUpstream()
    upstream = str((await aiohttp_server(fake.app(), host="127.0.0.1")).make_url("/mcp"))
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: with_sign_in(root, jwks, upstream),
                            idp_client_secret="not-used-here")
    alice = node.idp.token("alice", ["eng"])
    waiting = await call_tool(node, "ops", "write_thing", ARGS, alice)
    data = refused(waiting)  # a tool result the model reads, the page's URL in its text
    assert data["reason"] == "approval_required"
    assert data["approve_url"] == f"{node.url}/approvals/{data['approval_id']}"
    assert data["approve_url"] in data["message"]
    assert data["approve_url"] in waiting["result"]["content"][0]["text"]

    response = web.Response()
    csrf = (await node.gateway.browser.start(response, Principal("sam", frozenset({"sre"})))).csrf
    sam = {"Cookie": f"{node.gateway.browser.cookie}={response.cookies[node.gateway.browser.cookie].value}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(data["approve_url"], headers=sam) as answer:
            page = html.unescape(await page_of(answer, 200))
        assert '"token": "***"' in page and SECRET not in page and '"target": "prod"' in page
        async with http.post(data["approve_url"], headers=sam, allow_redirects=False,
                             data={"decision": "approve", "csrf": csrf}) as answer:
            assert answer.status == 303
    done = await call_tool(node, "ops", "write_thing", ARGS, alice)
    assert json.loads(done["result"]["content"][0]["text"])["arguments"] == ARGS
    records = [json.loads(line) for line in node.audit_path.read_text().splitlines()]
    assert [(r["event"], r["principal"]["subject"]) for r in records if r["type"] == "approval"] == [
        ("approved", "sam")]
