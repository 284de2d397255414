"""Client ID Metadata Documents: a client_id that is the https URL of the client's own metadata.

MCP (2025-11-25) lets a client with no prior registration use such a URL as its client_id
(draft-ietf-oauth-client-id-metadata-document); the authorization server fetches the JSON document
there to learn the client's name and redirect URIs. Whoever starts an authorization request picks
the URL, so the fetch is a server-side request forgery risk: it must not reach the gateway's own
network (loopback, RFC 1918, link-local cloud metadata such as 169.254.169.254, unique-local, CGNAT,
the IPv6 forms of those), whatever the name resolves to now or a moment later. Hence: every resolved
address must be global; the connection goes only to the addresses that were checked (a resolver
hands them to the connector, so DNS rebinding between check and connect has no second lookup to
answer); no redirects; TLS verified against the host name; a limit on time and bytes; no cookies,
no environment proxies, no compressed bodies. A document cannot keep a secret, so only public
clients (token_endpoint_auth_method "none") are accepted. Results are cached, failures briefly too,
and concurrent fetches of one URL share one request, so a hostile URL cannot make the gateway hammer
a host.
"""
from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import re
import socket
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from cachetools import TLRUCache
from yarl import URL

log = logging.getLogger("gwc.auth")

MAX_URL_LENGTH = 2048
MAX_NAME_LENGTH = 200
MIN_MAX_AGE_S = 60.0  # a Cache-Control max-age below this is raised to it
_PRINTABLE = re.compile(r"[!-~]+")  # printable ASCII without spaces: what a URL may hold unencoded
_DNS_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

Resolve = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class ClientMetadata:
    client_id: str
    client_name: str  # client_name, else the URL's host
    redirect_uris: tuple[str, ...]
    client_uri: str | None = None
    logo_uri: str | None = None


class ClientMetadataError(Exception):
    """Why a client_id URL gives no usable client; str(exc) is safe to show on an error page (no body
    content echoed beyond a short reason)."""


def is_metadata_client_id(client_id: str, *, allow_http: bool = False) -> bool:
    """True when client_id looks like a metadata-document URL: https (or http when the caller allows),
    a host, a path other than '/', no fragment, no userinfo, no '.'/'..' path segments (the draft's
    rules); also printable ASCII of at most 2048 characters, and no number-like host that is not a
    canonical IP address (``https://2130706433/`` is 127.0.0.1 to getaddrinfo)."""
    parts = _split(client_id, ("https", "http") if allow_http else ("https",))
    if parts is None or len(client_id) > MAX_URL_LENGTH or parts.path in ("", "/"):
        return False
    host = str(parts.hostname)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        last_label = host.rstrip(".").rsplit(".", 1)[-1]
        if not _DNS_NAME.fullmatch(host) or last_label.isdigit() or last_label.startswith("0x"):
            return False
    return not any(segment in (".", "..") for segment in unquote(parts.path).split("/"))


def _split(uri: object, schemes: tuple[str, ...]) -> SplitResult | None:
    """The parts of an absolute URI of one of schemes with a host, no fragment and no userinfo, in
    printable ASCII; None for anything else."""
    if not isinstance(uri, str) or not _PRINTABLE.fullmatch(uri) or "#" in uri or "\\" in uri:
        return None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        return None
    if parts.scheme not in schemes or not parts.hostname or "@" in parts.netloc:
        return None
    return parts


def _is_public(address: str) -> bool:
    """Whether connecting to address stays off private networks; IPv6 forms that carry an IPv4
    address (mapped, NAT64, 6to4) are judged by that address, other IPv6 outside 2000::/3 refused."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip not in _GLOBAL_UNICAST:
            return False
    return ip.is_global and not ip.is_multicast


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# (host, addresses) checked by the fetch running in this task; read by the connector's resolver
_PINNED: contextvars.ContextVar[tuple[str, list[str]] | None] = contextvars.ContextVar(
    "gwc_client_metadata_pinned", default=None)


class _PinnedResolver(AbstractResolver):
    """Gives the connector the addresses the fetch checked and nothing else: no second lookup that a
    rebinding DNS server could answer with a private address."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        pinned = _PINNED.get()
        if pinned is None or pinned[0].rstrip(".") != host.lower().rstrip("."):
            raise OSError(f"no checked address for {host}")
        return [{"hostname": host, "host": address, "port": port,
                 "family": socket.AF_INET6 if ":" in address else socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV} for address in pinned[1]]

    async def close(self) -> None:
        return None


