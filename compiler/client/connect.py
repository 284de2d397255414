"""``gwc connect``: a stdio MCP server for a local client (Claude Desktop starts it from its config)
that is a Streamable HTTP client of the gateway's ``/mcp``, relaying every JSON-RPC message both
ways without interpreting MCP: requests, results, notifications, the gateway's own requests
(elicitation, sampling, roots) and the client's answers, and cancellation.

Each message from the client is one POST, in the protocol era the message itself speaks:

- 2025-era (``initialize`` first): the session the gateway gives at ``initialize``
  (``Mcp-Session-Id``) and the negotiated ``MCP-Protocol-Version`` go on every later POST; once the
  client says ``notifications/initialized``, a GET stream carries what the gateway sends on its own
  (``notifications/tools/list_changed``); ``notifications/cancelled`` is posted (the gateway passes
  it to the upstream call), then the request's POST is closed; stdin's end deletes the session.
- 2026-07-28 (a protocol version in the request's ``_meta``): no session and no GET stream; the
  ``MCP-Protocol-Version`` is the message's; ``notifications/cancelled`` is not posted, closing the
  request's POST is the cancellation.

In both, ``Mcp-Method`` and ``Mcp-Name`` mirror the body, so proxies that route on headers see
what the gateway checks. Answers come as JSON or SSE and are passed on as they arrive.

What the relay adds is staying up: the bearer token (``sign_in.py``: refreshed before it expires,
signing in in the browser on a 401); a gateway unreachable or answering 502/503/504 is tried again
with backoff, for ``retry_for_s``; a session the gateway no longer knows (404 on a request that
carried one) is opened again with the client's own ``initialize``, and the request carried on.
Whatever cannot be done is a JSON-RPC error to the client that says why, never a crash.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gwc.compiler.client.event_stream import EventStreamError, read_events
from gwc.compiler.client.sign_in import Bearer, GatewayBusy, SignInError

log = logging.getLogger("gwc.connect")
SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
NAMED_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# Requests that change nothing at the gateway or upstream: after a connection broke mid-answer,
# these are sent again; anything else (a tool call) may have happened, and the client is told so.
SAFE_TO_REPEAT = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "resources/list",
    "resources/templates/list", "prompts/list", "resources/read", "prompts/get",
    "completion/complete", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})
# The bridge's own errors; codes and data.reason as the gateway's (runtime/protocol/errors.py).
GATEWAY_UNREACHABLE = -32004  # "upstream unavailable": here, the gateway itself
UNAUTHENTICATED = -32005
SESSION_INVALID = -32006
INTERNAL_ERROR = -32603
INVALID_REQUEST = -32600
PARSE_ERROR = -32700
METHOD_NOT_FOUND = -32601
REASONS = {GATEWAY_UNREACHABLE: "gateway_unreachable", UNAUTHENTICATED: "unauthenticated",
           SESSION_INVALID: "session_invalid", INTERNAL_ERROR: "bridge_error",
           INVALID_REQUEST: "invalid_request", PARSE_ERROR: "parse_error"}
RETRY_FOR_S = 30.0
FIRST_DELAY_S, MAX_DELAY_S = 0.25, 5.0
LISTEN_MAX_DELAY_S = 30.0
LISTEN_READ_TIMEOUT_S = 60.0  # the gateway writes a keep-alive comment every 15 s
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 64 * 1024 * 1024

Send = Callable[[dict[str, Any]], Awaitable[None]]
_UNREAD: Any = object()  # a body not read yet


class BridgeError(Exception):
    """A request the bridge could not carry out: answered to the client as a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def body(self, request_id: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "error": {
            "code": self.code, "message": self.message, "data": {"reason": REASONS[self.code]}}}


class _Transient(Exception):
    """Worth another try after a pause: the gateway unreachable, or a proxy's 502/503/504."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s




@dataclass
class Exchange:
    """One message's way to the gateway and back."""

    message: dict[str, Any]
    deliver: Send  # where the gateway's messages go (the client, or the bridge itself)
    internal: bool = False  # the bridge's own (a re-initialize): not the client's handshake
    answered: bool = False
    cancelled: bool = False  # by the client's notifications/cancelled: nothing more is owed
    method: str | None = field(init=False)

    def __post_init__(self) -> None:
        method = self.message.get("method")
        self.method = method if isinstance(method, str) else None

    @property
    def is_request(self) -> bool:
        return self.method is not None and "id" in self.message


@dataclass(eq=False)
class InFlight:
    task: asyncio.Task[None]
    exchange: Exchange
    stateless: bool


