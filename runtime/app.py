"""The runtime node: wires bundle loading, identity, upstream credentials and the MCP proxy into
one aiohttp application, plus the operational endpoints (health, readiness, metrics, JWKS, RFC 9728
protected-resource metadata)."""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gwc.runtime import logs
from gwc.runtime.api.approval_pages import ApprovalPages
from gwc.runtime.api.catalog import catalog
from gwc.runtime.api.governance import GovernanceApi
from gwc.runtime.auth.browser import BrowserSessions
from gwc.runtime.auth.client_metadata import ClientMetadataFetcher
from gwc.runtime.auth.clients import ClientDirectory
from gwc.runtime.auth.context import AuthContext
from gwc.runtime.auth.server import AuthorizationServer, cors_for_browser_clients
from gwc.runtime.auth.store import store_for
from gwc.runtime.auth.tokens import AccessTokens
from gwc.runtime.bundle.keys import KeyFileError, load_public_key
from gwc.runtime.bundle.poller import BundlePoller
from gwc.runtime.bundle.read import Bundle, trusted_keys
from gwc.runtime.bundle.source import source_for
from gwc.runtime.bundle.store import BundleStore
from gwc.runtime.config import Config
from gwc.runtime.governance.state import State
from gwc.runtime.identity import Authenticator, AuthError
from gwc.runtime.mcp.endpoint import McpEndpoint
from gwc.runtime.mcp.list_changed import ListChangedStreams
from gwc.runtime.mcp.sealed_sessions import SessionSealer
from gwc.runtime.mcp.trail import Auditor, AuditTarget
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import (
    FORBIDDEN_ORIGIN,
    INVALID_REQUEST,
    UNAUTHENTICATED,
    UPSTREAM_UNAVAILABLE,
    RpcError,
)
from gwc.runtime.protocol.wire import error_response, origin_of
from gwc.runtime.request_keys import CLIENT_REQUEST_ID, REQUEST_ID, STARTED
from gwc.runtime.telemetry import start as start_tracing
from gwc.runtime.upstream.client import UpstreamClient
from gwc.runtime.upstream.credentials import UpstreamCredentials
from gwc.runtime.upstream.isolation import Connect, Upstreams, http_pool

if TYPE_CHECKING:
    from gwc.runtime.telemetry.spans import Tracing

log = logging.getLogger("gwc.runtime")
REQUEST_ID_HEADER = "X-Request-Id"
CLIENT_REQUEST_ID_HEADER = "X-Client-Request-Id"
STARTUP_WAIT_S = 5.0
# What a browser page may reach only from an allowed origin: the MCP endpoints and the APIs.
GUARDED_PREFIXES = ("/mcp", "/servers/", "/v1/")
BODY_TIMEOUT_S = web.AppKey("body_timeout_s", float)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ListenError(Exception):
    """A listener of the node's own (not the public one) could not be opened."""


