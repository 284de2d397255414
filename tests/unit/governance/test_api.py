"""The approvals and bypass HTTP API on a real aiohttp server, callers authenticated with real JWTs
(the dev IdP's keys embedded in a compiled bundle), and the ``gwc approvals`` / ``gwc bypass`` CLI
against that server."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from gwc.compiler.cli.admin import approvals as approvals_cli
from gwc.compiler.cli.admin import bypass as bypass_cli
from gwc.compiler.client.dev_idp import DevIdP
from gwc.runtime.api.governance import GovernanceApi
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.approvals import arguments_digest
from gwc.runtime.governance.state import State
from gwc.runtime.identity import Authenticator, AuthError
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import UNAUTHENTICATED, RpcError
from tests.support.helpers import compile_root, manifest, write_registry
from tests.support.state_fixtures import AuditList

ISSUER, AUDIENCE = "https://idp.gov.test", "gwc-gov"
DIGEST = arguments_digest({"version": 41})
ALICE = Principal("alice", frozenset({"eng"}))


def compiled(root: Path, idp: DevIdP, break_glass: dict | None) -> Bundle:
    root.mkdir(parents=True)
    (root / "idp.jwks.json").write_text(json.dumps(idp.jwks()))
    gateway = {"identity": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": "idp.jwks.json",
                            "algorithms": ["ES256"]}}
    if break_glass is not None:
        gateway["break_glass"] = break_glass
    deploy = manifest("deploy", "ops", visibility=["team:eng", "team:ops"],
                      tools={"status": {"access": "read"},
                             "rollback": {"access": "write", "approval": "required"}})
    write_registry(root, gateway=gateway, manifests={"deploy.yaml": deploy})
    return Bundle(compile_root(root), "sha256:" + "ab" * 32, None)


class Node(AuditList):
    """A small real app: the governance routes, a JWT caller on the active bundle, an audit list."""

    def __init__(self, bundle: Bundle, state: State) -> None:
        self.bundle, self.state = bundle, state
        super().__init__()
        self.auth = Authenticator(bundle.payload.gateway.identity)

    async def caller(self, request: web.Request) -> tuple[Bundle, Principal]:
        try:
            return self.bundle, await self.auth.authenticate(request.headers.get("Authorization"))
        except AuthError as exc:
            raise RpcError(UNAUTHENTICATED, str(exc), 401,
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None

    def app(self) -> web.Application:
        app = web.Application()
        GovernanceApi(self.caller, self.state, self.audit, self.base_record).add_routes(app)
        return app


@pytest.fixture
def idp() -> DevIdP:
    return DevIdP.generate("gov")


@pytest.fixture
def token(idp):
    def make(subject: str, *groups: str, actor: str | None = None) -> str:
        return idp.token(issuer=ISSUER, audience=AUDIENCE, subject=subject, groups=list(groups),
                         actor=actor)
    return make


@pytest.fixture
def bundle(tmp_path, idp) -> Bundle:
    return compiled(tmp_path / "reg", idp, {"group": "sre-oncall", "max_ttl_s": 3600})


@pytest.fixture
async def node(bundle):
    state = State.from_url("memory")
    yield Node(bundle, state)
    await state.aclose()


@pytest.fixture
async def http(node, aiohttp_client):
    return await aiohttp_client(node.app())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def answer(response, status: int) -> dict:
    assert response.status == status, await response.text()
    return await response.json()


async def error(response, status: int) -> tuple[str, str]:
    body = await answer(response, status)
    return body["error"]["reason"], body["error"]["message"]


async def test_callers_must_authenticate(http):
    for method, path in (("GET", "/v1/approvals"), ("POST", "/v1/approvals/apv_x/approve"),
                         ("POST", "/v1/bypass"), ("DELETE", "/v1/bypass/byp_x")):
        response = await http.request(method, path, headers=bearer("not-a-jwt"))
        assert (await error(response, 401))[0] == "unauthenticated"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_an_approver_approves_over_the_api(node, http, token):
    approvers = node.bundle.payload.servers["deploy"].tools["rollback"].approval.approvers
    pending = (await node.state.approvals.redeem_or_request(ALICE, "deploy", "rollback", DIGEST,
                                                            approvers)).approval
    path = f"/v1/approvals/{pending.id}"
    bob, alice, carol = token("bob", "ops"), token("alice", "eng"), token("carol", "eng")

    listed = (await answer(await http.get("/v1/approvals", headers=bearer(bob)), 200))["approvals"]
    assert [(a["id"], a["can_decide"], a["approvers"]) for a in listed] == [(pending.id, True, ["group:ops"])]
    own = await answer(await http.get(path, headers=bearer(alice)), 200)
    assert own["status"] == "pending" and own["can_decide"] is False and own["path"] == path
    assert own["requester"] == {"subject": "alice", "kind": "human", "acting_for": None}
    assert own["expires"].endswith("Z") and len(own["expires"]) == 27
    assert (await error(await http.get(path, headers=bearer(carol)), 404))[0] == "not_found"

    assert (await error(await http.post(path + "/approve", headers=bearer(alice)), 403))[0] == "own_request"
    agent_for_alice = token("alice", "ops", actor="helper-bot")
    assert (await error(await http.post(path + "/approve", headers=bearer(agent_for_alice)), 403))[0] \
        == "own_request"
    assert (await error(await http.post(path + "/deny", headers=bearer(carol)), 403))[0] == "not_an_approver"
    assert (await error(await http.post(path + "/approve", headers=bearer(bob), data=b"{nope"), 400))[0] \
        == "invalid_request"
    assert node.records == []

    approved = await answer(await http.post(path + "/approve", headers=bearer(bob)), 200)
    assert (approved["status"], approved["decided_by"]) == ("approved", "bob")
    assert node.records == [{"type": "approval", "bundle": {"digest": node.bundle.digest, "serial": 1},
                             "principal": {"subject": "bob", "kind": "human"}, "event": "approved",
                             "approval": pending.id, "server": "deploy", "tool": "rollback",
                             "requester": {"subject": "alice", "kind": "human", "acting_for": None},
                             "arguments_digest": DIGEST}]
    reason, message = await error(await http.post(path + "/deny", headers=bearer(token("olga", "ops"))), 409)
    assert reason == "already_decided" and "approved by bob" in message
    assert (await node.state.approvals.redeem(ALICE, "deploy", "rollback", DIGEST)).status == "redeemed"
    missing = "/v1/approvals/apv_" + "x" * 24 + "/approve"
    assert (await error(await http.post(missing, headers=bearer(bob)), 404))[0] == "not_found"


async def test_the_api_shows_an_approvals_arguments_as_kept(node, http, token):
    arguments = {"version": 41, "password": "never-stored"}
    pending = (await node.state.approvals.redeem_or_request(
        ALICE, "deploy", "rollback", arguments_digest(arguments), ["group:ops"], arguments=arguments,
        sensitive=["password"])).approval
    bob = bearer(token("bob", "ops"))
    shown = await answer(await http.get(f"/v1/approvals/{pending.id}", headers=bob), 200)
    assert shown["arguments"] == {"version": 41, "password": "***"}
    listed = (await answer(await http.get("/v1/approvals", headers=bob), 200))["approvals"]
    assert "arguments" not in listed[0]  # a listing stays small
    decided = await answer(await http.post(f"/v1/approvals/{pending.id}/deny", headers=bob), 200)
    assert decided["arguments"] == shown["arguments"]
    big = (await node.state.approvals.redeem_or_request(
        ALICE, "deploy", "rollback", DIGEST, ["group:ops"], arguments={"blob": "x" * 20_000})).approval
    too_large = await answer(await http.get(f"/v1/approvals/{big.id}", headers=bob), 200)
    assert too_large["arguments"] is None and too_large["arguments_digest"] == DIGEST


async def test_no_decision_without_its_audit_record(node, http, token):
    pending = (await node.state.approvals.redeem_or_request(ALICE, "deploy", "rollback", DIGEST,
                                                            ["group:ops"])).approval
    path = f"/v1/approvals/{pending.id}/deny"
    node.audit_fails = OSError("disk full")
    reason, message = await error(await http.post(path, headers=bearer(token("bob", "ops"))), 503)
    assert reason == "audit_unavailable" and "nothing was changed" in message
    # the auditor's own refusal (audit failure mode closed) keeps its reason
    node.audit_fails = RpcError(-32031, "the audit trail cannot be written", 503)
    node.audit_fails.data["reason"] = "audit_unavailable"
    bob = bearer(token("bob", "ops"))
    assert (await error(await http.post(path, headers=bob), 503))[0] == "audit_unavailable"
    assert (await node.state.approvals.get(pending.id)).status == "pending"
    node.audit_fails = None
    assert (await answer(await http.post(path, headers=bob), 200))["status"] == "denied"


async def test_break_glass_members_open_list_and_close_bypasses(node, http, token):
    sam = bearer(token("sam", "sre-oncall"))
    for who in (token("bob", "ops"), token("sam", "sre-oncall", actor="incident-bot")):
        for method, path in (("POST", "/v1/bypass"), ("GET", "/v1/bypass"), ("DELETE", "/v1/bypass/byp_x")):
            response = await http.request(method, path, headers=bearer(who),
                                          json={"server": "deploy", "reason": "x", "ttl_s": 60})
            assert await error(response, 403) == ("not_break_glass", (
                "only members of the break-glass group 'sre-oncall' (people, not agents) may open, "
                "list or close bypasses"))
    for body, status, why in (
            ({"server": "deploy", "ttl_s": 60}, 400, "invalid_request"),
            ({"server": "deploy", "reason": "  ", "ttl_s": 60}, 400, "invalid_request"),
            ({"server": "deploy", "reason": "INC-9", "ttl_s": "60"}, 400, "invalid_request"),
            ({"server": "deploy", "reason": "INC-9", "ttl": 60}, 400, "invalid_request"),
            ({"server": "deploy", "reason": "INC-9", "ttl_s": 7200}, 400, "ttl_too_long"),
            ({"server": "nope", "reason": "INC-9", "ttl_s": 60}, 404, "not_found"),
            (["deploy"], 400, "invalid_request")):
        reason, message = await error(await http.post("/v1/bypass", headers=sam, json=body), status)
        assert reason == why, body
        if why == "ttl_too_long":
            assert "3600" in message
    not_json = await http.post("/v1/bypass", headers=sam, data=b"not json")
    assert (await error(not_json, 400))[0] == "invalid_request"
    assert node.records == [] and await node.state.bypasses.list_open() == []

    opened = await answer(await http.post("/v1/bypass", headers=sam, json={
        "server": "deploy", "reason": "INC-9: rollback blocked", "ttl_s": 600}), 201)
    assert opened["id"].startswith("byp_") and opened["server"] == "deploy" and opened["ttl_s"] == 600
    assert opened["opened_by"] == "sam" and opened["expires"].endswith("Z")
    assert (await node.state.bypasses.active("deploy")).id == opened["id"]
    listed = await answer(await http.get("/v1/bypass", headers=sam), 200)
    assert [b["id"] for b in listed["bypasses"]] == [opened["id"]]

    closed = await answer(await http.delete(f"/v1/bypass/{opened['id']}", headers=sam), 200)
    assert closed["closed"] is True and await node.state.bypasses.active("deploy") is None
    assert (await error(await http.delete(f"/v1/bypass/{opened['id']}", headers=sam), 404))[0] == "not_found"
    assert [(r["type"], r["event"], r["bypass"], r["server"], r["reason"], r["ttl_s"], r["expires"])
            for r in node.records] == [
        ("bypass", event, opened["id"], "deploy", "INC-9: rollback blocked", 600, opened["expires"])
        for event in ("opened", "closed")]
    # POST .../close does the same; a failed audit write leaves the bypass as it was
    again = await answer(await http.post("/v1/bypass", headers=sam, json={
        "server": "deploy", "reason": "INC-10", "ttl_s": 60}), 201)
    node.audit_fails = OSError("disk full")
    assert (await error(await http.post(f"/v1/bypass/{again['id']}/close", headers=sam), 503))[0] \
        == "audit_unavailable"
    assert (await node.state.bypasses.active("deploy")).id == again["id"]
    node.audit_fails = None
    await answer(await http.post(f"/v1/bypass/{again['id']}/close", headers=sam), 200)


async def test_without_a_break_glass_group_nobody_opens_bypasses(tmp_path, idp, token, aiohttp_client):
    state = State.from_url("memory")
    http = await aiohttp_client(Node(compiled(tmp_path / "reg", idp, None), state).app())
    reason, message = await error(await http.post("/v1/bypass", headers=bearer(token("sam", "sre-oncall")),
                                                  json={"server": "deploy", "reason": "x", "ttl_s": 60}), 403)
    assert reason == "break_glass_disabled" and "break_glass.group" in message
    await state.aclose()


async def test_two_nodes_share_redis_and_answer_503_without_it(bundle, token, redis_server, aiohttp_client):
    node_a, node_b = (Node(bundle, State.from_url(redis_server.url)) for _ in range(2))
    http_a, http_b = await aiohttp_client(node_a.app()), await aiohttp_client(node_b.app())
    pending = (await node_a.state.approvals.redeem_or_request(ALICE, "deploy", "rollback", DIGEST,
                                                              ["group:ops"])).approval
    await answer(await http_b.post(f"/v1/approvals/{pending.id}/approve",
                                   headers=bearer(token("bob", "ops"))), 200)
    assert (await node_a.state.approvals.redeem(ALICE, "deploy", "rollback", DIGEST)).status == "redeemed"
    sam = bearer(token("sam", "sre-oncall"))
    opened = await answer(await http_a.post("/v1/bypass", headers=sam, json={
        "server": "deploy", "reason": "INC-11", "ttl_s": 60}), 201)
    assert [b["id"] for b in (await answer(await http_b.get("/v1/bypass", headers=sam), 200))["bypasses"]] \
        == [opened["id"]]
    redis_server.stop()
    for response in (await http_a.get("/v1/approvals", headers=sam),
                     await http_b.post(f"/v1/approvals/{pending.id}/deny",
                                       headers=bearer(token("bob", "ops"))),
                     await http_b.post("/v1/bypass", headers=sam,
                                       json={"server": "deploy", "reason": "INC-12", "ttl_s": 60}),
                     await http_a.delete(f"/v1/bypass/{opened['id']}", headers=sam)):
        assert (await error(response, 503))[0] == "state_unavailable"
    assert (await node_a.state.bypasses.active("deploy")).id == opened["id"]  # the snapshot holds
    for node in (node_a, node_b):
        await node.state.aclose()


def gwc(group, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)


async def test_the_cli_against_a_real_gateway(node, http, token):
    url = str(http.make_url("")).rstrip("/")
    bob, sam = token("bob", "ops"), token("sam", "sre-oncall")
    pending = (await node.state.approvals.redeem_or_request(ALICE, "deploy", "rollback", DIGEST,
                                                            ["group:ops"])).approval

    async def run(group, *args, who=bob):
        return await asyncio.to_thread(gwc, group, *args, "--gateway", url, env={"GWC_TOKEN": who})

    listed = await run(approvals_cli, "list")
    assert listed.exit_code == 0, listed.output
    assert pending.id in listed.output and "deploy/rollback  requested by alice" in listed.output
    assert "[you may approve or deny]" in listed.output and bob not in listed.output
    shown = await run(approvals_cli, "show", pending.id, "--format", "json")
    assert json.loads(shown.output)["id"] == pending.id
    refused = await run(approvals_cli, "approve", pending.id, who=token("carol", "eng"))
    assert refused.exit_code == 1 and "(not_an_approver, HTTP 403)" in refused.stderr
    approved = await run(approvals_cli, "approve", pending.id)
    assert approved.exit_code == 0 and approved.output.startswith(f"approved {pending.id}")
    again = await run(approvals_cli, "deny", pending.id)
    assert again.exit_code == 1 and "already_decided" in again.stderr
    assert (await run(approvals_cli, "list", who=token("carol", "eng"))).output.strip() == "no approvals"

    opened = await run(bypass_cli, "open", "--server", "deploy", "--reason", "INC-13", "--ttl", "600",
                       "--format", "json", who=sam)
    assert opened.exit_code == 0, opened.output
    bypass_id = json.loads(opened.output)["id"]
    assert bypass_id in (await run(bypass_cli, "list", who=sam)).output
    too_long = await run(bypass_cli, "open", "--server", "deploy", "--reason", "x", "--ttl", "9999", who=sam)
    assert too_long.exit_code == 1 and "3600" in too_long.stderr and "ttl_too_long" in too_long.stderr
    closed = await run(bypass_cli, "close", bypass_id, who=sam)
    assert closed.output.strip() == f"closed {bypass_id} (deploy)"
    assert (await run(bypass_cli, "list", who=sam)).output.strip() == "no open bypasses"
    not_member = await run(bypass_cli, "list")
    assert not_member.exit_code == 1 and "not_break_glass" in not_member.stderr
    assert bob not in not_member.stderr


def test_the_cli_refuses_clear_text_tokens_and_names_unreachable_gateways():
    leaky = gwc(approvals_cli, "list", "--gateway", "http://gateway.example", "--token", "secret")
    assert leaky.exit_code == 1 and "clear text" in leaky.stderr and "secret" not in leaky.stderr
    down = gwc(approvals_cli, "list", "--gateway", "http://127.0.0.1:9", "--token", "secret")
    assert down.exit_code == 1 and "cannot reach the gateway at http://127.0.0.1:9" in down.stderr
    assert "secret" not in down.stderr
    missing = gwc(bypass_cli, "list", env={"GWC_GATEWAY": ""})
    assert missing.exit_code == 2 and "--gateway" in missing.output
