"""What a user pastes into an MCP client to reach the gateway, and fresh fleet session keys.

A client needs one entry: the gateway's aggregate endpoint ``<gateway URL>/mcp`` (Streamable
HTTP). No token goes in the entry. The gateway answers an unauthenticated request with 401 and an
RFC 9728 ``WWW-Authenticate: Bearer resource_metadata=...`` challenge, so a client that implements
MCP authorization finds the company IdP and logs the user in by itself. Every client wants that
entry in its own file and shape; :data:`CLIENTS` is the one table of those shapes.

A client that starts only local (stdio) servers, Claude Desktop, gets a bridge instead: by default
``gwc connect <gateway URL>`` (this package's ``connect.py``), named by the absolute path of the
running ``gwc``, since such clients start servers without the user's shell PATH; or the npm
``mcp-remote``. Other clients take a bridge entry too when asked (``--bridge``).
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gwc.compiler.build.hosts import is_loopback

ENDPOINT_PATH = "/mcp"  # the runtime's aggregate endpoint, served at the root of --public-url
DEFAULT_NAME = "gwc"
# The name is the key of the entry and, in most clients, a prefix of every tool name the model sees
# (Claude Code shows mcp__<name>__<server>__<tool>); a short, plain name keeps those readable and
# well under the 64-character tool-name limits of model APIs.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")
SESSION_KEY_BYTES = 32  # AES-256-GCM


class ClientConfigError(ValueError):
    """A bad ``--gateway`` or ``--name``; ``option`` names the one at fault."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Endpoint:
    """The validated aggregate endpoint and the entry's name."""

    name: str
    url: str  # <gateway>/mcp
    plain_http: bool  # the URL is http://; mcp-remote then needs --allow-http (see CLIENTS)
    loopback: bool  # the host is this machine: plain http stays on it

    @property
    def cleartext(self) -> bool:
        """Bearer tokens would cross a network unencrypted (allowed only with --allow-http)."""
        return self.plain_http and not self.loopback

    @property
    def gateway(self) -> str:
        """The gateway's base URL, what ``gwc connect`` takes."""
        return self.url.removesuffix(ENDPOINT_PATH)


BRIDGES = ("gwc", "mcp-remote")  # what a stdio entry starts: gwc connect, or the npm bridge


@dataclass(frozen=True)
class ClientShape:
    """How one client wants a remote server described.

    ``servers_key`` is the object that maps names to entries in the client's file (None: the entry
    stands alone); ``entry`` builds the entry of the Streamable HTTP endpoint, None for a client
    that starts only local servers; ``stdio`` wraps a bridge's command and args in the client's
    stdio entry; ``where`` is the one-line hint printed to stderr.
    """

    title: str
    where: str
    servers_key: str | None
    entry: Callable[[Endpoint], dict[str, Any]] | None
    stdio: Callable[[Endpoint, dict[str, Any]], dict[str, Any]]


def _mcp_remote(endpoint: Endpoint) -> dict[str, Any]:
    # mcp-remote's own https rule exempts only the hostnames "localhost" and "127.0.0.1": other
    # http:// URLs we accept (::1, 127.0.0.2, a host allowed with --allow-http) need its flag, so
    # every http:// URL gets it (a no-op for those two).
    allow_http = ["--allow-http"] if endpoint.plain_http else []
    return {"command": "npx", "args": ["-y", "mcp-remote", endpoint.url, *allow_http]}


def _gwc_connect(endpoint: Endpoint, command: str) -> dict[str, Any]:
    # gwc connect applies the same rule as client-config: plain http only to loopback hosts,
    # unless told otherwise.
    allow_http = ["--allow-http"] if endpoint.cleartext else []
    return {"command": command, "args": ["connect", endpoint.gateway, *allow_http]}


