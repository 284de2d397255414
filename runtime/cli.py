"""``gwc-runtime``: start a gateway node. Startup problems are one clear line and a non-zero exit."""
from __future__ import annotations

import sys
from typing import NoReturn

from aiohttp import web

from runtime import logs
from runtime.app import Gateway
from runtime.bundle import BundleError
from runtime.config import ConfigError, load
from runtime.dsse import key_id
from runtime.keys import KeyFileError, load_private_key


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"gwc-runtime: {message}", file=sys.stderr)
    sys.exit(code)


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
    try:
        web.run_app(gateway.app(), host=config.listen_host, port=config.listen_port, print=None,
                    access_log=None)
    except OSError as exc:
        _fail(f"cannot listen on {config.listen_host}:{config.listen_port}: "
              f"{exc.strerror or exc}", 1)
