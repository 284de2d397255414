"""``gwc connect``, ``gwc login``, ``gwc logout``: the local bridge for stdio MCP clients, and the
sign-in the ``gwc`` commands that call a gateway use (``gwc approvals``, ``gwc bypass``).

The work is in ``gwc.compiler.client`` (``connect.py``, ``sign_in.py``, ``token_store.py``),
imported inside the commands: ``import gwc.compiler.cli`` loads no aiohttp.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import click

from gwc.compiler.cli.common import fail
from gwc.compiler.client import configs


def gateway_url(url: str, allow_http: bool, option: str = "URL") -> str:
    """The gateway's base URL, checked as ``gwc client-config`` checks it."""
    try:
        endpoint = configs.endpoint(url, allow_http=allow_http)
    except configs.ClientConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    return endpoint.url.removesuffix(configs.ENDPOINT_PATH)


def _log_to_stderr(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gwc: %(message)s"))
    for name in ("gwc.connect", "gwc.sign_in"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
        logger.propagate = False


async def _until_stopped(work: Any) -> None:
    """Run ``work``; SIGTERM (how clients stop their servers) ends it like the end of stdin."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no signal handlers
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


@click.command("connect")
@click.argument("url")
@click.option("--no-browser", is_flag=True,
              help="Do not open a browser to sign in; print the address on stderr instead.")
@click.option("--allow-http", is_flag=True,
              help="Allow plain http to a host that is not loopback (tokens travel in clear).")
@click.option("--retry-for", "retry_for_s", type=click.FloatRange(min=0), default=30,
              show_default=True, metavar="SECONDS",
              help="How long to keep trying an unreachable gateway before a request fails.")
@click.option("-v", "--verbose", is_flag=True, help="Log each step on stderr.")
def connect(url: str, no_browser: bool, allow_http: bool, retry_for_s: float,
            verbose: bool) -> None:
    """Serve the gateway at URL to a local MCP client over stdio.

    For clients that only start local servers (Claude Desktop): they run `gwc connect URL`, and
    every message goes on to URL/mcp. The user signs in in the browser on first use; tokens are
    kept in the OS keyring and refreshed. With GWC_TOKEN set, that bearer token is used instead.
    stdout carries only the protocol; messages for people go to stderr.
    """
    from gwc.compiler.client.connect import run

    base = gateway_url(url, allow_http)
    _log_to_stderr(verbose)
    token = os.environ.get("GWC_TOKEN") or None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_until_stopped(run(base, token, allow_http=allow_http,
                                       open_browser=not no_browser, retry_for_s=retry_for_s,
                                       stdin=sys.stdin.buffer, stdout=sys.stdout.buffer)))


GATEWAY = click.option("--gateway", "gateway", envvar="GWC_GATEWAY", required=True, metavar="URL",
                       help="The gateway's base URL (env GWC_GATEWAY).")
ALLOW_HTTP = click.option("--allow-http", is_flag=True,
                          help="Allow plain http to a host that is not loopback.")


async def _with_sign_in(gateway: str, allow_http: bool, open_browser: bool, what: str) -> Any:
    import aiohttp

    from gwc.compiler.client.sign_in import SignIn, SignInError
    from gwc.compiler.client.token_store import open_store

    async with aiohttp.ClientSession(trust_env=True) as http:
        sign_in = SignIn(gateway, open_store(), http, allow_http=allow_http,
                         open_browser=open_browser)
        try:
            if what == "login":
                requested, challenge = await sign_in.probe()
                await sign_in.sign_in(requested, challenge)
                return None
            return await sign_in.sign_out()
        except SignInError as exc:
            return exc


@click.command("login")
@GATEWAY
@click.option("--no-browser", is_flag=True,
              help="Do not open a browser; print the address to open on stderr.")
@ALLOW_HTTP
def login(gateway: str, no_browser: bool, allow_http: bool) -> None:
    """Sign in to a gateway in the browser, for gwc approvals, gwc bypass and gwc connect.

    The tokens are kept in the OS keyring (or a file readable only by you where there is none)
    and refreshed when they run out. GWC_TOKEN, when set, is used instead of them.
    """
    base = gateway_url(gateway, allow_http, "--gateway")
    _log_to_stderr(False)
    failed = asyncio.run(_with_sign_in(base, allow_http, not no_browser, "login"))
    if failed is not None:
        fail(str(failed))


@click.command("logout")
@GATEWAY
@ALLOW_HTTP
def logout(gateway: str, allow_http: bool) -> None:
    """Sign out of a gateway: revoke the refresh token there and forget the stored tokens."""
    base = gateway_url(gateway, allow_http, "--gateway")
    _log_to_stderr(False)
    warning = asyncio.run(_with_sign_in(base, allow_http, False, "logout"))
    if warning is not None:
        click.echo(f"gwc: signed out here, but {warning}", err=True)
    else:
        click.echo(f"signed out of {base}", err=True)
