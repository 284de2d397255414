"""Client ID Metadata Documents fetched from real loopback servers (aiohttp's TestServer, raw asyncio
sockets for responses aiohttp would not send): one case per rule of ``client_metadata``. Nothing
leaves 127.0.0.1: names other than localhost go through the ``resolve`` seam, and the tests that
must not connect anywhere replace the loop's ``sock_connect`` with one that records and refuses."""
from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gwc.runtime.auth.client_metadata import (
    ClientMetadata,
    ClientMetadataError,
    ClientMetadataFetcher,
    _is_public,
    is_metadata_client_id,
)

PATH = "/client.json"
REDIRECT = "http://127.0.0.1:33418/callback"
DROP = object()  # a field value meaning "leave the field out"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Make = Callable[..., ClientMetadataFetcher]  # the make_fetcher fixture


def document(url: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"client_id": url, "client_name": "Example Client", "redirect_uris": [REDIRECT],
                           "token_endpoint_auth_method": "none", "grant_types": ["authorization_code"],
                           "response_types": ["code"], "scope": "openid"}
    doc.update(fields)
    return {key: value for key, value in doc.items() if value is not DROP}


@dataclass
class Site:
    """A loopback HTTP server whose routes a test sets, counting the requests each path gets."""
    base: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = PATH) -> str:
        return self.base + path

    def serve(self, path: str = PATH, doc: dict[str, Any] | None = None, *, body: bytes | None = None,
              status: int = 200, content_type: str = "application/json", **headers: str) -> str:
        url = self.url(path)
        payload = body if body is not None else orjson.dumps(doc if doc is not None else document(url))

        async def handler(_request: web.Request) -> web.StreamResponse:
            return web.Response(body=payload, status=status,
                                headers={"Content-Type": content_type, **headers})

        self.handlers[path] = handler
        return url

    def route(self, handler: Handler, path: str = PATH) -> str:
        self.handlers[path] = handler
        return self.url(path)


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async def dispatch(request: web.Request) -> web.StreamResponse:
        served.hits[request.path] += 1
        handler = served.handlers.get(request.path)
        return await handler(request) if handler else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", dispatch)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    served = Site(f"http://127.0.0.1:{server.port}")
    yield served
    served.stopping.set()
    await server.close()


@pytest.fixture
async def make_fetcher() -> AsyncIterator[Make]:
    """Fetchers for loopback servers (allow_private, allow_http) unless a test says otherwise."""
    made: list[ClientMetadataFetcher] = []

    def make(**options: Any) -> ClientMetadataFetcher:
        fetcher = ClientMetadataFetcher(**{"allow_private": True, "allow_http": True, "timeout_s": 2.0,
                                           **options})
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