def running_gwc() -> str:
    """The absolute path of the ``gwc`` being run: Claude Desktop starts servers without the
    shell's PATH, so a bare ``gwc`` is often not found. Falls back to the one beside this Python
    (a virtualenv's), then to PATH, then to plain ``gwc``."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name in ("gwc", "gwc.exe") and script.is_file():
        return os.path.abspath(script)  # not resolved: a pipx or Homebrew link survives upgrades
    beside = Path(sys.executable).parent / ("gwc.exe" if sys.platform == "win32" else "gwc")
    if beside.is_file():
        return str(beside)
    found = shutil.which("gwc")
    return os.path.abspath(found) if found else "gwc"


CLIENTS: dict[str, ClientShape] = {
    # claude_desktop_config.json only launches local stdio servers: a remote one goes through a
    # bridge, gwc connect by default or the mcp-remote bridge (npm); Settings > Connectors is the
    # other way (it connects from Anthropic's cloud, so the gateway must be reachable from the
    # internet).
    "claude-desktop": ClientShape(
        title="Claude Desktop",
        where="merge into claude_desktop_config.json (Settings > Developer > Edit Config), "
              "then quit and restart Claude Desktop",
        servers_key="mcpServers",
        entry=None,
        stdio=lambda ep, bridge: bridge),
    # Cursor speaks Streamable HTTP and MCP OAuth natively: a "url" entry is a remote server.
    "cursor": ClientShape(
        title="Cursor",
        where="merge into ~/.cursor/mcp.json (all projects) or .cursor/mcp.json (one project)",
        servers_key="mcpServers",
        entry=lambda ep: {"url": ep.url},
        stdio=lambda ep, bridge: bridge),
    # VS Code's mcp.json uses "servers" (not "mcpServers") and wants the transport in "type".
    "vscode": ClientShape(
        title="VS Code",
        where="merge into .vscode/mcp.json (workspace) or the user mcp.json "
              "(command MCP: Open User Configuration)",
        servers_key="servers",
        entry=lambda ep: {"type": "http", "url": ep.url},
        stdio=lambda ep, bridge: {"type": "stdio", **bridge}),
    # No standard file exists for other clients: name, transport and URL are what any needs.
    "generic": ClientShape(
        title="any MCP client",
        where="a Streamable HTTP server with OAuth; configure these values in your client",
        servers_key=None,
        entry=lambda ep: {"name": ep.name, "transport": "streamable-http", "url": ep.url},
        stdio=lambda ep, bridge: {"name": ep.name, "transport": "stdio", **bridge}),
}


def endpoint(gateway: str, name: str = DEFAULT_NAME, allow_http: bool = False) -> Endpoint:
    """Validate the gateway's base URL (its ``--public-url``) and the entry's name.

    https everywhere, http only for loopback hosts (as the compiler rules for upstreams) unless
    ``allow_http``; never credentials in the URL (it would be written into a config file), and no
    query or fragment (the endpoint is the base URL plus ``/mcp``, nothing else).
    """
    if not NAME_PATTERN.fullmatch(name):
        raise ClientConfigError("--name", f"{name!r} is not a valid name (expected a letter, then "
                                          "letters, digits, '_' or '-', at most 32 characters)")
    if _UNSAFE.search(gateway):
        raise ClientConfigError("--gateway", f"{gateway!r} contains spaces or control characters")
    try:
        parts = urlsplit(gateway)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ClientConfigError("--gateway", f"{gateway!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ClientConfigError("--gateway", f"{gateway!r} is not an absolute http(s) URL "
                                             "(for example https://mcp.acme.example)")
    if parts.username is not None or parts.password is not None:
        raise ClientConfigError("--gateway", "the URL carries credentials; it is written into a "
                                             "client config file, and the gateway wants an OAuth "
                                             "bearer token, never a password")
    if parts.query or parts.fragment or gateway.endswith(("?", "#")):
        raise ClientConfigError("--gateway", f"{gateway!r} has a query or fragment; give the "
                                             "gateway's base URL (its --public-url)")
    path = parts.path.rstrip("/")
    if path.rsplit("/", 1)[-1] == ENDPOINT_PATH.lstrip("/"):
        raise ClientConfigError("--gateway", f"{gateway!r} looks like the endpoint itself; give "
                                             "the gateway's base URL (its --public-url): "
                                             f"{ENDPOINT_PATH} is added")
    loopback = is_loopback(host)
    if parts.scheme == "http" and not loopback and not allow_http:
        raise ClientConfigError("--gateway", "must use https (http is allowed only for loopback "
                                             f"hosts, or with --allow-http; got host {host!r})")
    return Endpoint(name=name, url=f"{parts.scheme}://{parts.netloc}{path}{ENDPOINT_PATH}",
                    plain_http=parts.scheme == "http", loopback=loopback)


def render(client: str, ep: Endpoint, bridge: str | None = None,
           command: str | None = None) -> dict[str, Any]:
    """The JSON for ``client``: a whole file's worth, to merge into an existing file. ``bridge``
    (``gwc`` or ``mcp-remote``) gives a stdio entry that starts it; a client that starts only
    local servers gets ``gwc`` unless told otherwise. ``command`` is how the entry names ``gwc``
    (default: :func:`running_gwc`)."""
    shape = CLIENTS[client]
    bridge = bridge or (None if shape.entry is not None else "gwc")
    if bridge is None:
        assert shape.entry is not None
        entry = shape.entry(ep)
    else:
        started = (_gwc_connect(ep, command or running_gwc()) if bridge == "gwc"
                   else _mcp_remote(ep))
        entry = shape.stdio(ep, started)
    return entry if shape.servers_key is None else {shape.servers_key: {ep.name: entry}}


def new_session_key() -> str:
    """A fresh fleet session key for ``gwc-runtime --session-keys`` / ``GWC_SESSION_KEYS``.

    32 random bytes (an AES-256-GCM key), URL-safe base64 with padding: 44 characters with no
    comma, so keys can be listed comma-separated in one variable.
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(SESSION_KEY_BYTES)).decode()
