"""``gwc-runtime``: start a gateway node. Startup problems are one clear line and a non-zero exit."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import NoReturn

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gwc.runtime import logs
from gwc.runtime.app import Gateway, ListenError
from gwc.runtime.bundle.envelope import key_id
from gwc.runtime.bundle.keys import KeyFileError, load_private_key
from gwc.runtime.bundle.read import BundleError
from gwc.runtime.config import ConfigError, load


def _fail(message: str, code: int = 2) -> NoReturn:
    logs.flush()
    print(f"gwc-runtime: {message}", file=sys.stderr)
    sys.exit(code)


def event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked for, or when installed and the choice is ``auto`` (it makes the
    socket work under aiohttp cheaper; bench/README.md has the figures)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                _fail("--event-loop uvloop: uvloop is not installed (pip install 'gwc[fast]')")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _stop() -> None:
    raise GracefulExit()  # as aiohttp's own SIGTERM handler: run_app stops the node gracefully


def drain_on_sigterm(gateway: Gateway, seconds: float) -> web.Application:
    """The node's app, where SIGTERM first makes the node unready and stops it ``seconds``
    later (a second SIGTERM, or SIGINT, at once). Installed once the app starts, after
    aiohttp's runner has put its own handler in place."""
    app = gateway.app()

    async def install(app: web.Application) -> None:
        loop = asyncio.get_running_loop()

        def first_sigterm() -> None:
            gateway.begin_drain()
            loop.add_signal_handler(signal.SIGTERM, _stop)
            loop.call_later(seconds, _stop)

        loop.add_signal_handler(signal.SIGTERM, first_sigterm)

    app.on_startup.append(install)
    return app


def main(argv: list[str] | None = None) -> None:
    try:
        config = load(argv)
    except ConfigError as exc:
        _fail(str(exc))
    logs.configure(config.log_level)
    try:
        signing_key = load_private_key(config.signing_key)
        gateway = Gateway(config, signing_key)
    except (KeyFileError, BundleError) as exc:
        _fail(str(exc))
    if key_id(signing_key.public_key()) in gateway.store.trusted_ids:
        _fail("--signing-key is a trusted bundle key: the gateway must mint upstream tokens with "
              "its own key, never the bundle key")
    if any(key_id(key) in gateway.store.trusted_ids for key in gateway.accepted_keys):
        _fail("an --accept-key is a trusted bundle key: a token signed with the bundle key must "
              "never pass for the gateway's own")
    loop = event_loop(config.event_loop)
    logging.getLogger("gwc.runtime").info("event loop", extra={"loop": type(loop).__module__})
    try:
        app = drain_on_sigterm(gateway, config.drain_s) if config.drain_s else gateway.app()
        web.run_app(app, host=config.listen_host, port=config.listen_port, print=None,
                    access_log=None, loop=loop)
    except ListenError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"cannot listen on {config.listen_host}:{config.listen_port}: "
              f"{exc.strerror or exc}", 1)
