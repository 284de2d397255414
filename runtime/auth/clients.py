"""Which OAuth clients the gateway knows, and where each may be sent back to.

A client is found, in the order the MCP specification gives: pre-registered in gateway.yaml, a
Client ID Metadata Document (the ``client_id`` is an https URL the gateway fetches, see
``client_metadata``), or a Dynamic Client Registration (RFC 7591) kept in the auth store. All are
public clients: they prove possession with PKCE, never a secret.

Redirect URIs match exactly, except that an ``http`` redirect to a loopback address matches on any
port (RFC 8252 §7.3: a native app listens on whatever port it gets). ``sign_in.redirect_hosts``
restricts where clients from metadata documents and registration may redirect: loopback, or one of
those hosts. Redirects to private-use schemes (``cursor://…``) are accepted from registration only
where no host restriction applies; the consent page names them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from gwc.runtime.auth.client_metadata import ClientMetadataError, ClientMetadataFetcher, is_metadata_client_id
from gwc.runtime.auth.store import AuthStore
from gwc.runtime.auth.tokens import new_secret
from gwc.runtime.bundle.format import SignIn

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "[::1]", "localhost"})
FORBIDDEN_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "ftp",
                               "ws", "wss"})
# A registration lives a day until a user signs in with it, then 90 days from its last sign-in:
# registrations nobody uses go away, and a flood of them cannot fill the store.
UNUSED_REGISTRATION_TTL_S = 86_400
REGISTRATION_TTL_S = 90 * 86_400
MAX_REDIRECT_CHARS = 4000  # all of a registration's redirect URIs together
MAX_REDIRECT_URIS = 10
MAX_URI_CHARS = 2000
Origin = Literal["registered", "metadata_document", "dynamic"]


class RegistrationError(Exception):
    """RFC 7591 §3.2.2: ``error`` is ``invalid_redirect_uri`` or ``invalid_client_metadata``."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    origin: Origin

    def redirect_allowed(self, presented: str) -> bool:
        return any(redirect_matches(registered, presented) for registered in self.redirect_uris)


def host_of(netloc: str) -> str:
    """The host of a netloc, brackets kept for IPv6, without the port."""
    if netloc.startswith("["):
        return netloc[:netloc.index("]") + 1] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if ":" in netloc else netloc


def redirect_matches(registered: str, presented: str) -> bool:
    if registered == presented:
        return True
    if not presented.isprintable() or "\\" in presented:
        return False
    try:
        a, b = urlsplit(registered), urlsplit(presented)
        port = b.port  # a number, or none at all: nothing else may follow the host
    except ValueError:
        return False
    host = host_of(a.netloc).lower()
    return (a.scheme == b.scheme == "http" and host in LOOPBACK_HOSTS
            and b.netloc.lower() in (host, f"{host}:{port}")
            and (a.path or "/") == (b.path or "/") and a.query == b.query and not b.fragment)


def redirect_uri_problem(uri: Any, redirect_hosts: tuple[str, ...]) -> str | None:
    """Why ``uri`` cannot be a redirect URI of an unvetted client, or None."""
    if (not isinstance(uri, str) or not uri or len(uri) > MAX_URI_CHARS or not uri.isprintable()
            or "\\" in uri):
        return "a redirect URI must be a string of at most 2000 printable characters"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return f"redirect URI {uri!r} is not a valid URI"
    if parts.fragment or "#" in uri:
        return f"redirect URI {uri!r} has a fragment"
    if "@" in parts.netloc:
        return f"redirect URI {uri!r} carries user information"
    loopback = parts.scheme == "http" and host_of(parts.netloc).lower() in LOOPBACK_HOSTS
    if parts.scheme == "https" and parts.hostname:
        if redirect_hosts and parts.hostname.lower() not in redirect_hosts:
            return (f"redirect URI {uri!r}: this gateway accepts only loopback or "
                    f"{', '.join(redirect_hosts)}")
        return None
    if loopback:
        return None
    if parts.scheme in ("http", "https"):
        return f"redirect URI {uri!r} must be https, or http on a loopback address"
    if not parts.scheme or parts.scheme in FORBIDDEN_SCHEMES:
        return f"redirect URI {uri!r} is not an absolute URI this gateway redirects to"
    if redirect_hosts:
        return f"redirect URI {uri!r}: this gateway accepts only loopback or https redirects"
    return None  # a private-use scheme of a native app (RFC 8252 §7.1)


