"""Where a client may be sent back to: exact matches, loopback on any port, and what an unvetted
client (a metadata document or a dynamic registration) may not register."""
from __future__ import annotations

import pytest

from gwc.runtime.auth.client_metadata import ClientMetadataFetcher
from gwc.runtime.auth.clients import ClientDirectory, redirect_matches, redirect_uri_problem
from gwc.runtime.auth.store import MemoryAuthStore
from gwc.runtime.bundle.format import SignIn


@pytest.mark.parametrize(("registered", "presented", "ok"), [
    ("https://app.example/cb", "https://app.example/cb", True),
    ("https://app.example/cb", "https://app.example/cb/", False),
    ("https://app.example/cb", "https://app.example:444/cb", False),  # only loopback: any port
    ("https://app.example/cb", "https://APP.example/cb", False),
    ("https://app.example/cb?x=1", "https://app.example/cb?x=2", False),
    ("http://127.0.0.1/callback", "http://127.0.0.1:53123/callback", True),
    ("http://127.0.0.1:1/callback", "http://127.0.0.1:53123/callback", True),
    ("http://[::1]/callback", "http://[::1]:53123/callback", True),
    ("http://localhost:8080/cb", "http://localhost:9999/cb", True),
    ("http://127.0.0.1/callback", "http://127.0.0.1:53123/other", False),
    ("http://127.0.0.1/callback", "http://localhost:53123/callback", False),  # another host
    ("http://127.0.0.1/callback", "http://127.0.0.1.evil.example:80/callback", False),
    ("http://127.0.0.1/callback", "http://evil@127.0.0.1:5/callback", False),
    ("http://127.0.0.1/callback", "http://127.0.0.1:5/callback#x", False),
    ("http://127.0.0.1/callback", "https://127.0.0.1:5/callback", False),
    ("cursor://anysphere.cursor/oauth", "cursor://anysphere.cursor/oauth", True),
    ("http://127.0.0.1:5555/callback", "http://127.0.0.1:5555\\evil.com/callback", False),
    ("http://127.0.0.1/callback", "http://127.0.0.1:abc/callback", False),
    ("http://127.0.0.1/callback", "http://[::1/callback", False),
    ("http://127.0.0.1/callback", "http://127.0.0.1:5/call\x0bback", False),
])
def test_redirects_match_exactly_except_the_loopback_port(registered, presented, ok) -> None:
    assert redirect_matches(registered, presented) is ok


@pytest.mark.parametrize(("uri", "hosts", "problem"), [
    ("https://app.example/cb", (), None),
    ("http://127.0.0.1/cb", (), None),
    ("http://localhost:3000/cb", (), None),
    ("cursor://anysphere.cursor/oauth", (), None),  # a native app's private-use scheme
    ("http://app.example/cb", (), "https, or http on a loopback"),
    ("https://app.example/cb#top", (), "fragment"),
    ("https://user@app.example/cb", (), "user information"),
    ("javascript:alert(1)", (), "not an absolute URI"),
    ("data:text/html,hi", (), "not an absolute URI"),
    ("/relative", (), "not an absolute URI"),
    ("https://app.example/" + "a" * 2000, (), "at most 2000"),
    (42, (), "a string"),
    ("https://vscode.dev/redirect", ("vscode.dev",), None),
    ("http://127.0.0.1/cb", ("vscode.dev",), None),
    ("https://app.example/cb", ("vscode.dev",), "only loopback or vscode.dev"),
    ("cursor://anysphere.cursor/oauth", ("vscode.dev",), "only loopback or https"),
])
def test_what_an_unvetted_client_may_register(uri, hosts, problem) -> None:
    found = redirect_uri_problem(uri, hosts)
    assert (found is None) if problem is None else (found is not None and problem in found)


async def test_a_registration_that_gateway_yaml_no_longer_allows_is_unknown() -> None:
    store = MemoryAuthStore()
    directory = ClientDirectory(store, ClientMetadataFetcher())
    open_settings = SignIn(idp_client_id="gw", idp_scopes=("openid",), access_token_ttl_s=900,
                           refresh_token_ttl_s=86_400, consent_ttl_s=0,
                           client_id_metadata_documents=True, dynamic_registration="open")
    answer = await directory.register({"redirect_uris": ["https://app.example/cb"]},
                                      open_settings)
    assert await directory.find(answer["client_id"], open_settings) is not None
    narrowed = open_settings.model_copy(update={"redirect_hosts": ("vscode.dev",)})
    assert await directory.find(answer["client_id"], narrowed) is None
    switched_off = open_settings.model_copy(update={"dynamic_registration": "off"})
    assert await directory.find(answer["client_id"], switched_off) is None