class Gateway:
    """One node's state. Everything request-scoped reads ``store.active`` once, at the start."""

    def __init__(self, config: Config, signing_key: Ed25519PrivateKey, *,
                 connect: Connect = http_pool) -> None:
        """``connect`` opens each upstream's HTTP pool: the transport seam, where a test puts a
        pool of its own between the gateway and its upstreams."""
        self.config = config
        self.metrics = Metrics()
        self.store = BundleStore(trusted_keys(config.trust), config.state_dir)
        self.poller = BundlePoller(source_for(config.bundle), self.store, self.metrics,
                                   config.poll_interval_s)
        # other gateway keys, published and accepted while the fleet rotates its signing key
        try:
            self.accepted_keys = tuple(load_public_key(path) for path in config.accept_keys)
        except KeyFileError as exc:
            raise KeyFileError(f"--accept-key: {exc}") from None
        self.credentials = UpstreamCredentials(signing_key, config.public_url,
                                               self.accepted_keys)
        self.sealer = SessionSealer(list(config.session_keys), config.session_max_age_s)
        node = config.node_id or f"{socket.gethostname()}:{config.listen_port}"
        self.auditor = Auditor(node, self.metrics, config.audit_failure or "closed", signing_key)
        # OpenTelemetry, when the OTEL_* variables ask for it (config.tracing); else nothing of it
        self.tracing: Tracing | None = (start_tracing(config.tracing, node)
                                        if config.tracing is not None else None)
        if self.tracing is not None:  # the SDK's own lines (an export failed) as JSON lines too
            logs.adopt("opentelemetry")
        self.state = State.from_url(config.state, approval_ttl_s=config.approval_ttl_s,
                                    on_fallback=self._state_fallback)
        self.auth_store = store_for(self.state.redis)
        self.browser = BrowserSessions(self.auth_store, config.public_url)
        self.access_tokens = AccessTokens(signing_key, config.public_url)
        self.client_metadata = ClientMetadataFetcher(allow_private=config.dev_client_metadata,
                                                     allow_http=config.dev_client_metadata)
        self.authorization_server = AuthorizationServer(AuthContext(
            config.public_url, lambda: self.store.active, self.auth_store, self.browser,
            self.access_tokens, ClientDirectory(self.auth_store, self.client_metadata),
            config.idp_client_secret, self.auditor.write, self.auditor.record, self.state.limits,
            self.metrics))
        self._authenticator: Authenticator | None = None
        self._auth_bundle: Bundle | None = None
        self.list_changed = ListChangedStreams(lambda: self.store.active, self.metrics)
        self.mcp = McpEndpoint(self.caller, lambda: self.store.active, UpstreamClient(
            Upstreams(self.metrics, connect), self.credentials, self.metrics, self.tracing),
            self.sealer, self.state, self.auditor, self.metrics, self.list_changed,
            config.public_url, self.tracing)
        self.store.on_activate(self.list_changed.bundle_changed)
        self.store.on_activate(self.mcp.contracts.bundle_changed)
        self.store.on_activate(self._audit_settings)
        self._origins: frozenset[str] = frozenset({origin_of(config.public_url)})
        self.store.on_activate(self._origin_settings)
        self._poll_task: asyncio.Task | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.draining = False  # SIGTERM came (--drain-seconds): unready while still serving

    def authenticator(self, bundle: Bundle) -> Authenticator:
        """The authenticator for the bundle's identity settings (rebuilt only when they change)."""
        if bundle is not self._auth_bundle:
            identity = bundle.payload.gateway.identity
            # the gateway's own tokens count only while gateway.yaml has sign_in on
            signs_in = bundle.payload.gateway.sign_in is not None
            if (self._authenticator is None or self._authenticator.identity != identity
                    or (self._authenticator.gateway_tokens is not None) != signs_in):
                old, self._authenticator = self._authenticator, Authenticator(
                    identity, gateway_tokens=(self.access_tokens.verifier(self.accepted_keys)
                                    if signs_in else None))
                if old is not None:
                    asyncio.get_running_loop().create_task(old.close())
            self._auth_bundle = bundle
        assert self._authenticator is not None
        return self._authenticator

    def _state_fallback(self, reason: str) -> None:
        self.metrics.state_fallbacks.labels("rate_limits").inc()

    def _audit_settings(self, old: Bundle | None, new: Bundle) -> None:
        """Without --audit, the trail follows gateway.yaml, known once the first bundle is in. A
        later change of those settings needs a restart: a trail does not move mid-run."""
        settings = new.payload.gateway.audit
        if self.config.audit_failure is None:  # a policy choice: it follows gateway.yaml live
            self.auditor.failure = settings.on_failure
        if self.auditor.target is None:
            self.auditor.start(AuditTarget.of_bundle(settings), self.config.audit_max_bytes)
        elif (self.config.audit is None and old is not None
              and old.payload.gateway.audit != settings):
            log.warning("gateway.yaml audit settings changed; restart nodes to apply them")
        if old is None:
            self.auditor.ship(settings.store)  # the first bundle's store, --audit or not
        elif self.config.audit is not None and old.payload.gateway.audit.store != settings.store:
            log.warning("gateway.yaml audit.store changed; restart nodes to apply it")

    def allowed_origins(self) -> frozenset[str]:
        return self._origins

    def _origin_settings(self, old: Bundle | None, new: Bundle) -> None:
        """Browser origins allowed to call: gateway.yaml's, and the gateway's own (a page it
        serves itself is no rebinding)."""
        self._origins = frozenset((*new.payload.gateway.allowed_origins,
                                   origin_of(self.config.public_url)))

    def resource_metadata_url(self, path: str) -> str:
        return f"{self.config.public_url}/.well-known/oauth-protected-resource{path}"

    async def caller(self, request: web.Request) -> tuple[Bundle, Principal]:
        """The active bundle and the authenticated caller, or the RpcError to answer with."""
        bundle = self.store.active
        if bundle is None:
            raise RpcError(UPSTREAM_UNAVAILABLE, "the gateway has no valid bundle yet", 503)
        path = request.path
        try:
            return bundle, await self.authenticator(bundle).authenticate(
                request.headers.get("Authorization"),
                path if path == "/mcp" or path.startswith("/servers/") else None)
        except AuthError as exc:
            raise RpcError(UNAUTHENTICATED, str(exc), 401, headers={
                "WWW-Authenticate": self._challenge(request, exc)}) from None

    def _challenge(self, request: web.Request, exc: AuthError) -> str:
        """RFC 6750 §3: where to get a token, and ``error`` only when a token was sent (§3.1).
        The description is a fixed text per kind of failure: nothing of the token is echoed."""
        path = request.path  # the gateway's own APIs are the gateway's resource, not their path
        resource_path = path if path == "/mcp" or path.startswith("/servers/") else ""
        challenge = f'Bearer resource_metadata="{self.resource_metadata_url(resource_path)}"'
        if exc.token_sent:
            challenge += f', error="invalid_token", error_description="{exc.challenge}"'
        return challenge

    async def _load_and_poll(self, first_load: asyncio.Event) -> None:
        try:
            await self.poller.start()
        finally:
            first_load.set()
        await self.poller.run()

    async def _startup(self, app: web.Application) -> None:
        """Wait briefly for the first bundle, so a healthy node is ready when it listens; a slow
        or hanging store must not keep /healthz from answering, so after that it loads on."""
        if self.config.metrics_host is not None:
            await self._start_metrics_listener()
        if self.config.audit is not None:
            self.auditor.start(self.config.audit, self.config.audit_max_bytes)
        if self.tracing is not None:
            log.info("tracing", extra={"endpoint": self.tracing.endpoint})
        self.mcp.contracts.start()
        first_load = asyncio.Event()
        self._poll_task = asyncio.create_task(self._load_and_poll(first_load),
                                              name="gwc-bundle-poller")
        try:
            await asyncio.wait_for(first_load.wait(), STARTUP_WAIT_S)
        except TimeoutError:
            log.warning("bundle source is slow; listening " + (
                "and serving the persisted bundle" if self.store.active is not None
                else "but not ready until a bundle loads"))

    async def _start_metrics_listener(self) -> None:
        """/metrics on a port of its own (``--metrics-listen``), for a scraper inside the cluster
        to reach where the public load balancer does not."""
        assert self.config.metrics_host is not None
        metrics = web.Application()
        metrics.router.add_get("/metrics", self.metrics_endpoint)
        runner = web.AppRunner(metrics, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.metrics_host, self.config.metrics_port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(f"cannot listen for /metrics on {self.config.metrics_host}:"
                              f"{self.config.metrics_port}: {exc.strerror or exc}") from None
        self._metrics_runner = runner

    def begin_drain(self) -> None:
        """Stopping soon: /readyz says so, so load balancers stop sending new requests while the
        node still answers those that come."""
        self.draining = True
        log.info("draining: unready, serving until the node stops",
                 extra={"drain_s": self.config.drain_s})

    async def _shutdown(self, app: web.Application) -> None:
        await self.list_changed.close()

    async def _cleanup(self, app: web.Application) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
        await self.poller.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        await self.mcp.close()
        await self.state.aclose()
        self.auditor.close()
        if self._authenticator is not None:
            await self._authenticator.close()
        await self.authorization_server.close()
        await self.client_metadata.close()
        if self.tracing is not None:
            await self.tracing.close()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        bundle = self.store.active
        if self.draining:
            return web.json_response({"status": "draining: this node is stopping"}, status=503)
        if bundle is None:
            return web.json_response({"status": "no valid bundle"}, status=503)
        if self.auditor.refusing:
            return web.json_response({"status": "audit trail failing: calls are refused "
                                      "(audit failure mode: closed)"}, status=503)
        return web.json_response({"status": "ready", "serial": bundle.serial,
                                  "digest": bundle.digest})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def catalog(self, request: web.Request) -> web.Response:
        try:
            bundle, principal = await self.caller(request)
        except RpcError as exc:
            return error_response(exc)
        return web.json_response(catalog(bundle, principal, self.config.public_url))

    async def audit_head(self, request: web.Request) -> web.Response:
        """The node's signed audit head, for any authenticated caller: /v1/ is public, and the
        head tells how many records this node has written."""
        try:
            await self.caller(request)
        except RpcError as exc:
            return error_response(exc)
        return self.auditor.head()

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.credentials.jwks())

    async def protected_resource(self, request: web.Request) -> web.Response:
        """RFC 9728 metadata: which authorization server issues tokens for this resource."""
        bundle = self.store.active
        if bundle is None:
            return web.json_response({"error": "not ready"}, status=503)
        path = request.match_info.get("path", "")
        gateway = bundle.payload.gateway
        return web.json_response({
            "resource": f"{self.config.public_url}/{path}".rstrip("/"),
            "authorization_servers": [self.config.public_url if gateway.sign_in is not None
                                      else gateway.identity.issuer],
            "bearer_methods_supported": ["header"]})

    def app(self) -> web.Application:
        # keepalive_timeout is also how long a connection may take to send a request's headers:
        # aiohttp closes a connection still waiting for them when it runs out.
        middlewares = [request_ids, cors_for_browser_clients, origin_guard(self.allowed_origins),
                       body_within_timeout]
        if self.tracing is not None:  # innermost: a request's body is in, its era not yet known
            middlewares.append(traced_requests(self.tracing))
        app = web.Application(middlewares=middlewares,
                              client_max_size=self.config.max_body_bytes,
                              handler_args={"keepalive_timeout": self.config.header_timeout_s})
        app[BODY_TIMEOUT_S] = self.config.body_timeout_s
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        if self.config.metrics_host is None:
            app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/.well-known/jwks.json", self.jwks)
        app.router.add_get("/.well-known/oauth-protected-resource", self.protected_resource)
        app.router.add_get("/.well-known/oauth-protected-resource/{path:.*}",
                           self.protected_resource)
        self.authorization_server.add_routes(app)
        app.router.add_get("/v1/catalog", self.catalog)
        app.router.add_get("/v1/audit/head", self.audit_head)
        governance = GovernanceApi(self.caller, self.state, self.auditor.write, self.auditor.record)
        governance.add_routes(app)
        # Approval pages: a browser session, and the API's one way of deciding.
        ApprovalPages(self.browser, self.state.approvals, governance.decide,
                      lambda: self.store.active).add_routes(app)
        app.router.add_route("*", "/mcp", self.mcp.handle)
        app.router.add_route("*", "/servers/{server}/mcp", self.mcp.handle)
        app.on_response_prepare.append(_stamp_request_id)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app