@pytest.fixture
async def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses anything on this loop tries to connect to; every attempt is refused."""
    attempts: list[str] = []
    loop = asyncio.get_running_loop()

    async def refuse(_sock: Any, address: Any) -> None:
        attempts.append(address[0])
        raise ConnectionRefusedError("the test allows no connection")

    monkeypatch.setattr(loop, "sock_connect", refuse)
    return attempts


@pytest.fixture
async def raw_site() -> AsyncIterator[Callable[[Callable[[str], bytes]], Awaitable[str]]]:
    """A server that answers any request with the bytes response(url) gives, then closes."""
    servers: list[asyncio.Server] = []

    async def start(response: Callable[[str], bytes]) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(response(url))
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}{PATH}"
        return url

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def resolving(*addresses: str, calls: list[str] | None = None) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolve seam answering every name with addresses (recording the names asked)."""
    async def resolve(host: str, _port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return list(addresses)
    return resolve


async def refusal(fetcher: ClientMetadataFetcher, url: str) -> str:
    with pytest.raises(ClientMetadataError) as caught:
        await fetcher.fetch(url)
    return str(caught.value)


# --- a good document -------------------------------------------------------------------------------


async def test_a_good_document_is_parsed(site: Site, make_fetcher: Make) -> None:
    url = site.url()
    site.serve(doc=document(url, redirect_uris=[REDIRECT, "https://app.example/cb"],
                            client_uri="https://app.example", logo_uri="https://app.example/logo.png"))
    metadata = await make_fetcher().fetch(url)
    assert metadata == ClientMetadata(client_id=url, client_name="Example Client",
                                      redirect_uris=(REDIRECT, "https://app.example/cb"),
                                      client_uri="https://app.example", logo_uri="https://app.example/logo.png")


async def test_content_type_parameters_and_an_absent_auth_method_are_fine(
        site: Site, make_fetcher: Make) -> None:
    url = site.url()
    site.serve(doc=document(url, token_endpoint_auth_method=DROP),
               content_type="application/json; charset=utf-8")
    assert (await make_fetcher().fetch(url)).redirect_uris == (REDIRECT,)


async def test_the_name_falls_back_to_the_host_and_loses_control_characters(
        site: Site, make_fetcher: Make) -> None:
    fetcher = make_fetcher()
    url = site.serve(doc=document(site.url(), client_name=DROP))
    assert (await fetcher.fetch(url)).client_name == "127.0.0.1"
    other = site.url("/other.json")
    site.serve("/other.json", document(other, client_name="Good\u202e\x00 App\u200b\n"))
    assert (await fetcher.fetch(other)).client_name == "Good App"


async def test_display_uris_that_are_not_https_are_dropped(
        site: Site, make_fetcher: Make) -> None:
    url = site.url()
    site.serve(doc=document(url, client_uri="javascript:alert(1)", logo_uri="http://app.example/logo.png"))
    metadata = await make_fetcher().fetch(url)
    assert (metadata.client_uri, metadata.logo_uri) == (None, None)


# --- refused documents -----------------------------------------------------------------------------


async def test_a_client_id_other_than_the_url_is_refused(
        site: Site, make_fetcher: Make) -> None:
    url = site.url()
    site.serve(doc=document(url + "?x=1"))
    assert "client_id is not its own URL" in await refusal(make_fetcher(), url)


@pytest.mark.parametrize("redirect_uris", [
    DROP, [], "https://app.example/cb", [42], ["/relative/cb"], ["https://app.example/cb#frag"],
    ["custom-scheme:/cb"], ["https:///no-host"], ["https://app.example/a b"],
], ids=["missing", "empty", "not-a-list", "not-a-string", "relative", "fragment", "scheme", "no-host",
        "space"])
async def test_unusable_redirect_uris_are_refused(
        site: Site, make_fetcher: Make, redirect_uris: Any) -> None:
    url = site.url()
    site.serve(doc=document(url, redirect_uris=redirect_uris))
    assert "redirect_uris" in await refusal(make_fetcher(), url)


@pytest.mark.parametrize("fields", [
    {"token_endpoint_auth_method": "client_secret_basic"},
    {"token_endpoint_auth_method": "client_secret_post"},
    {"token_endpoint_auth_method": "private_key_jwt"},
    {"client_secret": "published-for-all-to-see"},
], ids=["basic", "post", "private-key-jwt", "secret"])
async def test_confidential_clients_are_refused(
        site: Site, make_fetcher: Make, fields: dict[str, str]) -> None:
    url = site.url()
    site.serve(doc=document(url, **fields))
    assert "only public clients" in await refusal(make_fetcher(), url)


@pytest.mark.parametrize(("name", "reason"), [(42, "not a string"), ("x" * 201, "over 200 characters")])
async def test_a_bad_client_name_is_refused(
        site: Site, make_fetcher: Make, name: Any, reason: str) -> None:
    url = site.url()
    site.serve(doc=document(url, client_name=name))
    assert reason in await refusal(make_fetcher(), url)


@pytest.mark.parametrize(("body", "content_type", "reason"), [
    (b"<html>SECRET-BODY</html>", "application/json", "not JSON"),
    (b"[1, 2]", "application/json", "not a JSON object"),
    (None, "text/html", "not application/json"),
    (None, "text/plain; charset=utf-8", "not application/json"),
], ids=["html", "array", "html-type", "text-type"])
async def test_what_is_not_a_json_object_is_refused(
        site: Site, make_fetcher: Make, body: bytes | None,
        content_type: str, reason: str) -> None:
    url = site.serve(body=body, content_type=content_type)
    message = await refusal(make_fetcher(), url)
    assert reason in message
    assert "SECRET" not in message  # nothing of the body reaches the error page


async def test_a_compressed_document_is_refused(
        site: Site, make_fetcher: Make) -> None:
    url = site.serve(**{"Content-Encoding": "gzip"})
    assert "compressed" in await refusal(make_fetcher(), url)


@pytest.mark.parametrize("status", [404, 500, 204])
async def test_a_status_other_than_200_is_refused(
        site: Site, make_fetcher: Make, status: int) -> None:
    url = site.serve(status=status)
    assert f"HTTP {status}" in await refusal(make_fetcher(), url)


async def test_a_redirect_is_not_followed(site: Site, make_fetcher: Make) -> None:
    target = site.url("/target.json")
    site.serve("/target.json", document(target))
    url = site.serve(status=302, Location=target)
    assert "redirects" in await refusal(make_fetcher(), url)
    assert site.hits == Counter({PATH: 1})


# --- size and time limits ----------------------------------------------------------------------------


def padded(url: str, size: int) -> bytes:
    """A valid document of size bytes (whitespace after the object), so only its size is wrong."""
    body = orjson.dumps(document(url))
    return body + b" " * (size - len(body))


async def test_a_document_under_the_limit_is_fine(site: Site, make_fetcher: Make) -> None:
    url = site.serve(body=padded(site.url(), 5120))
    assert (await make_fetcher().fetch(url)).client_id == url


async def test_a_large_document_is_refused(site: Site, make_fetcher: Make) -> None:
    url = site.serve(body=padded(site.url(), 5121))
    assert "over 5120 bytes" in await refusal(make_fetcher(), url)


async def test_an_endless_chunked_document_is_refused_for_its_size(
        site: Site, make_fetcher: Make) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)  # no Content-Length: chunked
        await response.write(orjson.dumps(document(site.url())))
        while not site.stopping.is_set():
            await response.write(b" " * 4096)
            await asyncio.sleep(0.001)
        return response

    url = site.route(endless)
    # stopped at the size limit, not at the time limit
    assert "over 1000 bytes" in await refusal(make_fetcher(max_bytes=1000, timeout_s=1.0), url)