class ClientMetadataFetcher:
    """Fetches, checks and caches client metadata documents for the authorization server."""

    def __init__(self, *, allow_private: bool = False, allow_http: bool = False,
                 max_bytes: int = 5120, timeout_s: float = 5.0,
                 cache_ttl_s: float = 300.0, max_cache_ttl_s: float = 3600.0, cache_size: int = 1000,
                 resolve: Resolve | None = None, failure_ttl_s: float = 30.0) -> None:
        self._allow_private, self._allow_http = allow_private, allow_http
        self._max_bytes, self._timeout_s = max_bytes, timeout_s
        self._cache_ttl_s, self._max_cache_ttl_s = cache_ttl_s, max_cache_ttl_s
        self._failure_ttl_s = failure_ttl_s
        self._resolve: Resolve = resolve or _getaddrinfo
        # (metadata or the reason for a refusal, seconds to keep it)
        self._cache: TLRUCache[str, tuple[ClientMetadata | str, float]] = TLRUCache(
            cache_size, ttu=lambda _key, entry, now: now + entry[1])
        self._inflight: dict[str, asyncio.Task[ClientMetadata | str]] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def allow_http(self) -> bool:
        """Whether http client_id URLs count as metadata documents (development only)."""
        return self._allow_http

    async def fetch(self, client_id: str) -> ClientMetadata:
        """The client's metadata; raises ClientMetadataError with a reason fit for an error page."""
        if not is_metadata_client_id(client_id, allow_http=self._allow_http):
            log.info("client metadata refused", extra={"client_id": client_id[:MAX_URL_LENGTH],
                                                       "reason": "not a metadata URL"})
            raise ClientMetadataError("the client_id is not a usable client metadata document URL")
        cached = self._cache.get(client_id)
        if cached is not None:
            result = cached[0]
        else:
            task = self._inflight.get(client_id)
            if task is None:
                task = asyncio.create_task(self._load(client_id))
                self._inflight[client_id] = task
                task.add_done_callback(lambda _task: self._inflight.pop(client_id, None))
            result = await asyncio.shield(task)  # one caller giving up does not cancel the others
        if isinstance(result, str):
            raise ClientMetadataError(result)  # a new exception each time: no traceback piling up
        return result

    async def close(self) -> None:
        """Cancels the fetches under way and closes the HTTP session."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _load(self, url: str) -> ClientMetadata | str:
        """The metadata or the reason for a refusal, cached either way (failures briefly)."""
        result: ClientMetadata | str
        ttl, detail = self._failure_ttl_s, ""
        try:
            async with asyncio.timeout(self._timeout_s):
                result, ttl = await self._get(url)
        except ClientMetadataError as exc:
            result = str(exc)
        except TimeoutError:
            result = f"the client metadata document took over {self._timeout_s:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # aiohttp's messages can quote what the server sent: a bounded excerpt for the log
            result, detail = "the client metadata document could not be fetched", repr(exc)[:300]
        if isinstance(result, str):
            log.info("client metadata refused", extra={"client_id": url, "reason": result, "detail": detail})
        if ttl > 0:
            self._cache[url] = (result, ttl)
        return result

    async def _get(self, url: str) -> tuple[ClientMetadata, float]:
        target = URL(url, encoded=True)  # host and port as aiohttp will read them, whatever urlsplit saw
        if not target.raw_host or target.port is None:
            raise ClientMetadataError("the client_id is not a usable client metadata document URL")
        # in this task's own context, where the connector's resolver will look
        _PINNED.set((target.raw_host, await self._checked(target.raw_host, target.port)))
        async with self._session().get(target, allow_redirects=False, headers={
                "Accept": "application/json", "Accept-Encoding": "identity"}) as resp:
            if 300 <= resp.status < 400:
                raise ClientMetadataError("the client metadata URL redirects, and redirects are not followed")
            if resp.status != 200:
                raise ClientMetadataError(f"the client metadata URL answered HTTP {resp.status}")
            if resp.content_type != "application/json":
                raise ClientMetadataError("the client metadata document is not application/json")
            if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise ClientMetadataError("the client metadata document is compressed")
            if resp.content_length is not None and resp.content_length > self._max_bytes:
                raise ClientMetadataError(f"the client metadata document is over {self._max_bytes} bytes")
            body = bytearray()
            while len(body) <= self._max_bytes:  # whatever Content-Length said, or did not say
                chunk = await resp.content.read(self._max_bytes + 1 - len(body))
                if not chunk:
                    break
                body += chunk
            if len(body) > self._max_bytes:
                raise ClientMetadataError(f"the client metadata document is over {self._max_bytes} bytes")
            return _parse(url, bytes(body)), self._ttl(",".join(resp.headers.getall("Cache-Control", [])))

    async def _checked(self, host: str, port: int) -> list[str]:
        """The host's addresses, all of them public unless allow_private."""
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                addresses = list(dict.fromkeys(await self._resolve(host, port)))
            except OSError:
                addresses = []
        if not addresses:
            raise ClientMetadataError("the client metadata host does not resolve")
        if not self._allow_private and not all(_is_public(a) for a in addresses):
            raise ClientMetadataError("the client metadata host is not at a public address")
        return addresses

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=_PinnedResolver(), use_dns_cache=False),
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        return self._http

    def _ttl(self, cache_control: str) -> float:
        """Seconds to keep a document: its max-age within [60 s, max_cache_ttl_s], else cache_ttl_s."""
        directives = dict(d.strip().partition("=")[::2] for d in cache_control.lower().split(","))
        if "no-store" in directives or "no-cache" in directives:
            return 0.0
        max_age = directives.get("max-age", "").strip().strip('"')
        if max_age.isascii() and max_age.isdigit():
            return min(max(float(max_age), MIN_MAX_AGE_S), self._max_cache_ttl_s)
        return min(self._cache_ttl_s, self._max_cache_ttl_s)