class ClientDirectory:
    def __init__(self, store: AuthStore, fetcher: ClientMetadataFetcher) -> None:
        self._store, self._fetcher = store, fetcher

    async def find(self, client_id: str, settings: SignIn) -> Client | None:
        """The client, or None when nobody registered it. Raises ClientMetadataError when its
        metadata document cannot be used (the message says why)."""
        for registered in settings.clients:
            if registered.client_id == client_id:
                return Client(client_id, registered.client_name, registered.redirect_uris,
                              "registered")
        if is_metadata_client_id(client_id, allow_http=self._fetcher.allow_http):
            if not settings.client_id_metadata_documents:
                return None
            document = await self._fetcher.fetch(client_id)
            for uri in document.redirect_uris:
                problem = redirect_uri_problem(uri, settings.redirect_hosts)
                if problem is not None:
                    raise ClientMetadataError(problem)
            return Client(client_id, document.client_name, document.redirect_uris,
                          "metadata_document")
        if len(client_id) > 128 or settings.dynamic_registration == "off":
            return None
        record = await self._store.get("client", client_id)
        if record is None or any(redirect_uri_problem(uri, settings.redirect_hosts)
                                 for uri in record["redirect_uris"]):
            return None  # gateway.yaml's redirect_hosts apply to earlier registrations too
        return Client(client_id, record["client_name"], tuple(record["redirect_uris"]), "dynamic")

    async def signed_in_with(self, client_id: str, origin: str) -> None:
        """A user signed in with a registered client: it stays registered for a while yet."""
        if origin == "dynamic":
            record = await self._store.get("client", client_id)
            if record is not None:
                await self._store.put("client", client_id, record, REGISTRATION_TTL_S)

    async def register(self, body: Any, settings: SignIn) -> dict[str, Any]:
        """RFC 7591 registration of a public client; the answer's metadata, or RegistrationError."""
        if not isinstance(body, dict):
            raise RegistrationError("invalid_client_metadata", "the body must be a JSON object")
        uris = body.get("redirect_uris")
        if (not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS
                or sum(len(u) if isinstance(u, str) else MAX_REDIRECT_CHARS for u in uris)
                > MAX_REDIRECT_CHARS):
            raise RegistrationError("invalid_redirect_uri", "redirect_uris must list 1 to "
                                    f"{MAX_REDIRECT_URIS} redirect URIs of at most "
                                    f"{MAX_REDIRECT_CHARS} characters together")
        for uri in uris:
            problem = redirect_uri_problem(uri, settings.redirect_hosts)
            if problem is not None:
                raise RegistrationError("invalid_redirect_uri", problem)
        grants = body.get("grant_types", ["authorization_code"])
        if not isinstance(grants, list) or not all(
                grant in ("authorization_code", "refresh_token") for grant in grants):
            raise RegistrationError("invalid_client_metadata", "grant_types may be "
                                    "authorization_code and refresh_token only")
        if body.get("response_types", ["code"]) != ["code"]:
            raise RegistrationError("invalid_client_metadata", "response_types must be [\"code\"]")
        name = body.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise RegistrationError("invalid_client_metadata", "client_name must be a string of "
                                    "at most 200 characters")
        shown_name = "".join(c for c in (name or "") if c.isprintable()).strip()
        client_id = "gwc-" + new_secret()[:22]
        record = {"client_name": shown_name or urlsplit(uris[0]).netloc or uris[0],
                  "redirect_uris": uris}
        await self._store.put("client", client_id, record, UNUSED_REGISTRATION_TTL_S)
        return {"client_id": client_id, "client_id_issued_at": int(time.time()),
                "client_name": record["client_name"], "redirect_uris": uris,
                "grant_types": grants, "response_types": ["code"],
                "token_endpoint_auth_method": "none"}