async def test_a_document_without_content_length_is_refused_for_its_size(
        raw_site: Callable[[Callable[[str], bytes]], Awaitable[str]],
        make_fetcher: Make) -> None:
    url = await raw_site(lambda url: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Connection: close\r\n\r\n" + padded(url, 1_000_000))
    assert "over 5120 bytes" in await refusal(make_fetcher(), url)


async def test_a_document_longer_than_its_content_length_is_refused(
        raw_site: Callable[[Callable[[str], bytes]], Awaitable[str]],
        make_fetcher: Make, caplog: pytest.LogCaptureFixture) -> None:
    """Content-Length says 4000 and a megabyte follows: refused, and the log line (aiohttp's error
    quotes the bytes after the body) stays short."""
    url = await raw_site(lambda url: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 4000\r\n\r\n" + orjson.dumps(
                                         document(url, pad="x" * 1_000_000)))
    with caplog.at_level(logging.INFO, logger="gwc.auth"):
        await refusal(make_fetcher(), url)
    assert 0 < len(caplog.records[-1].detail) <= 300


async def test_a_slow_server_is_refused(site: Site, make_fetcher: Make) -> None:
    async def slow(_request: web.Request) -> web.StreamResponse:
        await site.stopping.wait()
        return web.Response(status=500)

    url = site.route(slow)
    started = time.monotonic()
    assert "took over 0.3 s" in await refusal(make_fetcher(timeout_s=0.3), url)
    assert time.monotonic() - started < 1.5


async def test_the_time_limit_covers_the_whole_fetch_not_each_read(
        site: Site, make_fetcher: Make) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for byte in orjson.dumps(document(site.url())):
            await response.write(bytes([byte]))
            await asyncio.sleep(0.05)
        return response

    url = site.route(drip)
    started = time.monotonic()
    assert "took over 0.3 s" in await refusal(make_fetcher(timeout_s=0.3), url)
    assert time.monotonic() - started < 1.5


# --- caching and sharing -------------------------------------------------------------------------------


async def test_a_document_is_cached(site: Site, make_fetcher: Make) -> None:
    url = site.serve()
    fetcher = make_fetcher()
    assert await fetcher.fetch(url) == await fetcher.fetch(url)
    assert site.hits[PATH] == 1


@pytest.mark.parametrize("cache_control", ["no-store", "private, no-cache"])
async def test_no_store_is_not_cached(
        site: Site, make_fetcher: Make, cache_control: str) -> None:
    url = site.serve(**{"Cache-Control": cache_control})
    fetcher = make_fetcher()
    await fetcher.fetch(url)
    await fetcher.fetch(url)
    assert site.hits[PATH] == 2


@pytest.mark.parametrize(("headers", "options", "hits"), [
    ({}, {"cache_ttl_s": 0.2}, 2),  # the default time to keep a document runs out
    ({"Cache-Control": "public, max-age=86400"}, {"max_cache_ttl_s": 0.2}, 2),  # max-age capped
    ({"Cache-Control": "max-age=0"}, {"cache_ttl_s": 0.1}, 1),  # a short max-age: a minute
], ids=["default-ttl", "long-max-age-cut", "short-max-age-raised"])
async def test_how_long_the_cache_keeps_a_document(site: Site, make_fetcher: Make, headers: dict,
                                                  options: dict, hits: int) -> None:
    url = site.serve(**headers)
    fetcher = make_fetcher(**options)
    await fetcher.fetch(url)
    await fetcher.fetch(url)
    await asyncio.sleep(0.3)
    await fetcher.fetch(url)
    assert site.hits[PATH] == hits


