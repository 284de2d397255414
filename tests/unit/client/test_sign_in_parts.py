"""The parts of signing in from the command line: reading a 401's challenge, where metadata
lives, the token store (file and keyring), the loopback receiver, and refreshing under the lock
every gwc process shares."""
from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import keyring
import pytest
from aiohttp import web
from keyring.backend import KeyringBackend
from keyring.backends import fail

from gwc.compiler.client.discovery import (
    DiscoveryError,
    bearer_params,
    check_url,
    metadata_urls,
    parse_challenges,
)
from gwc.compiler.client.loopback import LoopbackReceiver
from gwc.compiler.client.sign_in import SignIn, SignInError, StaticBearer, StoredBearer
from gwc.compiler.client.token_store import Credentials, FallbackStore, FileStore, KeyringStore

GATEWAY = "https://mcp.acme.example"


def credentials(**fields: Any) -> Credentials:
    return Credentials(**{"gateway": GATEWAY, "issuer": GATEWAY,
                          "token_endpoint": f"{GATEWAY}/oauth/token",
                          "revocation_endpoint": f"{GATEWAY}/oauth/revoke", "resource": GATEWAY,
                          "client_id": "c1", **fields})


# --- the challenge and the metadata ---------------------------------------------------------

def test_the_bearer_challenge_is_read_among_others() -> None:
    header = ('Basic realm="x", Bearer resource_metadata="https://gw/.well-known/'
              'oauth-protected-resource/mcp", error="invalid_token", '
              'error_description="token \\"expired\\", sorry"')
    assert [c.scheme for c in parse_challenges(header)] == ["Basic", "Bearer"]
    assert bearer_params(header) == {
        "resource_metadata": "https://gw/.well-known/oauth-protected-resource/mcp",
        "error": "invalid_token", "error_description": 'token "expired", sorry'}
    assert bearer_params('Bearer realm=gw, scope="a b"') == {"realm": "gw", "scope": "a b"}
    assert bearer_params(None) == {} and bearer_params("Basic realm=x") == {}


def test_metadata_urls_insert_the_issuers_path() -> None:
    assert metadata_urls("https://gw") == ["https://gw/.well-known/oauth-authorization-server",
                                           "https://gw/.well-known/openid-configuration"]
    assert metadata_urls("https://acme.example/gw")[:3] == [
        "https://acme.example/.well-known/oauth-authorization-server/gw",
        "https://acme.example/.well-known/openid-configuration/gw",
        "https://acme.example/gw/.well-known/openid-configuration"]


@pytest.mark.parametrize("url", ["http://gw.example/token", "ftp://gw/x", "/relative", None,
                                 "https://gw/x#frag"])
def test_no_secret_goes_to_a_url_in_clear_or_not_absolute(url: Any) -> None:
    with pytest.raises(DiscoveryError):
        check_url(url, "token_endpoint", allow_http=False)
    assert check_url("http://127.0.0.1:8080/t", "t", allow_http=False)


# --- the token store --------------------------------------------------------------------------