def stateless_version(message: dict[str, Any]) -> str | None:
    """The 2026-07-28-style version a message names in ``params._meta``; None for 2025-era
    messages (as the gateway reads it: ``runtime/protocol/wire.py``)."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(META_VERSION) if isinstance(meta, dict) else None
    if not isinstance(version, str) or version in HANDSHAKE_PROTOCOL_VERSIONS:
        return None
    return version


def header_value(value: str) -> str:
    """A name as an HTTP header value: as is when plain printable ASCII, else
    ``=?base64?...?=`` (Streamable HTTP's "Value Encoding")."""
    if (value.isascii() and value.isprintable() and value == value.strip()
            and not (value.startswith("=?base64?") and value.endswith("?="))):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def id_key(request_id: Any) -> str:
    """Ids as the client typed them: "1" and 1 are different requests."""
    return json.dumps(request_id)


class Bridge:
    """The relay between one local client and the gateway's ``/mcp``."""

    def __init__(self, gateway: str, bearer: Bearer, http: aiohttp.ClientSession, send: Send, *,
                 retry_for_s: float = RETRY_FOR_S) -> None:
        self.gateway, self.endpoint = gateway, f"{gateway}/mcp"
        self.bearer, self.http, self.send = bearer, http, send
        self.retry_for_s = retry_for_s
        self.session_id: str | None = None
        self.version: str | None = None  # negotiated at initialize (2025 era)
        self.initialize: dict[str, Any] | None = None  # the client's own, to open a session again
        self._in_flight: dict[str, InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._reopen = asyncio.Lock()
        self._reopened = itertools.count(1)
        self._closing = False

    # --- from the client -------------------------------------------------------------------

    def from_client(self, line: bytes) -> None:
        """One line from stdin; the work runs in tasks, so reading goes on."""
        try:
            message = json.loads(line)
        except ValueError:
            self._spawn(self._reply(BridgeError(PARSE_ERROR, "not valid JSON"), None))
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self._spawn(self._reply(BridgeError(INVALID_REQUEST, "expected one JSON-RPC 2.0 "
                                                "message object"), None))
            return
        exchange = Exchange(message, self.send)
        if exchange.is_request:
            self._request(exchange)
        elif exchange.method == "notifications/cancelled":
            self._cancel(message)
        elif exchange.method is not None or "id" in message:  # a notification, or an answer
            self._spawn(self._one_way(exchange))
        else:
            self._spawn(self._reply(BridgeError(INVALID_REQUEST, "neither a request, a "
                                                "notification nor an answer"), None))

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _request(self, exchange: Exchange) -> None:
        key = id_key(exchange.message["id"])
        task = self._spawn(self._answer_request(exchange, key))
        self._in_flight[key] = InFlight(task, exchange,
                                        stateless_version(exchange.message) is not None)

    async def _answer_request(self, exchange: Exchange, key: str) -> None:
        entry = self._in_flight.get(key)  # recorded by _request before this task first runs
        try:
            await self._exchange(exchange)
        except asyncio.CancelledError:
            if exchange.cancelled:
                return  # the client gave up on it: nothing is owed
            raise
        except BridgeError as exc:
            await self._reply(exc, exchange.message["id"])
        except Exception as exc:  # never a crash: the client hears what went wrong
            log.exception("relaying a request failed")
            await self._reply(BridgeError(INTERNAL_ERROR, f"gwc connect failed: {exc}"),
                              exchange.message["id"])
        finally:
            if self._in_flight.get(key) is entry:
                self._in_flight.pop(key, None)

    async def _one_way(self, exchange: Exchange) -> None:
        """A notification or an answer to the gateway's request: nothing goes back."""
        try:
            await self._exchange(exchange)
        except BridgeError as exc:
            log.warning(f"{exchange.method or 'an answer'} not delivered to the gateway: "
                        f"{exc.message}")
            return
        except Exception:
            log.exception("relaying a notification failed")
            return
        if exchange.method == "notifications/initialized" and self.session_id:
            self._listen()

    def _cancel(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        entry = self._in_flight.get(id_key(request_id)) if request_id is not None else None
        if entry is not None:
            entry.exchange.cancelled = True  # whatever still comes for it stays here
            if entry.stateless:
                entry.task.cancel()  # closing its POST is how 2026-07-28 cancels
                return
        elif stateless_version(message) is not None or not self.session_id:
            return  # nothing in flight and no session to tell
        self._spawn(self._cancel_2025(Exchange(message, self.send), entry))

    async def _cancel_2025(self, notice: Exchange, entry: InFlight | None) -> None:
        """The notification first (the gateway passes it to the upstream call it names), then
        the request's POST closed: its answer is no longer wanted."""
        await self._one_way(notice)
        if entry is not None:
            entry.task.cancel()

    async def _reply(self, error: BridgeError, request_id: Any) -> None:
        await self.send(error.body(request_id))

    # --- to the gateway and back -----------------------------------------------------------

    def _headers(self, exchange: Exchange, session_id: str | None, token: str | None
                 ) -> dict[str, str]:
        message = exchange.message
        headers = {"Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        version = stateless_version(message) or (
            None if exchange.method == "initialize" else self.version)
        if version:
            headers[VERSION_HEADER] = version
        if session_id:
            headers[SESSION_HEADER] = session_id
        method = exchange.method
        if method is not None and method.isascii() and method.isprintable():
            headers["Mcp-Method"] = method
            params = message.get("params")
            name = params.get(NAMED_PARAM[method]) if (
                method in NAMED_PARAM and isinstance(params, dict)) else None
            if isinstance(name, str):
                headers["Mcp-Name"] = header_value(name)
        return headers

    async def _token(self) -> str | None:
        try:
            return await self.bearer.token()
        except GatewayBusy as exc:
            raise _Transient(str(exc)) from None
        except SignInError as exc:
            raise BridgeError(UNAUTHENTICATED, str(exc)) from None

    async def _refused(self, sent: str | None, challenge: str | None) -> str:
        try:
            return await self.bearer.refused(sent, self.endpoint, challenge)
        except GatewayBusy as exc:
            raise _Transient(str(exc)) from None
        except SignInError as exc:
            raise BridgeError(UNAUTHENTICATED, f"cannot sign in to {self.gateway}: {exc}") from None

    async def _exchange(self, exchange: Exchange) -> None:
        """POST the message, deliver what comes back; retry what is worth retrying."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for_s
        delay, told, auth_tries, reopened = FIRST_DELAY_S, False, 0, False
        body = json.dumps(exchange.message, ensure_ascii=False, separators=(",", ":")).encode()
        token: str | None = None
        have_token = False
        while True:
            try:
                if not have_token:
                    token, have_token = await self._token(), True
                stateless = stateless_version(exchange.message) is not None
                session_id = None if stateless or exchange.method == "initialize" \
                    else self.session_id
                async with self.http.post(self.endpoint, data=body, allow_redirects=False,
                                          headers=self._headers(exchange, session_id, token),
                                          timeout=aiohttp.ClientTimeout(
                                              total=None, sock_connect=CONNECT_TIMEOUT_S)
                                          ) as response:
                    if response.status == 401:
                        if auth_tries >= 2:
                            raise BridgeError(UNAUTHENTICATED, f"the gateway at {self.gateway} "
                                              "still refuses the token after signing in")
                        auth_tries += 1
                        token = await self._refused(token, response.headers.get(
                            "WWW-Authenticate"))
                        continue
                    lost, answer = await self._session_lost(response, exchange, session_id)
                    if lost:
                        if reopened:
                            raise BridgeError(SESSION_INVALID, f"the gateway at {self.gateway} "
                                              "does not accept a new session either")
                        reopened = True
                        assert session_id is not None
                        await self._reopen_session(session_id)
                        continue
                    await self._deliver(exchange, response, answer)
                if told:
                    log.warning(f"the gateway at {self.gateway} answers again")
                return
            except _Transient as exc:
                reason, wait = str(exc), exc.retry_after_s
            except aiohttp.ClientSSLError as exc:  # a certificate problem does not go away
                raise BridgeError(GATEWAY_UNREACHABLE, f"TLS with the gateway at {self.gateway} "
                                  f"failed: {exc}") from None
            except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
                reason, wait = f"{type(exc).__name__}: {exc}", None
            except (aiohttp.ClientError, OSError, TimeoutError, EventStreamError) as exc:
                # the connection broke after the request went out: it may have been carried out
                if exchange.answered or (exchange.is_request
                                         and exchange.method not in SAFE_TO_REPEAT):
                    raise BridgeError(GATEWAY_UNREACHABLE, f"the connection to the gateway at "
                                      f"{self.gateway} broke during {exchange.method} ("
                                      f"{type(exc).__name__}); it may have been carried out: "
                                      "check before repeating it") from None
                reason, wait = f"{type(exc).__name__}: {exc}", None
            now = loop.time()
            pause = min(max(wait or delay, delay), MAX_DELAY_S)
            if now + pause > deadline:
                raise BridgeError(GATEWAY_UNREACHABLE, f"the gateway at {self.gateway} is "
                                  f"unreachable; retrying failed after {self.retry_for_s:.0f} s "
                                  f"({reason})")
            if not told:
                log.warning(f"the gateway at {self.gateway} is unreachable ({reason}); trying "
                            f"again for up to {self.retry_for_s:.0f} s")
                told = True
            await asyncio.sleep(pause)
            delay = min(delay * 2, MAX_DELAY_S)

    async def _session_lost(self, response: aiohttp.ClientResponse, exchange: Exchange,
                            session_id: str | None) -> tuple[bool, Any]:
        """A 404 to a message that carried a session: the gateway does not know the session
        (unless the 404 is a JSON-RPC "method not found", which is about the method). The body,
        when it had to be read: ``_UNREAD`` when not."""
        if response.status != 404 or session_id is None:
            return False, _UNREAD
        answer = await self._json_body(response)
        error = answer.get("error") if isinstance(answer, dict) else None
        return not (isinstance(error, dict) and error.get("code") == METHOD_NOT_FOUND), answer

    @staticmethod
    async def _json_body(response: aiohttp.ClientResponse) -> Any:
        raw = await response.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise BridgeError(INTERNAL_ERROR, "the gateway's answer is too large to relay")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    async def _deliver(self, exchange: Exchange, response: aiohttp.ClientResponse,
                       answer: Any = _UNREAD) -> None:
        """The gateway's answer to the client (``answer``: the body, if already read)."""
        status = response.status
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if status in (502, 503, 504) and content_type != "application/json":
            raise _Transient(f"HTTP {status}", _retry_after(response))
        if not exchange.is_request:
            if status >= 300:  # a notification or answer the gateway did not take
                if answer is _UNREAD:
                    answer = await self._json_body(response)
                error = answer.get("error") if isinstance(answer, dict) else None
                detail = error.get("message") if isinstance(error, dict) else f"HTTP {status}"
                raise BridgeError(INTERNAL_ERROR, f"the gateway refused it: {detail}")
            return
        if status < 300 and content_type == "text/event-stream":
            await self._stream(exchange, response)
            return
        if status == 202:
            raise BridgeError(INTERNAL_ERROR, "the gateway accepted the request without "
                                              "answering it")
        if answer is _UNREAD:
            answer = await self._json_body(response)
        if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0":
            if status in (500, 503):
                raise _Transient(f"HTTP {status}", _retry_after(response))
            raise BridgeError(INTERNAL_ERROR, f"the gateway answered HTTP {status} without a "
                                              "JSON-RPC message")
        if answer.get("id") is None and "error" in answer:
            answer["id"] = exchange.message["id"]  # refused before its id was read
        await self._from_gateway(exchange, answer, response)

    async def _stream(self, exchange: Exchange, response: aiohttp.ClientResponse) -> None:
        """An SSE answer: each message as it comes, until the request's own response."""
        request_id = exchange.message["id"]
        async for message in messages_of(response.content):
            await self._from_gateway(exchange, message, response)
            if "method" not in message and message.get("id") == request_id:
                return  # the final response: the stream is done
        raise aiohttp.ClientPayloadError("the answer ended before the result")

    async def _from_gateway(self, exchange: Exchange, message: dict[str, Any],
                            response: aiohttp.ClientResponse) -> None:
        """One message of the gateway's answer, handed on; an ``initialize`` result is noted
        first, so the client's next message already goes in the session."""
        final = "method" not in message and message.get("id") == exchange.message.get("id")
        if final and exchange.method == "initialize" and isinstance(message.get("result"), dict):
            self._opened(exchange, message["result"], response.headers.get(SESSION_HEADER))
        if exchange.cancelled:
            return
        if final:
            exchange.answered = True
        await exchange.deliver(message)

    def _opened(self, exchange: Exchange, result: dict[str, Any], session_id: str | None) -> None:
        version = result.get("protocolVersion")
        if exchange.internal:
            if version != self.version:
                raise BridgeError(SESSION_INVALID, f"the gateway now speaks protocol {version}, "
                                  f"not {self.version}: restart the client")
        else:
            self.initialize = exchange.message
            self.version = version if isinstance(version, str) else None
        self.session_id = session_id

    async def _reopen_session(self, stale: str) -> None:
        """Open a new session with the client's own ``initialize`` (once for every request that
        found the old one gone), and tell the gateway the client is initialized."""
        async with self._reopen:
            if self.session_id != stale:
                return  # another request did it already
            if self.initialize is None:
                raise BridgeError(SESSION_INVALID, f"the gateway at {self.gateway} ended the "
                                  "session, and the client never initialized through gwc")
            log.warning(f"the gateway at {self.gateway} no longer knows the session; opening a "
                        "new one")
            answers: list[dict[str, Any]] = []

            async def keep(message: dict[str, Any]) -> None:
                answers.append(message)

            again = Exchange({**self.initialize, "id": f"gwc-connect-reinitialize-"
                                                        f"{next(self._reopened)}"}, keep, internal=True)
            await self._exchange(again)
            if not any(isinstance(a.get("result"), dict) for a in answers):
                error: dict[str, Any] = next(
                    (a["error"] for a in answers if isinstance(a.get("error"), dict)), {})
                raise BridgeError(SESSION_INVALID, f"the gateway refused a new session: "
                                  f"{error.get('message', 'no answer')}")
            await self._exchange(Exchange({"jsonrpc": "2.0", "method": "notifications/initialized"},
                                          keep, internal=True))

    # --- what the gateway sends on its own (2025 era) -------------------------------------

    def _listen(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.ensure_future(self._listen_loop())

    async def _listen_loop(self) -> None:
        """The GET stream, opened again whenever it ends, while the session lasts."""
        delay = 1.0
        token: str | None = None
        while not self._closing and self.session_id:
            session_id = self.session_id
            try:
                if token is None:
                    token = await self._token()
                headers = {"Accept": "text/event-stream", SESSION_HEADER: session_id}
                if self.version:
                    headers[VERSION_HEADER] = self.version
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                async with self.http.get(self.endpoint, headers=headers, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(
                                             total=None, sock_connect=CONNECT_TIMEOUT_S,
                                             sock_read=LISTEN_READ_TIMEOUT_S)) as response:
                    if response.status == 405:
                        log.info("the gateway offers no stream of its own messages")
                        return
                    if response.status == 401:
                        token = await self._refused(token, response.headers.get("WWW-Authenticate"))
                        continue
                    if response.status == 404:
                        await self._reopen_session(session_id)
                        continue
                    if response.status != 200:
                        raise _Transient(f"HTTP {response.status}")
                    delay = 1.0
                    async for message in messages_of(response.content):
                        await self.send(message)
            except asyncio.CancelledError:
                raise
            except BridgeError as exc:
                log.warning(f"the gateway's stream of its own messages: {exc.message}")
            except Exception as exc:
                log.debug(f"the gateway's stream ended: {type(exc).__name__} {exc}")
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_MAX_DELAY_S)

    # --- the end ---------------------------------------------------------------------------

    async def close(self) -> None:
        """stdin ended: stop everything and end the session at the gateway (best effort)."""
        self._closing = True
        work = [t for t in (self._listener, *self._tasks) if t is not None and not t.done()]
        for task in work:
            task.cancel()
        await asyncio.gather(*work, return_exceptions=True)
        if self.session_id:
            with contextlib.suppress(Exception):
                token = await asyncio.wait_for(self.bearer.token(), CLOSE_TIMEOUT_S)
                headers = {SESSION_HEADER: self.session_id}
                if self.version:
                    headers[VERSION_HEADER] = self.version
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                async with self.http.delete(self.endpoint, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=CLOSE_TIMEOUT_S)):
                    pass


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


async def run(gateway: str, token: str | None, *, allow_http: bool, open_browser: bool,
              retry_for_s: float, stdin: Any, stdout: Any) -> None:
    """Relay between stdin/stdout and the gateway until stdin ends. ``token`` (``GWC_TOKEN``)
    is used as is; without it, the stored sign-in, signing in in the browser when needed."""
    from importlib.metadata import version

    from gwc.compiler.client.sign_in import SignIn, StaticBearer, StoredBearer
    from gwc.compiler.client.stdio import StdioPeer
    from gwc.compiler.client.token_store import open_store

    peer = StdioPeer(stdin, stdout)
    peer.start()
    async with aiohttp.ClientSession(trust_env=True, headers={
            "User-Agent": f"gwc-connect/{version('gwc')}"}) as http:
        bearer: Bearer = StaticBearer(token) if token else StoredBearer(
            SignIn(gateway, open_store(), http, allow_http=allow_http, open_browser=open_browser),
            interactive=True)
        bridge = Bridge(gateway, bearer, http, peer.write, retry_for_s=retry_for_s)
        try:
            while (line := await peer.read()) is not None:
                bridge.from_client(line)
        finally:
            await bridge.close()


async def messages_of(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE body; events that are not JSON objects are skipped."""
    async for event in read_events(content):
        if event.event != "message":
            continue
        try:
            message = json.loads(event.data)
        except ValueError:
            log.warning("the gateway sent an event that is not JSON; skipped")
            continue
        if isinstance(message, dict):
            yield message