async def test_concurrent_fetches_share_one_request(
        site: Site, make_fetcher: Make) -> None:
    release = asyncio.Event()

    async def held(_request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(body=orjson.dumps(document(site.url())), content_type="application/json")

    url = site.route(held)
    fetcher = make_fetcher()
    fetches = [asyncio.create_task(fetcher.fetch(url)) for _ in range(5)]
    while not site.hits[PATH]:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    fetches[0].cancel()  # one caller giving up leaves the others their answer
    release.set()
    results = await asyncio.gather(*fetches[1:])
    assert all(result.client_id == url for result in results)
    assert site.hits[PATH] == 1


async def test_a_failure_is_cached_briefly(site: Site, make_fetcher: Make) -> None:
    url = site.serve(status=404)
    fetcher = make_fetcher(failure_ttl_s=0.3)
    assert "HTTP 404" in await refusal(fetcher, url)
    site.serve()
    assert "HTTP 404" in await refusal(fetcher, url)
    assert site.hits[PATH] == 1
    await asyncio.sleep(0.4)
    assert (await fetcher.fetch(url)).client_id == url
    assert site.hits[PATH] == 2


async def test_close_ends_the_session_and_a_later_fetch_opens_another(
        site: Site, make_fetcher: Make) -> None:
    url = site.serve(**{"Cache-Control": "no-store"})
    fetcher = make_fetcher()
    await fetcher.fetch(url)
    await fetcher.close()
    await fetcher.close()
    assert (await fetcher.fetch(url)).client_id == url


# --- where the gateway may connect -------------------------------------------------------------------


async def test_a_loopback_server_is_refused_as_private(
        site: Site, make_fetcher: Make) -> None:
    fetcher = make_fetcher(allow_private=False)
    url = site.serve()
    assert "not at a public address" in await refusal(fetcher, url)
    by_name = site.url().replace("127.0.0.1", "localhost")
    site.serve(doc=document(by_name))
    assert "not at a public address" in await refusal(fetcher, by_name)
    assert not site.hits


@pytest.mark.parametrize("address", [
    "10.0.0.5", "169.254.169.254", "::ffff:127.0.0.1", "fd00::1", "100.64.1.1", "192.168.1.1",
    "172.16.0.1", "0.0.0.0", "::1", "fe80::1",
])
async def test_a_name_resolving_to_a_private_address_is_refused_unconnected(
        make_fetcher: Make, connects: list[str], address: str) -> None:
    asked: list[str] = []
    fetcher = make_fetcher(allow_private=False, resolve=resolving(address, calls=asked))
    assert "not at a public address" in await refusal(fetcher, "https://metadata.example/client.json")
    assert asked == ["metadata.example"]
    assert connects == []


async def test_one_private_address_among_public_ones_is_enough_to_refuse(
        make_fetcher: Make, connects: list[str]) -> None:
    fetcher = make_fetcher(allow_private=False, resolve=resolving("93.184.215.14", "10.0.0.5"))
    assert "not at a public address" in await refusal(fetcher, "https://metadata.example/client.json")
    assert connects == []


@pytest.mark.parametrize("url", ["http://10.0.0.5/client.json", "http://[::1]:8080/client.json",
                                 "http://[::ffff:a9fe:a9fe]/client.json"])
async def test_a_private_address_in_the_url_is_refused_unresolved(
        make_fetcher: Make, connects: list[str], url: str) -> None:
    asked: list[str] = []
    fetcher = make_fetcher(allow_private=False, resolve=resolving("93.184.215.14", calls=asked))
    assert "not at a public address" in await refusal(fetcher, url)
    assert (asked, connects) == ([], [])


async def test_a_public_address_passes_and_is_the_one_connected_to(
        make_fetcher: Make, connects: list[str]) -> None:
    fetcher = make_fetcher(allow_private=False, resolve=resolving("93.184.215.14"))
    assert "could not be fetched" in await refusal(fetcher, "https://metadata.example/client.json")
    assert connects == ["93.184.215.14"]


async def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
        site: Site, make_fetcher: Make) -> None:
    """DNS rebinding: the first answer is checked; a later one (127.0.0.2, where nothing listens)
    must not be what the connection uses."""
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2"])

    async def rebinding(_host: str, _port: int) -> list[str]:
        return [next(answers)]

    url = site.url().replace("127.0.0.1", "metadata.example")
    site.serve(doc=document(url))
    metadata = await make_fetcher(resolve=rebinding).fetch(url)
    assert metadata.client_name == "Example Client"
    assert next(answers) == "127.0.0.2"  # resolved once only


