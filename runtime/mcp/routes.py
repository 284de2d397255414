"""Where a request goes: on a per-server endpoint, to that server; on the aggregate ``/mcp``, to the
server behind a namespaced name (``{server}__{tool}``, a prefixed URI, a prompt's name), with the
upstream's own name put back into the message."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gwc.runtime.audit.record import CallRecord
from gwc.runtime.bundle.format import Server
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.mcp.aggregate import Aggregate
from gwc.runtime.mcp.sealed_sessions import Session
from gwc.runtime.policy.decide import Principal
from gwc.runtime.policy.names import resource_uri
from gwc.runtime.protocol.errors import INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from gwc.runtime.protocol.sse import Rewrite
from gwc.runtime.protocol.wire import LIST_METHODS, NAMED_PARAM

AGGREGATE = ""  # the endpoint name of /mcp
SUBSCRIPTIONS = frozenset({"resources/subscribe", "resources/unsubscribe"})
COMPLETION_REFS = {"ref/prompt": "name", "ref/resource": "uri"}  # what a completion's ref names
# Methods a caller who sees a server may use on its per-server endpoint without a tool decision.
PASSED_METHODS = frozenset({
    "tools/list", "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe", "subscriptions/listen", "prompts/list",
    "prompts/get", "completion/complete", "logging/setLevel"})


@dataclass(slots=True)
class Call:
    """One JSON-RPC request on its way through the gateway."""

    request: web.Request
    bundle: Bundle
    principal: Principal
    endpoint: str  # a server name, or AGGREGATE
    message: dict[str, Any]
    method: str  # "" for a client's answer to an upstream's request
    params: dict[str, Any]
    session: Session | None  # None: the stateless 2026-07-28 era
    body: bytes
    visible: Server | None  # the per-server endpoint's server, if the wall found it visible
    record: CallRecord | None = None  # its audit record, until written

    @property
    def id(self) -> Any:
        return self.message.get("id")


@dataclass(slots=True)
class Target:
    """The server a request goes to, and what it asks of it."""

    name: str  # the server's name; AGGREGATE when an aggregate name resolves to nothing
    server: Server | None  # None when an aggregate name resolves to nothing
    named: Any  # the tool, prompt or resource named in the request, as the upstream calls it
    message: dict[str, Any]  # what goes upstream: the client's, or renamed for the upstream
    visible: Server | None = None  # the server, when the caller is inside its visibility
    seen: bool = True  # the caller may know the server exists (visible, or opened by break-glass)
    found: bool = True  # False: an aggregate name that resolves to nothing the caller may see
    rewrite: Rewrite | None = None  # how the answer is rewritten on its way back, besides its id


class Routes:
    def __init__(self, aggregate: Aggregate) -> None:
        self._aggregate = aggregate

    async def target(self, call: Call) -> Target:
        """The request's target, or METHOD_NOT_FOUND for a method the endpoint does not serve.
        Aggregate lists have none: the gateway answers them itself (``Aggregate.listing``)."""
        if call.endpoint:
            if call.method != "tools/call" and call.method not in PASSED_METHODS:
                raise RpcError(METHOD_NOT_FOUND, f"method '{call.method}' is not supported by the "
                               "gateway", 404)
            return Target(call.endpoint, call.bundle.payload.servers[call.endpoint],
                          call.params.get(NAMED_PARAM.get(call.method, "")), call.message,
                          call.visible)
        if call.method == "completion/complete":
            return await self._completion(call)
        if call.method in SUBSCRIPTIONS:  # to the upstream that owns the namespaced URI
            uri = call.params.get("uri")
            return self._renamed(call, self._aggregate.resolve_resource(
                call.bundle, call.principal, str(uri)), uri, "uri")
        if call.method not in NAMED_PARAM:
            raise RpcError(METHOD_NOT_FOUND, f"method '{call.method}' is not supported on the "
                           "aggregate endpoint", 404)
        bundle, principal, field = call.bundle, call.principal, NAMED_PARAM[call.method]
        asked = call.params.get(field)
        if call.method == "tools/call":  # visibility is admission's to check, with break-glass
            found = self._aggregate.resolve_tool(bundle, str(asked))
            return self._renamed(call, found, asked, field, seen=False)
        if call.method == "resources/read":  # only visible servers' resources resolve
            found = self._aggregate.resolve_resource(bundle, principal, str(asked))
            target = self._renamed(call, found, asked, field)
            if found is not None:
                target.rewrite = _namespace_contents(found[0])
            return target
        found = await self._aggregate.resolve_prompt(bundle, principal, str(asked))
        return self._renamed(call, found, asked, field)

    async def _completion(self, call: Call) -> Target:
        """``completion/complete`` on the aggregate: to the server behind the namespaced prompt
        or resource its ``ref`` names, with the upstream's own name put back."""
        ref = call.params.get("ref")
        kind = ref.get("type") if isinstance(ref, dict) else None
        if not isinstance(ref, dict) or kind not in COMPLETION_REFS:
            raise RpcError(INVALID_PARAMS, "completion/complete needs params.ref of type "
                           "ref/prompt or ref/resource", 400)
        field = COMPLETION_REFS[kind]
        asked = ref.get(field)
        found = (await self._aggregate.resolve_prompt(call.bundle, call.principal, str(asked))
                 if kind == "ref/prompt" else
                 self._aggregate.resolve_resource(call.bundle, call.principal, str(asked)))
        if found is None:
            return Target(AGGREGATE, None, asked, call.message, seen=False, found=False)
        name, upstream_name = found
        server = call.bundle.payload.servers[name]
        message = {**call.message, "params": {**call.params, "ref": {**ref, field: upstream_name}}}
        return Target(name, server, upstream_name, message, server)

    @staticmethod
    def _renamed(call: Call, found: tuple[str, str] | None, asked: Any, field: str,
                 seen: bool = True) -> Target:
        if found is None:
            return Target(AGGREGATE, None, asked, call.message, seen=False, found=False)
        name, upstream_name = found
        server = call.bundle.payload.servers[name]
        # resources and prompts resolve only among visible servers; a tool is judged in admission
        return Target(name, server, upstream_name,
                      {**call.message, "params": {**call.params, field: upstream_name}},
                      server if seen else None, seen)

    @staticmethod
    def lists_here(call: Call) -> bool:
        """An aggregate list: the gateway builds it from its catalog of every upstream."""
        return not call.endpoint and call.method in LIST_METHODS


def _namespace_contents(server: str) -> Rewrite:
    """resources/read answers name their contents by URI: the aggregate's URIs, not upstream's."""
    def rewrite(message: dict[str, Any]) -> dict[str, Any]:
        result = message.get("result")
        if isinstance(result, dict) and isinstance(result.get("contents"), list):
            result["contents"] = [{**c, "uri": resource_uri(server, str(c.get("uri", "")))}
                                  if isinstance(c, dict) else c for c in result["contents"]]
        return message
    return rewrite
