"""One MCP request from the gateway to an upstream, under that upstream's isolation.

The era decides the wire: a 2026-07-28 (stateless) request goes as the client sent it, with the
gateway's credential instead of the client's; a 2025-era request goes on the gateway's own pooled
upstream session (``session_pool.py``), with the JSON-RPC id replaced by one unique on this
node, since that session is shared by the principal's calls from any number of client sessions; the
answer gets the client's id back (``Answer.restore``). A 404 for a forgotten upstream session opens
a new one and sends again, once.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import aiohttp
import orjson

from gwc.runtime.bundle.format import Server
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE, RpcError
from gwc.runtime.protocol.sse import messages
from gwc.runtime.upstream.credentials import CredentialError, UpstreamCredentials
from gwc.runtime.upstream.held_streams import HeldStream, HeldStreams, may_be_asked
from gwc.runtime.upstream.isolation import Upstream, Upstreams, UpstreamUnavailable, caller_of
from gwc.runtime.upstream.session_pool import (
    SessionKey,
    UpstreamSession,
    UpstreamSessions,
    initialize_params,
    session_key,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gwc.runtime.telemetry.spans import Tracing

log = logging.getLogger("gwc.upstream")
ACCEPT = "application/json, text/event-stream"


def json_headers() -> dict[str, str]:
    """The headers of a JSON-RPC POST the gateway makes itself (a fresh dict: an Outgoing's
    headers are completed in place)."""
    return {"Accept": ACCEPT, "Content-Type": "application/json"}


class ClientTerms(Protocol):
    """What a 2025-era client session settled that its upstream session must match (the gateway's
    sealed sessions have these, and so has the catalog's own)."""

    @property
    def protocol_version(self) -> str: ...

    @property
    def capabilities(self) -> dict[str, Any]: ...

    @property
    def created(self) -> int: ...

    @property
    def nonce(self) -> str: ...


# an upstream's open event stream (its bytes as they come), and the 2025-era upstream session it
# belongs to (if any)
Stream = tuple[AsyncIterator[bytes], UpstreamSession | None]
# what opening one gives: the upstream's answer (or a held stream's bytes), and the session
Opened = tuple[aiohttp.ClientResponse | AsyncIterator[bytes], UpstreamSession | None]


class UpstreamFailure(RpcError):
    """The upstream could not be reached or did not answer usably; ``kind`` labels the metric."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(code, message, 504 if code == UPSTREAM_TIMEOUT else 502)
        self.kind = kind


@dataclass(slots=True)
class Outgoing:
    """A request as it should reach the upstream."""

    method: str  # "" for a client's answer to an upstream's request
    message: dict[str, Any]
    session: ClientTerms | None  # the client's 2025-era session; None for the stateless era
    request_id: str  # the gateway's request id, passed on as X-Request-Id
    tool: str | None = None  # scope of the minted upstream token
    body: bytes | None = None  # the client's own bytes, when they can go unchanged (stateless)
    headers: dict[str, str] = field(default_factory=dict)  # client headers to pass on
    upstream_id: int | None = None  # the id it goes up with in a 2025 session (None: a new one)
    judges: bool = True  # whether its outcome counts toward the upstream's circuit breaker
    # a client's answer to an upstream's request goes to the upstream session that asked:
    # (its Mcp-Session-Id or None, its protocol version), wherever that session was opened
    to_session: tuple[str | None, str] | None = None


@dataclass(slots=True)
class Answer:
    response: aiohttp.ClientResponse
    client_id: Any = None
    upstream_id: Any = None  # set when the id was replaced on the way up
    broken: bool = False  # the upstream failed while its answer was being relayed
    upstream_s: float = 0.0  # from sending the request to the upstream's response headers
    session: UpstreamSession | None = None  # the 2025-era upstream session it went through

    @property
    def rewrites_id(self) -> bool:
        return self.upstream_id is not None

    def restore(self, message: dict[str, Any]) -> dict[str, Any]:
        """The client's id back on the upstream's response (not on its own requests)."""
        if message.get("id") == self.upstream_id and "method" not in message:
            message["id"] = self.client_id
        return message


def answer_to(body: bytes, content_type: str, request_id: Any) -> dict[str, Any]:
    """The JSON-RPC response to ``request_id`` in a JSON or SSE answer."""
    try:
        found = ([orjson.loads(body)] if not content_type.startswith("text/event-stream")
                 else list(messages(body)))
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        found = []
    for message in found:
        if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
            return message
    raise UpstreamFailure(UPSTREAM_UNAVAILABLE, "bad_answer", "the upstream's answer is not a "
                          "JSON-RPC response to the request")


class Exchange:
    """One request to an upstream and the relay of its answer (see
    :meth:`UpstreamClient.exchange`). A class, not a generator-based context manager: every
    forwarded call enters one, and a generator costs several microseconds more."""

    __slots__ = ("_answer", "_caller", "_client", "_name", "_out", "_principal", "_server",
                 "_slot", "_timeout_ms", "_upstream")

    def __init__(self, client: UpstreamClient, name: str, server: Server, principal: Principal,
                 out: Outgoing, timeout_ms: int) -> None:
        self._client, self._name, self._server, self._principal = client, name, server, principal
        self._out, self._timeout_ms = out, timeout_ms
        self._caller = caller_of(principal)  # whose breaker the outcome counts against

    async def __aenter__(self) -> Answer:
        client, server, out = self._client, self._server, self._out
        self._upstream = upstream = client._upstreams.get(self._name, server)
        timeout = _call_timeout(self._timeout_ms)
        try:
            headers = client._headers(server, self._principal, out)
            self._slot = upstream.slot(self._caller)
            await self._slot.__aenter__()
        except BaseException as exc:
            self._reraise(exc)
        started = time.perf_counter()
        try:
            answer = await client._send(upstream, self._principal, out, headers, timeout)
        except BaseException as exc:
            await self._done(exc)
            self._reraise(exc)
        answer.upstream_s = time.perf_counter() - started
        client._metrics.observe_upstream(self._name, answer.upstream_s)
        self._answer = answer
        return answer

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: object) -> None:
        answer = self._answer
        answer.response.release()
        await self._done(exc, answer)
        if exc is not None and (failure := self._failure(exc)) is not exc:
            raise failure from None  # translated; anything else goes on as it is

    async def _done(self, exc: BaseException | None, answer: Answer | None = None) -> None:
        """The upstream's verdict for its breakers (none when the client went away), then the
        slot given back."""
        healthy = (None if isinstance(exc, asyncio.CancelledError) else
                   exc is None and answer is not None and answer.response.status < 500
                   and not answer.broken)
        try:
            if healthy is not None and self._out.judges:
                self._upstream.record(healthy, self._caller)
        finally:
            await self._slot.__aexit__(None, None, None)

    def _reraise(self, exc: BaseException) -> NoReturn:
        failure = self._failure(exc)
        if failure is exc:
            raise exc
        raise failure from None

    def _failure(self, exc: BaseException) -> BaseException:
        """What the caller sees of a failure: an UpstreamFailure for what the upstream (or the
        way to it) did, anything else as it is."""
        if isinstance(exc, UpstreamUnavailable):
            return UpstreamFailure(UPSTREAM_UNAVAILABLE, "rejected", str(exc))
        if isinstance(exc, CredentialError):  # the operator learns which; the caller nothing
            log.error("upstream credential missing", extra={
                "server": self._name, "reason": str(exc), "request_id": self._out.request_id})
            return UpstreamFailure(UPSTREAM_UNAVAILABLE, "credential", "the gateway cannot "
                                   "authenticate to this upstream")
        if isinstance(exc, TimeoutError):
            return UpstreamFailure(UPSTREAM_TIMEOUT, "timeout", f"upstream did not answer "
                                   f"within {self._timeout_ms} ms")
        if isinstance(exc, aiohttp.ClientError):
            return UpstreamFailure(UPSTREAM_UNAVAILABLE, "connect", f"upstream unreachable or "
                                   f"failed ({exc.__class__.__name__})")
        return exc


class TracedExchange(Exchange):
    """An exchange in a CLIENT span of its own (a tracing node's), whose context the upstream
    gets in its ``traceparent`` header and in the message's ``params._meta``."""

    __slots__ = ("_span", "_tracing")

    def __init__(self, client: UpstreamClient, name: str, server: Server, principal: Principal,
                 out: Outgoing, timeout_ms: int) -> None:
        super().__init__(client, name, server, principal, out, timeout_ms)
        tracing = client._tracing
        assert tracing is not None
        self._tracing = tracing

    async def __aenter__(self) -> Answer:
        out, tracing = self._out, self._tracing
        self._span: Span = tracing.upstream_span(self._name, self._server.upstream, out.method,
                                                 out.tool)
        message = tracing.propagate(self._span, out.headers, out.message)
        if message is not out.message and out.to_session is None:  # _meta now has the node's
            out.message, out.body = message, None
        try:
            answer = await super().__aenter__()
        except BaseException as exc:
            tracing.end_upstream(self._span, None, exc)
            raise
        return answer

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: object) -> None:
        status = self._answer.response.status
        try:
            await super().__aexit__(exc_type, exc, traceback)
        except BaseException as failure:
            self._tracing.end_upstream(self._span, status, failure)
            raise
        self._tracing.end_upstream(self._span, status, exc)


class UpstreamClient:
    def __init__(self, upstreams: Upstreams, credentials: UpstreamCredentials,
                 metrics: Metrics, tracing: Tracing | None = None) -> None:
        self._upstreams = upstreams
        self._credentials = credentials
        self._metrics = metrics
        # a tracing node's requests go in spans (TracedExchange); others take no step for it
        self._tracing = tracing
        self._exchange = Exchange if tracing is None else TracedExchange
        self._sessions = UpstreamSessions()
        self._held = HeldStreams()
        self._ids = itertools.count(1)

    def new_id(self) -> int:
        """An id for a request in an upstream session, known before it is sent (to cancel it)."""
        return next(self._ids)

    def exchange(self, name: str, server: Server, principal: Principal, out: Outgoing,
                 timeout_ms: int) -> Exchange:
        """Send ``out`` and hold the upstream's slot while the caller relays the answer
        (``async with``). Failures before or while reading the answer surface as
        UpstreamFailure; they count against the principal's own breaker and, with other
        callers' failures, the upstream's."""
        return self._exchange(self, name, server, principal, out, timeout_ms)

    @asynccontextmanager
    async def listen(self, name: str, server: Server, principal: Principal, terms: ClientTerms,
                     request_id: str) -> AsyncIterator[Stream | None]:
        """The upstream's own stream of messages outside any call (the 2025 GET stream) in the
        caller's upstream session, or None when the upstream has none (or cannot be reached)."""
        upstream = self._upstreams.get(name, server)
        key = _pool_key(upstream, principal, terms)
        held: list[HeldStream] = []

        async def get() -> tuple[aiohttp.ClientResponse | AsyncIterator[bytes], UpstreamSession]:
            headers = self._headers(server, principal, Outgoing("", {}, terms, request_id))
            # the session is opened as a call would open it (its opening is shared with calls);
            # only the stream itself may stay silent for as long as it likes
            opening = _call_timeout(server.timeout_ms)
            session, _ = await self._sessions.get(
                key, lambda: self._open_session(upstream, headers, terms, opening, key))
            adopted = self._held.adopt(key, session)
            if adopted is not None:  # opened with the session: what it kept comes first
                held.append(adopted)
                return adopted.chunks(), session
            return await upstream.http.get(upstream.server.upstream,
                                           headers=_stream_headers(headers, session),
                                           timeout=_stream_timeout(server),
                                           allow_redirects=False), session
        try:
            async with self._stream(name, get) as opened:
                yield opened
        finally:
            for stream in held:
                stream.close()

    @asynccontextmanager
    async def subscribe(self, name: str, server: Server, principal: Principal, out: Outgoing
                        ) -> AsyncIterator[Stream | None]:
        """A 2026-07-28 ``subscriptions/listen`` stream from the upstream (the request ``out``,
        stateless), or None when the upstream does not keep one."""
        upstream = self._upstreams.get(name, server)

        async def post() -> tuple[aiohttp.ClientResponse, None]:
            headers = self._headers(server, principal, out)
            return await self._post(upstream, orjson.dumps(out.message), headers,
                                    _stream_timeout(server)), None
        async with self._stream(name, post) as opened:
            yield opened

    @staticmethod
    @asynccontextmanager
    async def _stream(name: str, open_stream: Callable[[], Awaitable[Opened]]
                      ) -> AsyncIterator[Stream | None]:
        """An upstream's event stream while the caller reads it. A stream is a connection, not
        a call: it holds no concurrency slot and judges nothing."""
        try:
            response, session = await open_stream()
        except (UpstreamFailure, CredentialError, TimeoutError, aiohttp.ClientError) as exc:
            log.info("upstream stream not opened", extra={"server": name, "reason": str(exc)})
            yield None
            return
        if not isinstance(response, aiohttp.ClientResponse):  # a held stream's bytes
            yield response, session
            return
        try:
            yield (response.content.iter_any(), session) if _is_stream(response) else None
        finally:
            response.close()

    def _headers(self, server: Server, principal: Principal, out: Outgoing) -> dict[str, str]:
        """The request's upstream headers, completed in place (an Outgoing serves one request)."""
        headers = out.headers
        headers["X-Request-Id"] = out.request_id
        key, value = self._credentials.header(server, principal, out.tool)
        headers[key] = value
        return headers

    async def _post(self, upstream: Upstream, body: bytes, headers: dict[str, str],
                    timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        return await upstream.http.post(upstream.server.upstream, data=body, headers=headers,
                                        timeout=timeout, allow_redirects=False)

    async def _send(self, upstream: Upstream, principal: Principal, out: Outgoing,
                    headers: dict[str, str], timeout: aiohttp.ClientTimeout) -> Answer:
        if out.to_session is not None:
            session_id, version = out.to_session
            headers = {**headers, "MCP-Protocol-Version": version}
            if session_id is not None:
                headers["Mcp-Session-Id"] = session_id
            return Answer(await self._post(upstream, orjson.dumps(out.message), headers, timeout))
        if out.session is None:
            body = out.body if out.body is not None else orjson.dumps(out.message)
            return Answer(await self._post(upstream, body, headers, timeout))
        terms = out.session
        key = _pool_key(upstream, principal, terms)
        message, answer = out.message, Answer(None, out.message.get("id"))  # type: ignore[arg-type]
        if out.method and "id" in message:
            answer.upstream_id = out.upstream_id if out.upstream_id is not None else next(self._ids)
            message = {**message, "id": answer.upstream_id}
        body = orjson.dumps(message)
        for attempt in (1, 2):
            session, opened = await self._sessions.get(
                key, lambda: self._open_session(upstream, headers, terms, timeout, key))
            if opened:
                self._metrics.upstream_sessions.labels(upstream.name, "new").inc()
            session_headers = {**headers, "MCP-Protocol-Version": session.protocol_version}
            if session.session_id is not None:
                session_headers["Mcp-Session-Id"] = session.session_id
            response = await self._post(upstream, body, session_headers, timeout)
            if response.status == 404 and session.session_id is not None and attempt == 1:
                response.release()  # the upstream forgot the session: open a new one, send again
                self._sessions.forget(key, session)
                self._metrics.upstream_sessions.labels(upstream.name, "expired").inc()
                continue
            answer.response, answer.session = response, session
            return answer
        raise AssertionError("unreachable")

    async def _open_session(self, upstream: Upstream, headers: dict[str, str], client: ClientTerms,
                            timeout: aiohttp.ClientTimeout, key: SessionKey) -> UpstreamSession:
        """``initialize`` then ``notifications/initialized``, as the gateway's own MCP client;
        then, for a client that can be asked things, the session's GET stream, held until the
        client's own adopts it (``held_streams.py``)."""
        base = {k: v for k, v in headers.items() if k not in ("Mcp-Method", "Mcp-Name")}
        base.update(json_headers())
        init_id = next(self._ids)
        init = {"jsonrpc": "2.0", "id": init_id, "method": "initialize",
                "params": initialize_params(client.protocol_version, client.capabilities)}
        async with await self._post(upstream, orjson.dumps(init), base, timeout) as response:
            body = await response.read()
            if response.status != 200:
                raise UpstreamFailure(UPSTREAM_UNAVAILABLE, "bad_answer", f"upstream refused "
                                      f"initialize (HTTP {response.status})")
            answer = answer_to(body, response.headers.get("Content-Type", ""), init_id)
            session_id = response.headers.get("Mcp-Session-Id")
        result = answer.get("result")
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if not isinstance(version, str):
            raise UpstreamFailure(UPSTREAM_UNAVAILABLE, "bad_answer", "upstream refused "
                                  "initialize: " + str(answer.get("error", {}).get("message", "")))
        notify = {**base, "MCP-Protocol-Version": version}
        if session_id is not None:
            notify["Mcp-Session-Id"] = session_id
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        (await self._post(upstream, orjson.dumps(initialized), notify, timeout)).release()
        capabilities = result.get("capabilities") if isinstance(result, dict) else None
        session = UpstreamSession(session_id, version,
                                  capabilities if isinstance(capabilities, dict) else {})
        if session_id is not None and may_be_asked(client.capabilities):
            await self._hold_stream(upstream, base, session, timeout, key)
        return session

    async def _hold_stream(self, upstream: Upstream, headers: dict[str, str],
                           session: UpstreamSession, timeout: aiohttp.ClientTimeout,
                           key: SessionKey) -> None:
        """Open the new session's GET stream before anything is sent on it; an upstream
        without one (405) or that fails to open it has none to hold."""
        try:
            response = await upstream.http.get(
                upstream.server.upstream, headers=_stream_headers(headers, session),
                timeout=aiohttp.ClientTimeout(total=None, connect=timeout.connect,
                                              sock_read=None),
                allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.info("upstream stream not opened", extra={"server": upstream.name,
                                                          "reason": str(exc)})
            return
        if _is_stream(response):
            self._held.hold(key, response, session)
        else:
            response.release()

    async def close(self) -> None:
        self._held.close()
        await self._upstreams.close()


def _is_stream(response: aiohttp.ClientResponse) -> bool:
    return (response.status == 200
            and response.headers.get("Content-Type", "").startswith("text/event-stream"))


def _stream_headers(headers: dict[str, str], session: UpstreamSession) -> dict[str, str]:
    """A GET stream's headers in ``session``."""
    out = {**{k: v for k, v in headers.items() if k not in ("Content-Type", "Mcp-Method",
                                                             "Mcp-Name")},
           "Accept": "text/event-stream", "MCP-Protocol-Version": session.protocol_version}
    if session.session_id is not None:
        out["Mcp-Session-Id"] = session.session_id
    return out


@functools.lru_cache(maxsize=256)
def _call_timeout(timeout_ms: int) -> aiohttp.ClientTimeout:
    """A call's timeouts: connecting within the call's time (10 s at most), then no silence longer
    than it. Immutable, so the calls with one timeout share one (instead of an object each)."""
    return aiohttp.ClientTimeout(total=None, connect=min(10.0, timeout_ms / 1000),
                                 sock_read=timeout_ms / 1000)


def _stream_timeout(server: Server) -> aiohttp.ClientTimeout:
    """A stream may stay silent for as long as it likes; connecting is bounded as for a call."""
    return aiohttp.ClientTimeout(total=None, connect=_call_timeout(server.timeout_ms).connect,
                                 sock_read=None)


def _pool_key(upstream: Upstream, principal: Principal, terms: ClientTerms) -> SessionKey:
    """Which pooled upstream session a client session's requests go through."""
    return session_key(upstream.name, upstream.server.upstream, principal, terms.protocol_version,
                       terms.capabilities, terms.created, terms.nonce)