async def test_http_is_refused_unless_allowed(site: Site, make_fetcher: Make) -> None:
    url = site.serve()
    assert "not a usable client metadata document URL" in await refusal(make_fetcher(allow_http=False), url)
    assert not site.hits


async def test_tls_is_verified(tmp_path: Path, make_fetcher: Make,
                               caplog: pytest.LogCaptureFixture) -> None:
    """A self-signed certificate for the very name asked for is still refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metadata.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("metadata.example")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    hits: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        return web.Response(body=orjson.dumps(document(str(request.url))), content_type="application/json")

    app = web.Application()
    app.router.add_get(PATH, answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=context)
    try:
        url = f"https://metadata.example:{server.port}{PATH}"
        with caplog.at_level(logging.INFO, logger="gwc.auth"):
            reason = await refusal(make_fetcher(resolve=resolving("127.0.0.1")), url)
        assert "could not be fetched" in reason
        assert "certificate" in caplog.records[-1].detail.lower()
        assert hits == []
    finally:
        await server.close()


async def test_refusals_are_logged_with_their_reason(
        site: Site, make_fetcher: Make, caplog: pytest.LogCaptureFixture) -> None:
    url = site.serve(status=404)
    with caplog.at_level(logging.INFO, logger="gwc.auth"):
        await refusal(make_fetcher(), url)
    [record] = [r for r in caplog.records if r.name == "gwc.auth"]
    assert (record.levelno, record.getMessage()) == (logging.INFO, "client metadata refused")
    assert (record.client_id, record.reason) == (url, "the client metadata URL answered HTTP 404")


# --- the URL's shape and the address check ---------------------------------------------------------


@pytest.mark.parametrize("client_id", [
    "https://app.example/client.json", "https://app.example/c", "https://app.example:8443/a/b/",
    "https://app.example/c?v=2", "https://[2001:db8::1]/c", "https://93.184.215.14/c",
    "HTTPS://App.Example/c", "https://app.example/a..b/.c",
])
def test_metadata_urls(client_id: str) -> None:
    assert is_metadata_client_id(client_id)


@pytest.mark.parametrize("client_id", [
    "", "app.example/client.json", "http://app.example/client.json", "ftp://app.example/c",
    "https://app.example", "https://app.example/", "https:///c", "https:/app.example/c",
    "https://app.example/c#", "https://app.example/c#frag", "https://user@app.example/c",
    "https://user:pw@app.example/c", "https://app.example/./c", "https://app.example/a/../c",
    "https://app.example/a/..", "https://app.example/a/%2e%2E/c", "https://app.example/a/%2e",
    "https://app.example:99999/c", "https://app.example:x/c", "https://2130706433/c",
    "https://127.1/c", "https://0x7f000001/c", "https://app.example\\@evil.example/c",
    "https://app.exämple/c", "https://app example/c", "https://app.example/a b",
    "https://app.example/c\n", "https://app.example/" + "x" * 2048, "client-42",
])
def test_not_metadata_urls(client_id: str) -> None:
    assert not is_metadata_client_id(client_id)


def test_http_only_when_allowed() -> None:
    assert is_metadata_client_id("http://localhost:8000/client.json", allow_http=True)
    assert not is_metadata_client_id("http://localhost:8000/client.json")
    assert not is_metadata_client_id("http://localhost:8000/", allow_http=True)


async def test_a_url_of_the_wrong_shape_is_refused_unfetched(
        make_fetcher: Make, connects: list[str]) -> None:
    asked: list[str] = []
    fetcher = make_fetcher(resolve=resolving("127.0.0.1", calls=asked))
    assert "not a usable" in await refusal(fetcher, "https://metadata.example/")
    assert (asked, connects) == ([], [])


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.31.255.255", "192.168.0.1", "169.254.169.254", "100.64.0.1",
    "100.127.255.254", "0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1", "::", "::1",
    "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.5", "::ffff:169.254.169.254", "64:ff9b::a00:5", "2002:a00:5::1", "::a00:5",
    "2001:db8::1", "not-an-address",
])
def test_private_addresses(address: str) -> None:
    assert not _is_public(address)


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
])
def test_public_addresses(address: str) -> None:
    assert _is_public(address)