def test_the_file_is_for_its_owner_only_and_keeps_each_gateway(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "gwc")
    store.save(credentials(access_token="a"))
    store.save(credentials(gateway="https://other.example", access_token="b"))
    assert stat.S_IMODE((tmp_path / "gwc" / "sign-ins.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "gwc").stat().st_mode) == 0o700
    assert store.load(GATEWAY) == credentials(access_token="a")
    store.delete(GATEWAY)
    assert store.load(GATEWAY) is None and store.load("https://other.example") is not None
    assert [p.name for p in (tmp_path / "gwc").iterdir()] == ["sign-ins.json"]  # no temp left


def test_a_damaged_file_is_no_sign_in(tmp_path: Path) -> None:
    (tmp_path / "sign-ins.json").write_text("{not json")
    assert FileStore(tmp_path).load(GATEWAY) is None
    (tmp_path / "sign-ins.json").write_text(json.dumps({"gateways": {GATEWAY: {"x": 1}}}))
    assert FileStore(tmp_path).load(GATEWAY) is None


class MemoryKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}
        self.broken = broken

    def get_password(self, service: str, username: str) -> str | None:
        if self.broken:
            raise keyring.errors.KeyringError("locked")
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        if self.broken:
            raise keyring.errors.KeyringError("locked")
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self.entries:
            raise keyring.errors.PasswordDeleteError(username)
        del self.entries[(service, username)]


@pytest.fixture
def memory_keyring() -> Any:
    before = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(before)


def test_the_keyring_holds_one_entry_per_gateway_under_service_gwc(memory_keyring: MemoryKeyring,
                                                                  tmp_path: Path) -> None:
    store = FallbackStore(tmp_path)
    assert store.where == "the OS keyring"
    store.save(credentials(access_token="a"))
    assert list(memory_keyring.entries) == [("gwc", GATEWAY)]
    assert json.loads(memory_keyring.entries[("gwc", GATEWAY)])["access_token"] == "a"
    assert store.load(GATEWAY) == credentials(access_token="a")
    assert not (tmp_path / "sign-ins.json").exists()
    store.delete(GATEWAY)
    store.delete(GATEWAY)  # twice: nothing to delete is no error
    assert memory_keyring.entries == {} and KeyringStore(tmp_path).load(GATEWAY) is None


def test_no_usable_keyring_means_the_file(tmp_path: Path) -> None:
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        store = FallbackStore(tmp_path)
        assert store.where == str(tmp_path / "sign-ins.json")
        store.save(credentials())
        assert FileStore(tmp_path).load(GATEWAY) == credentials()
    finally:
        keyring.set_keyring(before)


def test_a_keyring_that_fails_falls_back_to_the_file(memory_keyring: MemoryKeyring,
                                                     tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    memory_keyring.broken = True
    store = FallbackStore(tmp_path)
    store.save(credentials(refresh_token="secret-refresh"))
    assert FileStore(tmp_path).load(GATEWAY) == credentials(refresh_token="secret-refresh")
    assert "the OS keyring failed" in caplog.text and "secret-refresh" not in caplog.text


def test_the_lock_is_exclusive_across_holders(tmp_path: Path) -> None:
    first, second = FileStore(tmp_path).locked(), FileStore(tmp_path).locked()
    order: list[str] = []
    first.acquire()

    async def other() -> None:
        await asyncio.to_thread(second.acquire)
        order.append("second")
        second.release()

    async def scenario() -> None:
        waiting = asyncio.ensure_future(other())
        await asyncio.sleep(0.2)
        order.append("first done")
        first.release()
        await waiting

    asyncio.run(scenario())
    assert order == ["first done", "second"]


# --- the loopback receiver --------------------------------------------------------------------

async def test_only_the_redirect_with_this_state_ends_the_wait() -> None:
    async with LoopbackReceiver("the-state", GATEWAY) as receiver, aiohttp.ClientSession() as http:
        assert receiver.redirect_uri.startswith("http://127.0.0.1:")
        async with http.get(receiver.redirect_uri, params={"code": "x", "state": "other"}) as r:
            assert r.status == 400 and "Not this sign-in" in await r.text()
        async with http.get(receiver.redirect_uri, params={"code": "c", "state": "the-state",
                                                           "iss": GATEWAY}) as r:
            assert r.status == 200 and "close this tab" in await r.text()
        assert (await receiver.wait(1)).params == {"code": "c", "state": "the-state",
                                                   "iss": GATEWAY}
        async with http.get(receiver.redirect_uri, params={"code": "d", "state": "the-state"}) as r:
            assert r.status == 400  # once only


async def test_waiting_ends_after_the_timeout() -> None:
    async with LoopbackReceiver("s", GATEWAY) as receiver:
        with pytest.raises(TimeoutError):
            await receiver.wait(0.05)


# --- refreshing -------------------------------------------------------------------------------

class TokenEndpoint:
    """A gateway's token endpoint: rotates refresh tokens, refuses unknown ones."""

    def __init__(self) -> None:
        self.live, self.refreshes, self.answer = "r0", 0, None

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.refreshes += 1
        if self.answer is not None:
            return web.json_response(*self.answer)
        if form["refresh_token"] != self.live or form["resource"] != GATEWAY:
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.live = f"r{self.refreshes}"
        return web.json_response({"access_token": f"a{self.refreshes}", "token_type": "Bearer",
                                  "expires_in": 900, "refresh_token": self.live})


@pytest.fixture
async def endpoint(aiohttp_server: Any) -> tuple[TokenEndpoint, str]:
    fake = TokenEndpoint()
    app = web.Application()
    app.router.add_post("/oauth/token", fake.token)
    server = await aiohttp_server(app)
    return fake, str(server.make_url("/oauth/token"))


async def test_a_token_about_to_expire_is_refreshed_and_the_new_refresh_token_kept(
        endpoint: tuple[TokenEndpoint, str], tmp_path: Path) -> None:
    fake, url = endpoint
    store = FileStore(tmp_path)
    store.save(credentials(token_endpoint=url, access_token="a0", refresh_token="r0",
                           expires_at=time.time() + 30))
    async with aiohttp.ClientSession() as http:
        assert await SignIn(GATEWAY, store, http).access_token() == "a1"
    assert store.load(GATEWAY).refresh_token == "r1" and fake.refreshes == 1


async def test_a_refresh_by_another_process_is_used_not_repeated(
        endpoint: tuple[TokenEndpoint, str], tmp_path: Path) -> None:
    """Two gwc processes loaded the same tokens; the second must not present the refresh token
    the first already used (the gateway would revoke the whole sign-in)."""
    fake, url = endpoint
    store = FileStore(tmp_path)
    store.save(credentials(token_endpoint=url, access_token="a0", refresh_token="r0",
                           expires_at=time.time() - 1))
    async with aiohttp.ClientSession() as http:
        mine, theirs = SignIn(GATEWAY, store, http), SignIn(GATEWAY, FileStore(tmp_path), http)
        await mine.stored()  # loaded before the other one refreshed
        assert await theirs.access_token() == "a1"
        assert await mine.access_token() == "a1"
    assert fake.refreshes == 1


async def test_invalid_grant_ends_the_sign_in_and_keeps_the_registration(
        endpoint: tuple[TokenEndpoint, str], tmp_path: Path) -> None:
    _, url = endpoint
    store = FileStore(tmp_path)
    store.save(credentials(token_endpoint=url, access_token="a0", refresh_token="stolen",
                           expires_at=time.time() - 1))
    async with aiohttp.ClientSession() as http:
        sign_in = SignIn(GATEWAY, store, http)
        assert await sign_in.access_token() is None
        with pytest.raises(SignInError, match=f"not signed in to {GATEWAY}: run `gwc login"):
            await StoredBearer(sign_in, interactive=False).token()
    assert store.load(GATEWAY) == credentials(token_endpoint=url)  # the client id stays


async def test_a_busy_gateway_keeps_the_tokens(endpoint: tuple[TokenEndpoint, str],
                                               tmp_path: Path) -> None:
    fake, url = endpoint
    fake.answer = ({"error": "temporarily_unavailable"}, 503)
    store = FileStore(tmp_path)
    kept = credentials(token_endpoint=url, access_token="a0", refresh_token="r0",
                       expires_at=time.time() + 30)
    store.save(kept)
    async with aiohttp.ClientSession() as http:
        assert await SignIn(GATEWAY, store, http).access_token() == "a0"  # good for 30 s more
    assert store.load(GATEWAY) == kept


async def test_a_static_token_is_never_refreshed() -> None:
    bearer = StaticBearer("t")
    assert await bearer.token() == "t"
    with pytest.raises(SignInError, match=r"refused the token in GWC_TOKEN \(token expired\)"):
        await bearer.refused("t", GATEWAY, 'Bearer error="invalid_token", '
                                           'error_description="token expired"')


# --- a whole sign-in against a scripted gateway -----------------------------------------------

class FakeAuthServer:
    """Protected-resource and authorization-server metadata, registration, and an authorize
    endpoint that redirects straight back with a code and ``iss``, like a gateway whose user
    already consented; the token endpoint checks PKCE."""

    def __init__(self) -> None:
        self.base = ""
        self.iss: str | None = None  # None: the real issuer
        self.resource: str | None = None
        self.authorization_servers: list[str] | None = None
        self.registered: list[dict[str, Any]] = []
        self.challenge = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/oauth-protected-resource/mcp", self.resource_metadata)
        app.router.add_get("/.well-known/oauth-authorization-server", self.metadata)
        app.router.add_post("/oauth/register", self.register)
        app.router.add_get("/oauth/authorize", self.authorize)
        app.router.add_post("/oauth/token", self.token)
        return app

    async def resource_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"resource": self.resource or f"{self.base}/mcp",
                                  "authorization_servers": self.authorization_servers
                                  or [self.base]})

    async def metadata(self, request: web.Request) -> web.Response:
        b = self.base
        return web.json_response({
            "issuer": b, "authorization_endpoint": f"{b}/oauth/authorize",
            "token_endpoint": f"{b}/oauth/token", "registration_endpoint": f"{b}/oauth/register",
            "revocation_endpoint": f"{b}/oauth/revoke", "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True})

    async def register(self, request: web.Request) -> web.Response:
        self.registered.append(await request.json())
        return web.json_response({"client_id": f"client-{len(self.registered)}"}, status=201)

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["code_challenge_method"] == "S256" and q["resource"] == self.base
        self.challenge = q["code_challenge"]
        location = (f"{q['redirect_uri']}?code=the-code&state={q['state']}"
                    f"&iss={self.iss or self.base}")
        raise web.HTTPFound(location)

    async def token(self, request: web.Request) -> web.Response:
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        form = await request.post()
        if create_s256_code_challenge(form["code_verifier"]) != self.challenge:
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response({"access_token": "at", "token_type": "Bearer",
                                  "expires_in": 900, "refresh_token": "rt"})


@pytest.fixture
async def auth_server(aiohttp_server: Any) -> FakeAuthServer:
    fake = FakeAuthServer()
    server = await aiohttp_server(fake.app())
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


async def sign_in_with(fake: FakeAuthServer, tmp_path: Path) -> str:
    """A sign-in whose "browser" follows the authorization URL to the loopback listener."""
    async with aiohttp.ClientSession() as http:
        browsing: list[asyncio.Future[None]] = []

        async def browse(url: str) -> None:
            async with http.get(url) as response:  # redirected on to the loopback listener
                await response.read()

        def show(line: str) -> None:
            if "in your browser: " in line:
                browsing.append(asyncio.ensure_future(browse(line.split("in your browser: ")[1])))

        sign_in = SignIn(fake.base, FileStore(tmp_path), http, open_browser=False, show=show,
                         timeout_s=5)
        challenge = f'Bearer resource_metadata="{fake.base}/.well-known/oauth-protected-resource/mcp"'
        return await sign_in.sign_in(f"{fake.base}/mcp", challenge)


async def test_a_whole_sign_in_registers_once_and_stores_the_tokens(auth_server: FakeAuthServer,
                                                                    tmp_path: Path) -> None:
    assert await sign_in_with(auth_server, tmp_path) == "at"
    stored = FileStore(tmp_path).load(auth_server.base)
    assert (stored.client_id, stored.refresh_token, stored.resource) == (
        "client-1", "rt", auth_server.base)
    registration, = auth_server.registered
    assert registration["redirect_uris"] == ["http://127.0.0.1/callback"]
    assert registration["token_endpoint_auth_method"] == "none"
    FileStore(tmp_path).save(stored.without_tokens())
    assert await sign_in_with(auth_server, tmp_path) == "at"
    assert len(auth_server.registered) == 1  # the registration is kept


async def test_an_answer_from_another_issuer_is_refused(auth_server: FakeAuthServer,
                                                        tmp_path: Path) -> None:
    auth_server.iss = "https://evil.example"  # RFC 9207: a mix-up
    with pytest.raises(SignInError, match=r"not from .* refused"):
        await sign_in_with(auth_server, tmp_path)
    assert FileStore(tmp_path).load(auth_server.base).access_token is None


@pytest.mark.parametrize(("field", "value", "message"), [
    ("resource", "https://other.example/mcp", "the gateway's public URL\\?"),
    ("authorization_servers", ["https://idp.acme.example"], "does not sign users in itself"),
])
async def test_discovery_refuses_what_is_not_this_gateways_own(
        auth_server: FakeAuthServer, tmp_path: Path, field: str, value: Any, message: str) -> None:
    setattr(auth_server, field, value)
    with pytest.raises(SignInError, match=message):
        await sign_in_with(auth_server, tmp_path)
    assert auth_server.registered == []