# Request ids are unique, not secret: 128 random bits as 32 hex digits (a uuid4's form) from a
# generator seeded by the OS once. uuid.uuid4() asks the kernel for every id (8-9 us a call here).
_request_ids = random.Random()


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request the gateway's own id (a client's id is kept beside it, never in its
    place: records are filed under ids no caller chooses), and never let an exception become a
    trace."""
    request[REQUEST_ID] = request_id = f"{_request_ids.getrandbits(128):032x}"
    request[STARTED] = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request[CLIENT_REQUEST_ID] = (incoming if 0 < len(incoming) <= 128 and incoming.isprintable()
                                  else None)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        return web.json_response({"jsonrpc": "2.0", "id": None, "error": {
            "code": -32603, "message": "internal gateway error",
            "data": {"reason": "internal_error", "request_id": request_id}}}, status=500)


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, streamed or not, error or not, carries the gateway's request id, and the
    client's own id when it sent one."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    client_id = request.get(CLIENT_REQUEST_ID)
    if client_id is not None:
        response.headers[CLIENT_REQUEST_ID_HEADER] = client_id


@web.middleware
async def body_within_timeout(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read a request's body once, within the body timeout (handlers get the bytes aiohttp
    keeps): a client sending it slowly is answered 408 and its connection closed. A body already
    whole (the usual small POST, read with its headers) needs no timer: reading it cannot wait."""
    if request.can_read_body:
        if request.content.is_eof():
            await request.read()
        else:
            try:
                async with asyncio.timeout(request.app[BODY_TIMEOUT_S]):
                    await request.read()
            except TimeoutError:
                log.info("request body too slow", extra={"request_id": request[REQUEST_ID],
                                                         "path": request.path})
                response = error_response(RpcError(INVALID_REQUEST, "the request body was not "
                                                   "received in time", 408))
                response.force_close()
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()  # no lingering for the rest of a slow body
                return response
    return await handler(request)


