"""``gwc approvals`` and ``gwc bypass``: the gateway's approval and break-glass API from a shell.

Each command talks to one gateway (``--gateway URL`` or env ``GWC_GATEWAY``) with the caller's own
bearer token (``--token`` or env ``GWC_TOKEN``; never printed or logged; without one, the sign-in
``gwc login`` stored, refreshed as needed), through
:class:`~gwc.compiler.client.governance.GovernanceClient`. Output is readable text or, with
``--format json``, the gateway's JSON answer. A refusal prints the gateway's message and reason
(``gwc: ... (not_an_approver, HTTP 403)``) and exits 1.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import click

from gwc.compiler.cli.common import fail
from gwc.compiler.client.governance import GatewayError, GovernanceClient


class Console:
    """A command's console onto one gateway: calls its API, prints the answers, and ends the
    command with the gateway's refusal."""

    def __init__(self, api: GovernanceClient, fmt: str) -> None:
        self.api, self.fmt = api, fmt

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return self.api.call(method, path, body)
        except GatewayError as exc:
            fail(str(exc))

    def show(self, answer: Any, text: Callable[[Any], str]) -> None:
        click.echo(json.dumps(answer, indent=2) if self.fmt == "json" else text(answer))

    def show_list(self, path: str, key: str, line: Callable[[dict[str, Any]], str], none: str) -> None:
        self.show(self.call("GET", path), lambda answer: "\n".join(map(line, answer[key])) or none)


def gateway_options(command: Callable) -> Callable:
    """--gateway, --token, --allow-http, --format; the command receives ``gateway: Console``."""
    @functools.wraps(command)
    def build(gateway_url: str, token: str | None, allow_http: bool, fmt: str, **kwargs: Any) -> Any:
        try:
            api = GovernanceClient(gateway_url, token, allow_http)
        except GatewayError as exc:
            fail(str(exc))
        return command(gateway=Console(api, fmt), **kwargs)

    for option in reversed([
        click.option("--gateway", "gateway_url", envvar="GWC_GATEWAY", required=True, metavar="URL",
                     help="The gateway's base URL (env GWC_GATEWAY)."),
        click.option("--token", envvar="GWC_TOKEN", default=None, metavar="TOKEN",
                     help="Your bearer token (env GWC_TOKEN); never printed. Without it, the "
                          "sign-in of `gwc login`."),
        click.option("--allow-http", is_flag=True,
                     help="Allow plain http to a host that is not loopback (the token travels in clear)."),
        click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                     show_default=True),
    ]):
        build = option(build)
    return build


def _who(requester: dict[str, Any]) -> str:
    if requester.get("acting_for"):
        return f"{requester['subject']} ({requester['kind']} for {requester['acting_for']})"
    return requester["subject"]


def _approval_line(a: dict[str, Any]) -> str:
    line = (f"{a['id']}  {a['status']:<8}  {a['server']}/{a['tool']}  requested by "
            f"{_who(a['requester'])}  expires {a['expires']}")
    if a.get("decided_by"):
        line += f"  {a['status']} by {a['decided_by']}"
    return line + ("  [you may approve or deny]" if a.get("can_decide") else "")


def _approval_detail(a: dict[str, Any]) -> str:
    rows = [("id", a["id"]), ("status", a["status"]), ("call", f"{a['server']}/{a['tool']}"),
            ("arguments", a["arguments_digest"]), ("requested by", _who(a["requester"])),
            ("approvers", ", ".join(a["approvers"]) or "-"), ("created", a["created"]),
            ("expires", a["expires"]), ("decided by", a.get("decided_by") or "-"),
            ("decided at", a.get("decided_at") or "-"), ("used at", a.get("used_at") or "-"),
            ("you may decide", "yes" if a.get("can_decide") else "no")]
    return "\n".join(f"{name + ':':<16}{value}" for name, value in rows)


def _bypass_line(b: dict[str, Any]) -> str:
    return f"{b['id']}  {b['server']}  by {b['opened_by']}  until {b['expires']}  reason: {b['reason']}"


@click.group()
def approvals() -> None:
    """Approvals of calls to tools marked `approval: required`: list, show, approve, deny."""


@approvals.command("list")
@gateway_options
def approvals_list(gateway: Console) -> None:
    """Pending approvals you may decide, and your own requests."""
    gateway.show_list("/v1/approvals", "approvals", _approval_line, "no approvals")


@approvals.command("show")
@click.argument("approval_id", metavar="ID")
@gateway_options
def approvals_show(gateway: Console, approval_id: str) -> None:
    """One approval, in full."""
    gateway.show(gateway.call("GET", f"/v1/approvals/{quote(approval_id, safe='')}"), _approval_detail)


def _decide(gateway: Console, approval_id: str, verb: str) -> None:
    answer = gateway.call("POST", f"/v1/approvals/{quote(approval_id, safe='')}/{verb}")
    gateway.show(answer, lambda a: f"{a['status']} {a['id']}: {a['server']}/{a['tool']} requested by "
                                   f"{_who(a['requester'])}")


@approvals.command("approve")
@click.argument("approval_id", metavar="ID")
@gateway_options
def approvals_approve(gateway: Console, approval_id: str) -> None:
    """Approve: the requester's retry of that exact call then goes through, once."""
    _decide(gateway, approval_id, "approve")


@approvals.command("deny")
@click.argument("approval_id", metavar="ID")
@gateway_options
def approvals_deny(gateway: Console, approval_id: str) -> None:
    """Deny: the requester's retries are refused until the approval expires."""
    _decide(gateway, approval_id, "deny")


@click.group()
def bypass() -> None:
    """Break-glass bypasses (members of the break-glass group): open, list, close."""


@bypass.command("open")
@click.option("--server", required=True, help="The server whose policy, approvals and limits to bypass.")
@click.option("--reason", required=True, help="Why (an incident id, ...); recorded in the audit trail.")
@click.option("--ttl", "ttl_s", type=click.IntRange(min=1), required=True, metavar="SECONDS",
              help="How long it stays open (at most the gateway's break_glass.max_ttl_s).")
@gateway_options
def bypass_open(gateway: Console, server: str, reason: str, ttl_s: int) -> None:
    """Open a bypass of one server, with a reason, for a while."""
    answer = gateway.call("POST", "/v1/bypass", {"server": server, "reason": reason, "ttl_s": ttl_s})
    gateway.show(answer, lambda b: f"opened {b['id']} for {b['server']} until {b['expires']}")


@bypass.command("list")
@gateway_options
def bypass_list(gateway: Console) -> None:
    """The open bypasses."""
    gateway.show_list("/v1/bypass", "bypasses", _bypass_line, "no open bypasses")


@bypass.command("close")
@click.argument("bypass_id", metavar="ID")
@gateway_options
def bypass_close(gateway: Console, bypass_id: str) -> None:
    """Close a bypass before it expires."""
    answer = gateway.call("DELETE", f"/v1/bypass/{quote(bypass_id, safe='')}")
    gateway.show(answer, lambda b: f"closed {b['id']} ({b['server']})")