def _parse(url: str, body: bytes) -> ClientMetadata:
    """The document's metadata, refusing what the authorization server could not safely use."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ClientMetadataError("the client metadata document is not JSON") from None
    if not isinstance(doc, dict):
        raise ClientMetadataError("the client metadata document is not a JSON object")
    if doc.get("client_id") != url:
        raise ClientMetadataError("the client metadata document's client_id is not its own URL")
    if doc.get("token_endpoint_auth_method") not in (None, "none") or "client_secret" in doc:
        raise ClientMetadataError('only public clients are supported (token_endpoint_auth_method "none")')
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(_split(u, ("http", "https")) for u in uris):
        raise ClientMetadataError("redirect_uris must be a non-empty list of absolute http(s) URIs "
                                  "without fragments")
    name = doc.get("client_name")
    if name is not None and not isinstance(name, str):
        raise ClientMetadataError("client_name is not a string")
    # control and format characters (bidi overrides, zero-width) could disguise the name on a consent page
    name = "".join(c for c in name or "" if unicodedata.category(c) not in ("Cc", "Cf")).strip()
    if len(name) > MAX_NAME_LENGTH:
        raise ClientMetadataError(f"client_name is over {MAX_NAME_LENGTH} characters")
    # display-only: dropped when not a plain https URL rather than refusing the client
    client_uri, logo_uri = (doc.get(k) for k in ("client_uri", "logo_uri"))
    return ClientMetadata(
        client_id=url, client_name=name or str(urlsplit(url).hostname), redirect_uris=tuple(uris),
        client_uri=client_uri if _split(client_uri, ("https",)) else None,
        logo_uri=logo_uri if _split(logo_uri, ("https",)) else None)

