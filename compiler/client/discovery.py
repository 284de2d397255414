"""Finding where to sign in to a gateway, the way MCP clients do: the ``resource_metadata`` of a
401's ``WWW-Authenticate`` challenge (RFC 9728), then the authorization server's own metadata (RFC
8414). ``gwc`` signs in only through the gateway's own authorization server (``sign_in`` in
gateway.yaml): a gateway whose metadata names the company IdP gets a message saying to use
``GWC_TOKEN`` instead. Every URL it will send a secret to must be the gateway's own origin.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gwc.compiler.build.hosts import is_loopback

TIMEOUT_S = 15.0
MAX_DOCUMENT_BYTES = 64 * 1024

# RFC 9110 §11: auth-param = token BWS "=" BWS ( token / quoted-string )
_PARAM = re.compile(r'\s*,?\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*'
                    r'("(?:[^"\\]|\\.)*"|[!#$%&\'*+.^_`|~0-9A-Za-z/=-]+)')


class DiscoveryError(Exception):
    """The gateway cannot be signed in to from here; the message says why and what to do."""


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


@dataclass(frozen=True)
class AuthServer:
    """What a sign-in needs to know of the gateway's authorization server."""

    issuer: str
    resource: str  # the gateway itself (its public URL): one token for /mcp and for /v1/
    authorization_endpoint: str
    token_endpoint: str
    registration_endpoint: str | None
    revocation_endpoint: str | None
    iss_in_response: bool  # RFC 9207: the redirect carries iss, and it must be checked


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` value (several may share one header)."""
    found: list[Challenge] = []
    rest = header.strip()
    while rest:
        scheme_match = re.match(r"\s*,?\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)", rest)
        if scheme_match is None:
            break
        scheme, rest = scheme_match.group(1), rest[scheme_match.end():]
        params: dict[str, str] = {}
        while True:
            match = _PARAM.match(rest)
            if match is None:
                break
            value = match.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params.setdefault(match.group(1).lower(), value)
            rest = rest[match.end():]
        found.append(Challenge(scheme, params))
        if not params and not rest.strip(" ,"):
            break
    return found


def bearer_params(header: str | None) -> dict[str, str]:
    """The parameters of the Bearer challenge (empty when there is none)."""
    for challenge in parse_challenges(header or ""):
        if challenge.scheme.lower() == "bearer":
            return challenge.params
    return {}


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def check_url(url: Any, what: str, allow_http: bool) -> str:
    """An absolute https URL (or http on loopback, or with ``allow_http``)."""
    if not isinstance(url, str):
        raise DiscoveryError(f"the gateway's metadata has no usable {what}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise DiscoveryError(f"the gateway's {what} {url!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        raise DiscoveryError(f"the gateway's {what} {url!r} is plain http: tokens would travel "
                             "in clear text")
    return url


def metadata_urls(issuer: str) -> list[str]:
    """Where RFC 8414 (then OpenID discovery) puts an issuer's metadata, in the order the MCP
    authorization spec tries them: path insertion first, then the path-appended OIDC form."""
    parts = urlsplit(issuer)
    base, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    if not path:
        return [f"{base}/.well-known/oauth-authorization-server",
                f"{base}/.well-known/openid-configuration"]
    return [f"{base}/.well-known/oauth-authorization-server{path}",
            f"{base}/.well-known/openid-configuration{path}",
            f"{base}{path}/.well-known/openid-configuration",
            f"{base}{path}/.well-known/oauth-authorization-server"]


async def get_json(session: Any, url: str) -> tuple[int, Any]:
    """(status, JSON body or None) of a GET; network failures raise aiohttp's errors."""
    import aiohttp

    async with session.get(url, headers={"Accept": "application/json"}, allow_redirects=False,
                           timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as response:
        body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            return response.status, None
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, None


async def discover(session: Any, gateway: str, requested: str, challenge: str | None,
                   allow_http: bool) -> AuthServer:
    """The gateway's authorization server, from the 401 ``challenge`` answered for the URL
    ``requested`` (``<gateway>/mcp``, or ``<gateway>`` for its APIs)."""
    params = bearer_params(challenge)
    metadata_url = params.get("resource_metadata")
    if not metadata_url:
        raise DiscoveryError(f"the gateway at {gateway} asked for a token without saying where "
                             "to get one (no resource_metadata in its WWW-Authenticate)")
    check_url(metadata_url, "resource metadata URL", allow_http)
    if origin(metadata_url) != origin(gateway):
        raise DiscoveryError(f"the gateway at {gateway} named resource metadata on another "
                             f"host ({metadata_url})")
    status, document = await get_json(session, metadata_url)
    if status != 200 or not isinstance(document, dict):
        raise DiscoveryError(f"the gateway's resource metadata at {metadata_url} answered "
                             f"HTTP {status} without a JSON document")
    resource = document.get("resource")
    if resource != requested:  # RFC 9728 §3.3: the document must be about what was asked for
        raise DiscoveryError(f"the gateway's resource metadata is about {resource!r}, not "
                             f"{requested!r}: is {gateway} the gateway's public URL?")
    servers = document.get("authorization_servers")
    issuer = servers[0] if isinstance(servers, list) and servers else None
    if not isinstance(issuer, str) or origin(issuer) != origin(gateway) or not (
            requested == issuer or requested.startswith(issuer.rstrip("/") + "/")):
        raise DiscoveryError(f"the gateway at {gateway} does not sign users in itself (its "
                             f"metadata names {issuer!r}, the company IdP): set GWC_TOKEN to an "
                             "access token from that IdP instead")
    return await authorization_server(session, issuer.rstrip("/"), allow_http)


async def authorization_server(session: Any, issuer: str, allow_http: bool) -> AuthServer:
    """RFC 8414 metadata of ``issuer``, checked: the same issuer (§3.3), PKCE S256, and endpoints
    on the issuer's own origin (no token of ours goes anywhere else)."""
    document: dict[str, Any] | None = None
    for url in metadata_urls(issuer):
        status, answer = await get_json(session, url)
        if status == 200 and isinstance(answer, dict):
            document = answer
            break
    if document is None:
        raise DiscoveryError(f"the gateway at {issuer} publishes no authorization server "
                             "metadata: is sign_in turned on in its gateway.yaml?")
    if document.get("issuer") != issuer:
        raise DiscoveryError(f"the authorization server metadata names issuer "
                             f"{document.get('issuer')!r}, not {issuer!r}")
    if "S256" not in (document.get("code_challenge_methods_supported") or []):
        raise DiscoveryError("the gateway's authorization server does not offer PKCE S256")

    def endpoint(name: str, required: bool) -> str | None:
        value = document.get(name)
        if value is None and not required:
            return None
        url = check_url(value, name, allow_http)
        if origin(url) != origin(issuer):
            raise DiscoveryError(f"the gateway's {name} {url!r} is not on {issuer}")
        return url

    authorize, token = endpoint("authorization_endpoint", True), endpoint("token_endpoint", True)
    assert authorize is not None and token is not None
    return AuthServer(issuer=issuer, resource=issuer, authorization_endpoint=authorize,
                      token_endpoint=token,
                      registration_endpoint=endpoint("registration_endpoint", False),
                      revocation_endpoint=endpoint("revocation_endpoint", False),
                      iss_in_response=document.get(
                          "authorization_response_iss_parameter_supported") is True)