def traced_requests(tracing: Tracing) -> Middleware:
    """With tracing on: a span for every request to an MCP endpoint, current while it is
    handled (its parent from the client's trace context, telemetry/spans.py)."""

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path != "/mcp" and not path.startswith("/servers/"):
            return await handler(request)
        span, token = tracing.request_span(request.method, path, request.headers,
                                           await request.read(), request[REQUEST_ID])
        try:
            response = await handler(request)
        except BaseException as exc:
            tracing.end_request(span, token, exc=exc)
            raise
        tracing.end_request(span, token, response.status)
        return response
    return traced


def origin_guard(allowed: Callable[[], frozenset[str]]) -> Middleware:
    """The MCP specification's defence against DNS rebinding: a request whose ``Origin`` is
    present and not allowed is refused with 403 before anything else looks at it. Requests
    without ``Origin`` (every non-browser client) are unaffected."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (origin is not None and request.path.startswith(GUARDED_PREFIXES)
                and origin not in allowed()):
            log.info("origin refused", extra={"request_id": request.get(REQUEST_ID),
                                              "path": request.path, "origin": origin[:200]})
            return error_response(RpcError(FORBIDDEN_ORIGIN, "requests from this Origin are "
                                           "not allowed (gateway.yaml allowed_origins)", 403))
        return await handler(request)
    return guard
