"""``subscriptions/listen`` (2026-07-28): one long-lived stream of the notifications a client opted
in to, on a server's endpoint and on the aggregate ``/mcp``.

The gateway answers it itself: it acknowledges what it will honour, then relays each upstream's own
listen stream (one upstream on a server's endpoint; on ``/mcp`` every server the caller sees, as the
2025 GET stream does, ``fan_in.py``), screened by entitlement, with the client's subscription id on
every notification; and it adds its own ``tools/list_changed`` when a new bundle changes what the
caller sees. Upstreams' acknowledgements and final results stay at the gateway. On ``/mcp`` the
client's resource subscriptions are namespaced URIs: each goes to the upstream that owns it, and
one naming no server the caller sees is not honoured.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web

from gwc.runtime.audit.record import Outcome
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.mcp.aggregate import Aggregate
from gwc.runtime.mcp.fan_in import MAX_FAN_IN, Source, merged, screen
from gwc.runtime.mcp.list_changed import UPSTREAM_OPEN_S, ListChangedStreams
from gwc.runtime.mcp.recording import Recording
from gwc.runtime.mcp.relay import Relay
from gwc.runtime.mcp.routes import Call
from gwc.runtime.policy.names import split_resource_uri
from gwc.runtime.protocol.sse import Screen, event
from gwc.runtime.upstream.catalog import UpstreamCatalog

SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
LIST_FILTERS = ("toolsListChanged", "promptsListChanged", "resourcesListChanged")
RESOURCES = "resourceSubscriptions"


def tagged(screened: Screen, subscription_id: Any) -> Screen:
    """An upstream's listen stream as the client's: notifications only (its acknowledgement and
    final result stay here), each with the client's subscription id."""
    def retag(message: dict[str, Any]) -> dict[str, Any] | None:
        method = message.get("method")
        if not isinstance(method, str) or method == ACKNOWLEDGED or "id" in message:
            return None
        kept = screened(message)
        if kept is None:
            return None
        params = kept.get("params")
        params = params if isinstance(params, dict) else {}
        meta = params.get("_meta")
        meta = meta if isinstance(meta, dict) else {}
        return {**kept, "params": {**params, "_meta": {**meta, SUBSCRIPTION_ID: subscription_id}}}
    return retag


class Subscriptions:
    def __init__(self, relay: Relay, aggregate: Aggregate, catalog: UpstreamCatalog,
                 recording: Recording, streams: ListChangedStreams,
                 active: Callable[[], Bundle | None]) -> None:
        self._relay, self._aggregate, self._catalog = relay, aggregate, catalog
        self._recording, self._streams, self._active = recording, streams, active

    async def listen(self, call: Call) -> web.StreamResponse:
        """The client's listen stream; its record says it was opened (it may last for hours)."""
        asked = call.params.get("notifications")
        asked = asked if isinstance(asked, dict) else {}
        wanted = {key: True for key in LIST_FILTERS if asked.get(key) is True}
        names = ([call.endpoint] if call.endpoint else
                 self._aggregate.visible(call.bundle, call.principal)[:MAX_FAN_IN])
        resources = self._resources(call, asked.get(RESOURCES), names)
        honoured = {**wanted, **({RESOURCES: [uri for uris in resources.values()
                                              for uri, _ in uris]} if RESOURCES in asked else {})}
        sources = [self._source(call, name, wanted, [own for _, own in resources.get(name, [])])
                   for name in names]
        self._recording.answered(call)
        await self._recording.settle(call, Outcome.ANSWERED)
        tag = {"_meta": {SUBSCRIPTION_ID: call.id}}
        ack = event({"jsonrpc": "2.0", "method": ACKNOWLEDGED,
                     "params": {**tag, "notifications": honoured}})
        changed = event({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                         "params": tag}) if wanted.get("toolsListChanged") else None
        upstream = sources[0] if call.endpoint else partial(merged, sources, UPSTREAM_OPEN_S)
        return await self._streams.stream(call.request, call.principal, call.endpoint, upstream,
                                          first=ack, notification=changed)

    def _resources(self, call: Call, asked: Any, names: list[str]
                   ) -> dict[str, list[tuple[str, str]]]:
        """Server -> (the URI as the client named it, as its upstream names it), for the
        resources the client subscribes to that the gateway can honour."""
        if not isinstance(asked, list):
            return {}
        out: dict[str, list[tuple[str, str]]] = {}
        for uri in asked:
            if not isinstance(uri, str):
                continue
            if call.endpoint:
                out.setdefault(call.endpoint, []).append((uri, uri))
            elif (split := split_resource_uri(uri)) is not None and split[0] in names:
                out.setdefault(split[0], []).append((uri, split[1]))
        return out

    def _source(self, call: Call, name: str, wanted: dict[str, bool], resources: list[str]
                ) -> Source:
        """``name``'s upstream listen stream, asked for what the client asked of it."""
        notifications: dict[str, Any] = dict(wanted)
        if resources:
            notifications[RESOURCES] = resources
        params: dict[str, Any] = {"notifications": notifications}
        if isinstance(call.params.get("_meta"), dict):
            params["_meta"] = call.params["_meta"]
        message = {"jsonrpc": "2.0", "id": call.id, "method": "subscriptions/listen",
                   "params": params}
        screened = tagged(screen(name, call.principal, self._active, self._catalog,
                                 not call.endpoint), call.id)
        return partial(self._relay.upstream_subscription, call, name,
                       call.bundle.payload.servers[name], message, screened)
